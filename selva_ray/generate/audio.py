"""Level of generated tracks: measurement (peak, true peak, RMS, BS.1770 loudness), loudness
normalisation with a true-peak ceiling, WAV writing, and mixing a source's own track under.

Pure torch / PyAV (no Ray): the writer tasks of the generation job call these per clip.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selva_core.qa import metrics

SILENCE_DB = -120.0  # what "no signal" reads as, instead of -inf


@dataclass(frozen=True)
class Level:
    peak_dbfs: float
    true_peak_dbtp: float
    rms_dbfs: float
    loudness_lufs: float | None  # None: too short to measure, or silent


def db(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else SILENCE_DB


def true_peak(wav: torch.Tensor, sample_rate: int) -> float:
    """Largest absolute sample of the 4x oversampled waveform (linear): the QA metric's."""
    return metrics.true_peak(wav, sample_rate)


def loudness(wav: torch.Tensor, sample_rate: int) -> float | None:
    """Integrated loudness (LUFS, ITU-R BS.1770, gated) as QA measures it, or None when the
    clip is too short to measure or silent (nothing to normalise)."""
    value = metrics.integrated_loudness(wav, sample_rate)
    return None if value is None or value <= metrics.LOUDNESS_GATE else value


def measure(wav: torch.Tensor, sample_rate: int) -> Level:
    x = wav.float()
    peak = float(x.abs().max()) if x.numel() else 0.0
    rms = float(x.pow(2).mean().sqrt()) if x.numel() else 0.0
    return Level(
        peak_dbfs=db(peak),
        true_peak_dbtp=db(true_peak(x, sample_rate)),
        rms_dbfs=db(rms),
        loudness_lufs=loudness(x, sample_rate),
    )


def normalise(
    wav: torch.Tensor,
    sample_rate: int,
    *,
    target_lufs: float | None,
    ceiling_dbtp: float | None,
) -> tuple[torch.Tensor, float]:
    """Gain the track to `target_lufs`, then lower it so its true peak stays at or under
    `ceiling_dbtp` (a plain gain, never a limiter: the sound is not reshaped). Returns the
    waveform and the gain in dB. A clip without measurable loudness keeps its level (only the
    ceiling applies)."""
    gain = 0.0
    if target_lufs is not None:
        current = loudness(wav, sample_rate)
        if current is not None:
            gain = target_lufs - current
    if ceiling_dbtp is not None:
        tp = db(true_peak(wav, sample_rate))
        if tp + gain > ceiling_dbtp:
            gain = ceiling_dbtp - tp
    if gain == 0.0:
        return wav, 0.0
    return wav * (10.0 ** (gain / 20.0)), gain


def write_audio(path: str | Path, wav: torch.Tensor, sample_rate: int, fmt: str, bits: int):
    """Mono FLAC or WAV (PCM, 16 or 24 bits), written to a hidden name and renamed when
    whole. 24 bits keep sample-level differences far below the model's own precision."""
    from selva_core.video.write import atomic_path, pcm, write_flac

    if fmt == "flac":
        return write_flac(path, wav, sample_rate, bits)
    if fmt != "wav":
        raise ValueError(f"unknown audio format {fmt!r}")
    samples = pcm(wav, bits)
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(bits // 8)
        f.setframerate(sample_rate)
        data = samples if bits == 16 else samples.view(np.uint8).reshape(-1, 4)[:, 1:]
        f.writeframes(np.ascontiguousarray(data).tobytes())
    return Path(path)


def source_track(
    path: str, start: float, sample_rate: int, num_samples: int
) -> torch.Tensor | None:
    """The source's own audio over the clip window, mono at `sample_rate`; None if it has none."""
    from selva_core.video.audio_track import decode_audio_window, select_audio_stream
    from selva_core.video.decode import open_media

    with open_media(path) as container:
        stream = select_audio_stream(container)
        if stream is None:
            return None
        track = decode_audio_window(
            container,
            stream,
            path=path,
            start=start,
            sample_rate=sample_rate,
            num_samples=num_samples,
        )
    return track.samples


def mix_under(wav: torch.Tensor, original: torch.Tensor | None, gain_db: float) -> torch.Tensor:
    """`wav` with `original` added at `gain_db` (clipped to full scale when written)."""
    if original is None:
        return wav
    n = min(wav.shape[-1], original.shape[-1])
    mixed = wav.clone()
    mixed[:n] += original[:n].to(wav.dtype) * (10.0 ** (gain_db / 20.0))
    return mixed
