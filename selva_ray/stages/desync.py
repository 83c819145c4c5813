"""DeSync as a Ray Data stage: CPU-side input preparation plus a model actor, shared by the
`qa` job and the generation job's QA (`selva_ray.generate.qa_stage`).

    settings = DesyncSettings("synchformer", weights_dir=..., offline=True)
    settings.describe()            # what goes into _meta.json (resolves the weights first)
    inputs = prepare_desync_inputs(path, start, duration, audio, sample_rate)   # CPU task
    row.update(encode_inputs(inputs))                                            # Arrow cells
    ds.map_batches(DesyncActor, fn_constructor_kwargs=actor_kwargs(...),
                   batch_format="pyarrow", compute=ActorPoolStrategy(...))

What is scored (av-benchmark's DeSync, `selva_core.model.desync`): the first `DESYNC_SPAN_S`
= 8 s of the clip's window; the mean |offset| of its first 4.8 s and of its last 4.8 s
(3.2-8 s for a full 8 s). Only that span is decoded, so a long clip costs no more than 8 s.

- Frames: 25 fps, short side to 224 (bicubic, antialiased), centre crop 224x224, uint8: the
  MMAudio-family sync transform that av-benchmark's VideoDataset applies (golden README
  sections 9-10). A SelVA-family sync stream is squashed instead of cropped, so a job that
  already holds SelVA sync frames must still decode these (`decode_sync_frames`).
- Audio: the mono track (any rate) cut to the span plus a filter margin, resampled to 16 kHz
  with the same torchaudio resampler `desync_score` uses, cut to the span.
- A clip with less than 4.8 s of video or audio gets None (null), not an error.

The actor adds `desync_s` (and its model time as `t_desync` when the rows have that column),
recomputes `qa_flags` from the row's metric columns when given thresholds, adds its time to
`t_qa`, and drops the input columns; a clip it cannot score
becomes an error row with stage "desync" while the rest of the batch goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import torch

from selva_core.model.desync import EVAL_DURATION, TINY_DESYNC_SEED, DesyncConfig

log = logging.getLogger(__name__)

DESYNC_SPAN_S = EVAL_DURATION  # seconds from the clip's start that are scored (8)
DESYNC_AUDIO_RATE = 16000
SYNC_SIZE = 224
FRAME_BYTES = 3 * SYNC_SIZE * SYNC_SIZE
RESAMPLE_MARGIN_S = 0.05  # audio kept past the span so resampling near its end is unaffected
STAGE = "desync"

# Arrow cells carrying a clip's DeSync inputs from the CPU tasks to the actor (empty: no score)
DESYNC_INPUT_FIELDS = [
    pa.field("desync_frames", pa.large_binary()),  # uint8 (T, 3, 224, 224), C order
    pa.field("desync_audio", pa.large_binary()),  # float32 (N,) mono at 16 kHz
]
DESYNC_INPUT_COLUMNS = [f.name for f in DESYNC_INPUT_FIELDS]
NO_INPUTS = {"desync_frames": b"", "desync_audio": b""}


def canonical_variant(variant: str) -> str:
    """`tiny` for any tiny variant name (seeded random weights), else `synchformer` (every
    real family scores with the one published file). Unknown names raise UnknownVariantError."""
    from selva_core.model.desync import SYNCHFORMER_WEIGHTS_KEY
    from selva_core.variants import get_spec

    if variant == SYNCHFORMER_WEIGHTS_KEY:
        return variant
    return "tiny" if get_spec(variant).is_tiny else SYNCHFORMER_WEIGHTS_KEY


@dataclass(frozen=True)
class DesyncSettings:
    """Which DeSync model scores, and where its weights come from."""

    variant: str = "synchformer"  # "synchformer" (published weights) or "tiny"
    precision: str = "fp32"  # the scores are argmaxes: fp32 keeps them as the reference has them
    weights_dir: str | None = None
    offline: bool = False

    def __post_init__(self) -> None:
        from ..runtime import DTYPES

        object.__setattr__(self, "variant", canonical_variant(self.variant))
        if self.precision not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {self.precision!r}")

    def store(self):
        from selva_core.weights import WeightStore

        return WeightStore(self.weights_dir, allow_download=False if self.offline else None)

    def fingerprint(self) -> str:
        """MD5 of `synchformer_state_dict.pth` (resolved and verified: MissingWeightsError or
        CorruptWeightsError if it cannot be), or a hash naming the tiny model's seed and code."""
        if self.variant == "tiny":
            from selva_core import __version__

            payload = json.dumps({"seed": TINY_DESYNC_SEED, "code": __version__}, sort_keys=True)
            return "tiny-" + hashlib.sha1(payload.encode()).hexdigest()[:16]
        from selva_core.model.desync import SYNCHFORMER_WEIGHTS_KEY

        store = self.store()
        return store.digest(store.resolve(SYNCHFORMER_WEIGHTS_KEY))

    def describe(self) -> dict:
        """The settings a stored score depends on (for `_meta.json`)."""
        return {
            "variant": self.variant,
            "weights": self.fingerprint(),
            "precision": self.precision,
            "span_s": DESYNC_SPAN_S,
            "frames": f"25 fps, short side {SYNC_SIZE} bicubic + centre crop (mmaudio)",
            "audio_rate": DESYNC_AUDIO_RATE,
        }


# ---- CPU side: inputs ---------------------------------------------------------------------------


@dataclass
class DesyncInputs:
    frames: torch.Tensor  # (T, 3, 224, 224) uint8 at 25 fps
    audio: torch.Tensor  # (N,) float32 mono at 16 kHz


def can_score(num_frames: int, num_samples: int, config: DesyncConfig | None = None) -> bool:
    """Whether 25 fps frames and 16 kHz samples cover the 14 windows (4.8 s) one offset needs."""
    cfg = config or DesyncConfig.tiny()  # window geometry is the same at every size
    v = (num_frames - cfg.video.num_frames) // cfg.video.window_stride + 1
    a = (num_samples - cfg.audio_window) // cfg.audio_hop + 1
    return min(v, a) >= cfg.window_segments


def decode_sync_frames(path: str, start: float = 0.0, duration: float | None = None):
    """uint8 (T, 3, 224, 224) frames at 25 fps of the scored span (at most 8 s from `start`),
    as the Synchformer expects them; decodes no further than that span."""
    from selva_core.video.decode import DecodeConfig, decode_clip

    span = DESYNC_SPAN_S if duration is None else min(float(duration), DESYNC_SPAN_S)
    config = DecodeConfig(family="mmaudio", keep_clip_frames=False)
    clip = decode_clip(path, start=start, max_duration=span, config=config)
    if clip.padded:  # under one window: too short to score anyway
        return clip.sync_frames[:0]
    return clip.sync_frames


def resample_for_desync(audio, sample_rate: int) -> torch.Tensor:
    """Mono (N,) or (C, N) audio at any rate -> float32 (N',) at 16 kHz of the scored span."""
    from selva_core.compat import torchaudio_functional

    x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
    x = x.float()
    if x.dim() == 2:
        x = x.mean(dim=0)
    keep = math.ceil((DESYNC_SPAN_S + RESAMPLE_MARGIN_S) * sample_rate)
    x = x[:keep]
    if sample_rate != DESYNC_AUDIO_RATE:
        x = torchaudio_functional().resample(x, int(sample_rate), DESYNC_AUDIO_RATE)
    return x[: int(DESYNC_SPAN_S * DESYNC_AUDIO_RATE)].contiguous()


def prepare_desync_inputs(
    path: str,
    start: float,
    duration: float | None,
    audio,
    sample_rate: int,
) -> DesyncInputs | None:
    """The clip's frames and 16 kHz audio over the scored span, or None when shorter than
    4.8 s. `audio` is the clip's track from `start` (mono or (C, N), any rate)."""
    wav = resample_for_desync(audio, sample_rate)
    if not can_score(int(DESYNC_SPAN_S * 25), wav.shape[0]):
        return None  # the audio alone is too short: no need to decode the video
    frames = decode_sync_frames(path, start, duration)
    if not can_score(frames.shape[0], wav.shape[0]):
        return None
    return DesyncInputs(frames=frames, audio=wav)


def encode_inputs(inputs: DesyncInputs | None) -> dict:
    """DeSync inputs as the two Arrow cells (empty bytes: nothing to score)."""
    if inputs is None:
        return dict(NO_INPUTS)
    frames = inputs.frames.contiguous()
    if frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != (3, SYNC_SIZE, SYNC_SIZE):
        raise ValueError(f"DeSync frames must be uint8 (T, 3, 224, 224), got {frames.shape}")
    return {
        "desync_frames": frames.numpy().tobytes(),
        "desync_audio": inputs.audio.float().contiguous().numpy().tobytes(),
    }


def decode_inputs(frames: bytes | None, audio: bytes | None) -> DesyncInputs | None:
    if not frames or not audio:
        return None
    if len(frames) % FRAME_BYTES or len(audio) % 4:
        raise ValueError(
            f"DeSync inputs are damaged: {len(frames)} frame bytes, {len(audio)} audio bytes"
        )
    f = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3, SYNC_SIZE, SYNC_SIZE)
    a = np.frombuffer(audio, dtype=np.float32)
    return DesyncInputs(frames=torch.from_numpy(f.copy()), audio=torch.from_numpy(a.copy()))


# ---- the model ----------------------------------------------------------------------------------


class DesyncScorer:
    """The DeSync Synchformer loaded once; scores one clip at a time (no Ray)."""

    def __init__(
        self,
        settings: DesyncSettings,
        device: str = "auto",
        window_chunk: int | None = None,
    ):
        from selva_core.model.desync import load_desync_model

        from ..runtime import resolve_device, resolve_dtype

        self.settings = settings
        self.device = resolve_device(device)
        self.model = load_desync_model(
            settings.variant,
            settings.store(),
            device=self.device,
            dtype=resolve_dtype(settings.precision, self.device),
            window_chunk=window_chunk,
        )

    def score(self, frames: torch.Tensor, audio: torch.Tensor, sample_rate: int = 16000):
        """DeSync seconds of one clip (frames uint8 at 25 fps, mono audio), None if < 4.8 s."""
        from selva_core.model.desync import desync_score

        wav = audio if sample_rate == DESYNC_AUDIO_RATE else resample_for_desync(audio, sample_rate)
        wav = wav[: int(DESYNC_SPAN_S * DESYNC_AUDIO_RATE)]
        frames = frames[: int(DESYNC_SPAN_S * self.model.config.fps)]
        if not can_score(frames.shape[0], wav.shape[0], self.model.config):
            return None
        frames = frames.to(self.device, non_blocking=True)
        return desync_score(self.model, frames, wav, sample_rate=DESYNC_AUDIO_RATE)


class DesyncActor:
    """Ray Data callable class (pyarrow batches): `desync_s` for every ok row that carries
    inputs, flags recomputed with `thresholds` (a QAThresholds dict) when given."""

    def __init__(
        self,
        *,
        settings: dict,
        device: str = "auto",
        thresholds: dict | None = None,
        window_chunk: int | None = None,
    ):
        from selva_core.qa import QAThresholds

        self.scorer = DesyncScorer(DesyncSettings(**settings), device, window_chunk)
        self.thresholds = QAThresholds(**thresholds) if thresholds is not None else None
        log.info("DeSync actor: %s on %s", self.scorer.settings.variant, self.scorer.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from selva_core.qa import qa_flags

        from ..io.rows import error_result

        columns = [c for c in batch.column_names if c not in DESYNC_INPUT_COLUMNS]
        rows = batch.select(columns).to_pylist()
        frames = batch.column("desync_frames").to_pylist()
        audio = batch.column("desync_audio").to_pylist()
        for row, f, a in zip(rows, frames, audio, strict=True):
            if row.get("status") != "ok":
                continue
            try:
                t0 = time.perf_counter()
                inputs = decode_inputs(f, a)
                if inputs is not None:
                    row["desync_s"] = self.scorer.score(inputs.frames, inputs.audio)
                    if "t_desync" in row:
                        row["t_desync"] = time.perf_counter() - t0
                if self.thresholds is not None:
                    row["qa_flags"] = qa_flags(row, self.thresholds)
                if "t_qa" in row:
                    row["t_qa"] = (row["t_qa"] or 0.0) + time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
                row.update(error_result(row, STAGE, exc))
                row["desync_s"] = None
        schema = pa.schema([batch.schema.field(c) for c in columns])
        return pa.Table.from_pylist(rows, schema=schema)


def actor_kwargs(
    settings: DesyncSettings,
    *,
    device: str = "auto",
    thresholds: dict | None = None,
    window_chunk: int | None = None,
) -> dict:
    """`fn_constructor_kwargs` for `DesyncActor` (plain values, picklable)."""
    return {
        "settings": asdict(settings),
        "device": device,
        "thresholds": thresholds,
        "window_chunk": window_chunk,
    }
