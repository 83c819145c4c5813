"""Quality measurements of one audio track, and the thresholds that turn them into flags.

Nobody listens to 100,000 generated clips; these numbers pick the ones worth a listen:

- `loudness_lufs`: integrated loudness, ITU-R BS.1770-4 (K-weighting, 400 ms blocks, absolute
  and relative gates; torchaudio's implementation). None for a clip shorter than one 400 ms
  block; -70 (the absolute gate) when every block is gated, i.e. the clip is silent.
- `peak_dbfs`: sample peak; `true_peak_dbtp`: peak of the 4x oversampled signal (BS.1770-4
  annex 2), which catches inter-sample overs a lossy encoder or DAC would clip.
- `rms_dbfs`: RMS level of the whole clip (a full-scale sine reads -3.01 dBFS).
- `clipped_ratio`: share of samples at or beyond `clip_level` (0.999 of full scale).
- `silence_ratio`: share of 50 ms frames whose RMS is under -60 dBFS.
- `spectral_flatness`: geometric over arithmetic mean of the clip's long-term
  (Welch-averaged) power spectrum: about 1 for white noise (vocoder hiss), about 0 for a
  pure tone. None for a silent clip.
- `desync_s`: audio-visual offset in seconds predicted by a DeSync model (the full
  Synchformer), filled only when the caller passes one (`DesyncFn`).

Levels are floored at `DB_FLOOR` (-120 dB) so digital silence stays a finite number in
Parquet, JSON and plots.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from selva_core.compat import torchaudio_functional

DB_FLOOR = -120.0
LOUDNESS_GATE = -70.0  # BS.1770 absolute gate: what a fully gated (silent) clip reads
SILENCE_DBFS = -60.0
SILENCE_FRAME_S = 0.05
CLIP_LEVEL = 0.999
TRUE_PEAK_OVERSAMPLING = 4
FLATNESS_FFT = 1024

# A DeSync scorer: mono audio (samples,), its sample rate, and the clip's 25 fps sync frames
# (T, 3, 224, 224) uint8 -> predicted audio-visual offset in seconds, or None when the clip
# cannot be scored (the full Synchformer needs >= 4.8 s). With the Synchformer DeSync model:
#   lambda audio, sr, frames: desync_score(model, frames, audio, sample_rate=sr)
# (its score is av-benchmark's mean |offset| of the first and last 4.8 s, so >= 0).
DesyncFn = Callable[[torch.Tensor, int, torch.Tensor], float | None]

# metric name -> (unit, one-line meaning); the order of report histograms and tables
QA_METRICS: dict[str, tuple[str, str]] = {
    "loudness_lufs": ("LUFS", "integrated loudness (ITU-R BS.1770)"),
    "peak_dbfs": ("dBFS", "sample peak"),
    "true_peak_dbtp": ("dBTP", "true peak (4x oversampled)"),
    "rms_dbfs": ("dBFS", "RMS level"),
    "clipped_ratio": ("", "share of samples at full scale"),
    "silence_ratio": ("", "share of 50 ms frames under -60 dBFS"),
    "spectral_flatness": ("", "long-term spectral flatness (1: white noise, 0: a tone)"),
    "desync_s": ("s", "audio-visual offset predicted by Synchformer"),
}


@dataclass
class ClipMetrics:
    loudness_lufs: float | None
    peak_dbfs: float
    true_peak_dbtp: float
    rms_dbfs: float
    clipped_ratio: float
    silence_ratio: float
    spectral_flatness: float | None
    desync_s: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _db(amplitude: float) -> float:
    return max(DB_FLOOR, 20.0 * math.log10(amplitude)) if amplitude > 0 else DB_FLOOR


def _as_channels(audio) -> torch.Tensor:
    """(samples,) or (channels, samples), tensor or array -> float64 (channels, samples)."""
    x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
    x = x.detach().to("cpu", torch.float64)
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise ValueError(f"audio must be (samples,) or (channels, samples), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("audio holds NaN or infinite samples")
    return x


def integrated_loudness(audio, sample_rate: int) -> float | None:
    """BS.1770-4 integrated loudness in LUFS, channels weighted 1.0 (up to 3 channels).

    torchaudio's K-weighting filters clamp their output to [-1, 1]; the signal is scaled to a
    0.25 peak first and the gain added back (loudness is exactly log-linear in gain), so loud
    and clipped tracks measure right too.
    """
    AF = torchaudio_functional()

    x = _as_channels(audio)
    if x.shape[-1] < round(0.4 * sample_rate):
        return None
    peak = float(x.abs().max())
    if peak == 0.0:
        return LOUDNESS_GATE
    scale = 0.25 / peak
    value = float(AF.loudness((x * scale).float(), int(sample_rate)))
    if not math.isfinite(value):  # every block under the absolute gate
        return LOUDNESS_GATE
    return max(LOUDNESS_GATE, value - 20.0 * math.log10(scale))


def true_peak(audio, sample_rate: int, chunk_s: float = 10.0) -> float:
    """Peak amplitude of the signal oversampled 4x with a windowed-sinc interpolator, in
    chunks (with filter margins) so that an hour-long track needs no 4x copy in memory."""
    AF = torchaudio_functional()

    x = _as_channels(audio).float()
    n = x.shape[-1]
    if n == 0:
        return 0.0
    k = TRUE_PEAK_OVERSAMPLING
    chunk, margin = max(1, int(chunk_s * sample_rate)), 64
    peak = float(x.abs().max())
    for i in range(0, n, chunk):
        lo, hi = max(0, i - margin), min(n, i + chunk + margin)
        up = AF.resample(
            x[:, lo:hi],
            int(sample_rate),
            int(sample_rate) * k,
            lowpass_filter_width=16,
            rolloff=0.99,
        )
        inner = up[:, (i - lo) * k : (min(n, i + chunk) - lo) * k]
        peak = max(peak, float(inner.abs().max()))
    return peak


def silence_ratio(audio, sample_rate: int, threshold_dbfs: float = SILENCE_DBFS) -> float:
    """Share of 50 ms frames (the last partial one included) whose RMS is under the threshold."""
    x = _as_channels(audio)
    n = x.shape[-1]
    if n == 0:
        return 1.0
    frame = max(1, int(round(SILENCE_FRAME_S * sample_rate)))
    power = x.square().mean(0)  # mean over channels
    frames = math.ceil(n / frame)
    padded = torch.zeros(frames * frame, dtype=power.dtype)
    padded[:n] = power
    counts = torch.full((frames,), float(frame), dtype=power.dtype)
    counts[-1] = n - (frames - 1) * frame
    ms = padded.view(frames, frame).sum(1) / counts
    limit = 10.0 ** (threshold_dbfs / 10.0)
    return float((ms < limit).double().mean())


def spectral_flatness(audio, sample_rate: int | None = None) -> float | None:
    """Wiener entropy of the Welch-averaged power spectrum of the mono downmix (DC excluded),
    over frames that are not silent; None when there is no such frame."""
    x = _as_channels(audio).mean(0)
    n_fft = FLATNESS_FFT
    if x.shape[0] < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.shape[0]))
    frames = x.unfold(0, n_fft, n_fft // 2)
    loud = frames.square().mean(1) >= 10.0 ** (SILENCE_DBFS / 10.0)
    if not bool(loud.any()):
        return None
    window = torch.hann_window(n_fft, periodic=True, dtype=frames.dtype)
    spec = torch.fft.rfft(frames[loud] * window, dim=1).abs().square().mean(0)[1:]
    spec = spec.clamp_min(1e-30)
    flatness = torch.exp(torch.log(spec).mean()) / spec.mean()
    return float(flatness.clamp(0.0, 1.0))


def clip_metrics(
    audio,
    sample_rate: int,
    *,
    desync: DesyncFn | None = None,
    sync_frames: torch.Tensor | None = None,
    clip_level: float = CLIP_LEVEL,
) -> ClipMetrics:
    """Every QA measurement of one track. `audio` is (samples,) or (channels, samples) in
    [-1, 1]; with `desync`, `sync_frames` (the clip's 25 fps frames) must be given too."""
    x = _as_channels(audio)
    n = x.shape[-1]
    absx = x.abs()
    desync_s = None
    if desync is not None:
        if sync_frames is None:
            raise ValueError("a DeSync scorer needs the clip's sync_frames")
        mono = x.mean(0).float()
        value = desync(mono, int(sample_rate), sync_frames)
        desync_s = None if value is None else float(value)
    return ClipMetrics(
        loudness_lufs=integrated_loudness(x, sample_rate),
        peak_dbfs=_db(float(absx.max()) if n else 0.0),
        true_peak_dbtp=_db(true_peak(x, sample_rate)),
        rms_dbfs=_db(math.sqrt(float(x.square().mean())) if n else 0.0),
        clipped_ratio=float((absx >= clip_level).any(0).double().mean()) if n else 0.0,
        silence_ratio=silence_ratio(x, sample_rate),
        spectral_flatness=spectral_flatness(x, sample_rate),
        desync_s=desync_s,
    )


# ---- thresholds and flags ---------------------------------------------------------------------


class ThresholdsError(ValueError):
    """A thresholds file or value that cannot be used."""


@dataclass(frozen=True)
class QAThresholds:
    """When a clip is flagged. None disables a check. Defaults are the README's."""

    max_abs_desync_s: float | None = 0.5  # flag "desync": |DeSync| above this
    max_silence_ratio: float | None = 0.5  # flag "silence": more than half the clip silent
    max_clipped_ratio: float | None = 0.001  # flag "clipping": more than 0.1 % clipped samples
    target_lufs: float | None = -23.0  # flag "loudness": outside target +- tolerance
    loudness_tolerance_lu: float = 3.0
    max_true_peak_dbtp: float | None = None  # flag "true_peak" (off by default)
    max_spectral_flatness: float | None = None  # flag "noise" (off by default)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name != "loudness_tolerance_lu":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ThresholdsError(f"QA threshold {f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ThresholdsError(f"QA threshold {f.name} must be finite, got {value!r}")
        if self.loudness_tolerance_lu < 0:
            raise ThresholdsError("QA threshold loudness_tolerance_lu must be >= 0")

    @classmethod
    def from_mapping(cls, values: Mapping, origin: str = "thresholds") -> QAThresholds:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ThresholdsError(
                f"{origin}: unknown QA threshold(s) {unknown}; known: {sorted(names)}"
            )
        try:
            return cls(**{k: (float(v) if isinstance(v, int) else v) for k, v in values.items()})
        except ThresholdsError as exc:
            raise ThresholdsError(f"{origin}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> QAThresholds:
        """Thresholds from a .json, .yaml/.yml or .toml file (flat keys, or under `qa`)."""
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ThresholdsError(f"cannot read QA thresholds file {path}: {exc}") from None
        try:
            if ext == ".json":
                values = json.loads(raw)
            elif ext in (".yaml", ".yml"):
                import yaml

                values = yaml.safe_load(raw)
            elif ext == ".toml":
                import tomllib

                values = tomllib.loads(raw.decode())
            else:
                raise ThresholdsError(
                    f"QA thresholds file {path}: use a .json, .yaml, .yml or .toml file"
                )
        except ThresholdsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parser's error, reported in one line
            raise ThresholdsError(f"QA thresholds file {path} is not valid: {exc}") from None
        if isinstance(values, dict) and isinstance(values.get("qa"), dict) and len(values) == 1:
            values = values["qa"]
        if not isinstance(values, dict):
            raise ThresholdsError(f"QA thresholds file {path} must hold a mapping of thresholds")
        return cls.from_mapping(values, origin=path)

    def updated(self, **overrides) -> QAThresholds:
        """A copy with the overrides that are not None (command-line flags)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def describe(self) -> dict:
        return asdict(self)


def qa_flags(metrics: ClipMetrics | Mapping, thresholds: QAThresholds) -> list[str]:
    """Names of the checks a clip fails, in a fixed order; a metric that is None never flags."""
    m = metrics.as_dict() if isinstance(metrics, ClipMetrics) else dict(metrics)
    t = thresholds
    desync = m.get("desync_s")
    lufs = m.get("loudness_lufs")
    target = t.target_lufs
    # (flag, measured value, limit): a value over its limit flags the clip
    checks = (
        ("desync", None if desync is None else abs(desync), t.max_abs_desync_s),
        ("silence", m.get("silence_ratio"), t.max_silence_ratio),
        ("clipping", m.get("clipped_ratio"), t.max_clipped_ratio),
        (
            "loudness",
            None if lufs is None or target is None else abs(lufs - target),
            None if target is None else t.loudness_tolerance_lu,
        ),
        ("true_peak", m.get("true_peak_dbtp"), t.max_true_peak_dbtp),
        ("noise", m.get("spectral_flatness"), t.max_spectral_flatness),
    )
    return [
        flag
        for flag, value, limit in checks
        if limit is not None and value is not None and value > limit
    ]
