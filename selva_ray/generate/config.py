"""The generation job's settings, its summary, and the checks of its settings alone."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from selva_core.qa import QAThresholds
from selva_core.sampling import SamplerConfig

from ..io.windows import check_long_settings
from ..summary import ClipCounts

if TYPE_CHECKING:
    from .adapters import Adapter

GROUP_WINDOW = 2
DEFAULT_BATCH = 8  # clips per generator batch when --batch-size is not given
AUDIO_FORMATS = ("flac", "wav")
JOIN_MODES = ("continue", "crossfade")


class GenerateInputError(ValueError):
    """Unusable settings or inputs (bad flag values, adapter files, features folder)."""


@dataclass
class GenerateConfig:
    input: str  # catalog (folder or manifest) or a features folder written by `extract`
    output: str
    variant: str = "small_16k"
    max_duration: float = 8.0  # catalog input; a features folder has its own
    prompt: str | None = None  # for clips whose catalog row has no prompt
    negative_prompt: str | None = None  # None: the model's stored empty-prompt features
    seed: int = 42
    cfg: float = 4.5
    steps: int = 25
    audio_format: str = "flac"
    bits: int = 24  # sample depth of the written tracks: 16 or 24
    loudness: float | None = None  # LUFS target; None: the model's level
    peak: float | None = None  # dBTP ceiling; None: -1 when normalising loudness, else none
    mux: bool = False
    mix_original: float | None = None  # dB gain of the source's own track in the video
    adapters: list[str] = field(default_factory=list)  # FILE[@STRENGTH], stacked in order
    precision: str | None = None  # None: bf16 on GPU, fp32 on CPU
    device: str = "auto"
    batch_size: int | None = None  # clips per generator batch; None: _batch_size
    actors: int | None = None  # generator actors; None: one per GPU, else one per core
    gpus_per_actor: float | None = None  # None: 1 (features input) or 0.5 (encoders share)
    encoder_actors: int | None = None  # catalog input; None: one per GPU, else 1
    encoder_gpus: float = 0.5
    cpus_per_actor: float = 1.0
    actor_memory_gb: float | None = None  # None: by model size
    decode_cpus: float = 1.0
    decode_memory_gb: float = 1.0
    shard_size: int = 64
    fail_on_error: bool = False
    retry_errors: bool = False
    weights_dir: str | None = None
    offline: bool = False
    ray_address: str | None = None
    allow_roots: list[str] | None = None  # manifest rows may point here; None: its folder
    frame_rule: str = "official"
    progress: bool = True  # Ray Data's own progress output
    progress_interval_s: float = 10.0
    # per-clip QA of the written tracks (qa_stage): flag thresholds; DeSync on its own actors
    thresholds: QAThresholds = field(default_factory=QAThresholds)
    desync: bool = True  # False: desync_s null, no model (no synchformer_state_dict.pth needed)
    desync_actors: int | None = None  # None: one per GPU, else 1
    # Long videos (selva_ray.generate.windows): catalog videos longer than `window` seconds
    # (None: 8; 0: never, cut at max_duration) are generated window by window and joined;
    # features input uses the folder's own windows.
    window: float | None = None
    overlap: float | None = None  # None: 1 s (catalog input) or the folder's
    join: str = "continue"  # continue | crossfade
    mask_strength: float = 1.0  # how far a catalog `mask` greys the background
    mask_paths: tuple[str, ...] = ("clip", "sync")  # streams the mask applies to
    # Benchmarks only: build the models by hand (e.g. random weights at real sizes),
    # `factory(device, dtype, role) -> Components`, role "encoder" or "generator".
    components_factory: Callable | None = None
    flags: dict | None = None  # the command line's settings (`--print-config`), to _meta.json


@dataclass
class GenerateSummary(ClipCounts):
    output: str
    input_kind: str = "catalog"
    catalog: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    failed_before: int = 0  # failed in an earlier run: skipped unless --retry-errors
    wall_s: float = 0.0
    batch_fill: float = 0.0  # clips per generator batch / batch size, averaged over batches
    batches: int = 0
    errors_by_stage: dict = field(default_factory=dict)
    has_errors_folder: bool = False

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_stage.items()))
        return [
            f"{self.input_kind} {self.catalog} clips: {self.ok} ok, {self.failed} failed"
            + (f" ({stages})" if stages else "")
            + f", {self.skipped} skipped (already done)"
            + self.failed_before_text(),
            f"wall time {self.wall_s:.1f} s, {self.clips_per_s:.2f} clips/s, "
            f"{self.batches} generator batches, average batch fill {self.batch_fill:.2f}",
            self.where_text(f"results in {self.output.rstrip('/')}/results/"),
        ]


def check_config(config: GenerateConfig) -> None:
    if config.audio_format not in AUDIO_FORMATS:
        raise GenerateInputError(f"--format must be one of {AUDIO_FORMATS}")
    if config.bits not in (16, 24):
        raise GenerateInputError("--bits must be 16 or 24")
    if (config.batch_size is not None and config.batch_size < 1) or config.shard_size < 1:
        raise GenerateInputError("--batch-size and --shard-size must be >= 1")
    if config.join not in JOIN_MODES:
        raise GenerateInputError(f"--join must be one of {', '.join(JOIN_MODES)}")
    check_long_settings(config)
    if config.mix_original is not None and not config.mux:
        raise GenerateInputError("--mix-original needs --mux (it mixes into the dubbed video)")
    for name in ("loudness", "peak", "mix_original"):
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value <= 0):
            raise GenerateInputError(f"--{name.replace('_', '-')} must be a level <= 0 dB")
    try:
        SamplerConfig(num_steps=config.steps, cfg_strength=config.cfg)
    except ValueError as exc:
        raise GenerateInputError(str(exc)) from exc


def effective_peak(config: GenerateConfig) -> float | None:
    if config.peak is not None:
        return config.peak
    return -1.0 if config.loudness is not None else None


def output_settings(config: GenerateConfig, spec, adapters: list[Adapter], precision: str) -> dict:
    """What decides the output; a folder is only continued with the same values."""
    return {
        "variant": spec.name,
        "precision": precision,
        "max_duration": config.max_duration,
        "frame_rule": config.frame_rule,
        "prompt": config.prompt,
        "negative_prompt": config.negative_prompt,
        "seed": config.seed,
        "cfg": config.cfg,
        "steps": config.steps,
        "format": config.audio_format,
        "bits": config.bits,
        "sample_rate": spec.sampling_rate,
        "loudness": config.loudness,
        "peak": effective_peak(config),
        "mux": config.mux,
        "mix_original": config.mix_original,
        "adapters": [a.describe() for a in adapters],
        "window": config.window,
        "overlap": config.overlap,
        "join": config.join,
        "mask_strength": config.mask_strength,
        "mask_paths": list(config.mask_paths),
    }


def settings_digest(settings: dict) -> str:
    """The folder's settings hash (what a rerun must match)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
