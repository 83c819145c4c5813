"""The generation job's settings, its summary, and the checks of its settings alone."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import shared_settings as s
from .. import validate
from ..errors import UsageError
from ..io.windows import check_long_settings
from ..settings import APPEND, NEGATED, SWITCH, opt, output_record
from ..summary import ClipCounts

if TYPE_CHECKING:
    from .adapters import Adapter

GROUP_WINDOW = 2
DEFAULT_BATCH = 8  # clips per generator batch when --batch-size is not given
AUDIO_FORMATS = ("flac", "wav")
JOIN_MODES = ("continue", "crossfade")


class GenerateInputError(UsageError):
    """Unusable settings or inputs (bad flag values, adapter files, features folder)."""


ENCODER = "encoder"
DESYNC = "DeSync of the generated tracks (full Synchformer)"


@dataclass
class GenerateConfig(s.BatchJobSettings):
    # a catalog (folder or manifest) or a features folder written by `extract`
    input: str = s.input_opt("catalog or features folder (path or URI)")
    output: str = s.output_opt()
    variant: str | None = s.variant_opt(
        None,
        "model variant (default: a features folder's own, else small_16k; `tiny` runs offline "
        "on random weights; list them with `selva-ray weights list`)",
        output=True,
    )
    device: str = s.device_opt()
    precision: str | None = s.precision_opt()
    weights_dir: str | None = s.weights_dir_opt()
    offline: bool = s.offline_opt()
    allow_roots: list[str] | None = s.allow_roots_opt()
    # Long videos (selva_ray.generate.windows): catalog videos longer than `window` seconds
    # (None: 8; 0: never, cut at max_duration) are generated window by window and joined;
    # features input uses the folder's own windows.
    window: float | None = s.window_opt(None, output=True)
    overlap: float | None = s.overlap_opt(
        None, output=True
    )  # None: 1 s (catalog input) or the folder's
    join: str = opt(
        "continue",
        choices=JOIN_MODES,
        help="how the windows of a long video become one track: continue (each window's "
        "overlap continues the previous window's latent, then a short crossfade) or crossfade "
        "(independent windows, equal-power crossfade over the overlap)",
        output=True,
    )
    mask_strength: float = s.mask_strength_opt(output=True)
    mask_paths: tuple[str, ...] = s.mask_paths_opt(output=True)
    prompt: str | None = opt(
        None,
        help="prompt for clips whose catalog row has none (with it a manifest needs no "
        "prompt column)",
        output=True,
    )
    negative_prompt: str | None = opt(
        None,
        help="sounds to steer away from (default: the model's stored empty-prompt features)",
        output=True,
    )
    seed: int = s.seed_opt(output=True)
    cfg: float = s.cfg_opt(output=True)
    steps: int = s.steps_opt(output=True)
    max_duration: float = s.max_duration_opt(
        output=True
    )  # catalog input; a features folder has its own
    audio_format: str = opt(
        "flac", flag="--format", choices=AUDIO_FORMATS, help="audio file format", output=True
    )
    bits: int = opt(24, type=int, choices=(16, 24), help="sample depth", output=True)
    loudness: float | None = opt(
        None,
        type=validate.level_db,
        help=f"normalise each track to this integrated loudness in LUFS, "
        f"{validate.MIN_LEVEL_DB:g}..0 (e.g. -23; default: the model's level)",
        output=True,
    )
    peak: float | None = opt(
        None,
        type=validate.level_db,
        help=f"true-peak ceiling in dBTP, {validate.MIN_LEVEL_DB:g}..0 (default -1 with "
        "--loudness, else none)",
        output=True,
    )
    mux: bool = opt(
        False,
        kind=SWITCH,
        help="also write the dubbed video. Its video packets are copied, not re-encoded, so a "
        "clip with a start (the catalog's `start` column) begins at the keyframe at or before "
        "that start: on a long-GOP source the video opens up to one GOP early, silent until "
        "the start, with the track aligned to the picture",
        output=True,
    )
    mix_original: float | None = opt(
        None,
        type=validate.gain_db,
        metavar="DB",
        help="keep the source's own track in the dubbed video at this gain, -120..0 dB "
        "(needs --mux; default: replaced)",
        output=True,
    )
    adapters: list[str] = opt(
        flag="--adapter",
        factory=list,
        kind=APPEND,
        metavar="FILE[@STRENGTH]",
        help="LoRA adapter file, repeatable (stacked); strength default 1",
    )
    allow_base_mismatch: bool = opt(
        False,
        kind=SWITCH,
        help="merge an adapter trained for another variant anyway (recorded with the adapter "
        "in the results); default: refused before anything starts",
    )
    # per-clip QA of the written tracks (qa_stage): flag thresholds (the thresholds file and
    # flags, shared_settings.add_threshold_args); DeSync on its own actors
    thresholds: Any = None
    desync: bool = opt(
        True,
        kind=NEGATED,
        group=DESYNC,
        help="skip DeSync (desync_s null, no flag; synchformer_state_dict.pth not needed)",
    )
    desync_actors: int | None = opt(
        None,
        type=validate.actor_count,
        metavar="N",
        group=DESYNC,
        help="DeSync actors (default: one per GPU, else 1; no more than the run has batches)",
    )
    batch_size: int | None = opt(
        None,
        type=validate.int_range(1, 4096),
        help="clips per generator batch (default: 8; on CPUs at most 8, fewer when that gives "
        "every generator actor two batches)",
    )
    actors: int | None = s.actors_opt(
        "generator",
        "one per GPU; on CPUs one per core, each with one torch thread, as many as the nodes' "
        "memory holds; no more than the run has calls of 2 batches (long videos: one each)",
    )
    gpus_per_actor: float | None = s.gpus_per_actor_opt(
        "generator",
        None,
        "GPU share of a generator actor (default: 1, or 0.5 beside an encoder)",
    )
    actor_memory_gb: float | None = s.actor_memory_opt("generator")
    encoder_actors: int | None = opt(
        None,
        type=validate.actor_count,
        help="feature encoder actors (catalog input; default: one per GPU, else 1; no more than "
        "the run has batches)",
    )
    # not flags
    encoder_gpus: float = 0.5
    frame_rule: str = "official"
    progress_interval_s: float = 10.0
    # Benchmarks only: build the models by hand (e.g. random weights at real sizes),
    # `factory(device, dtype, role) -> Components`, role "encoder" or "generator".
    components_factory: Callable | None = None

    def __post_init__(self) -> None:
        if self.thresholds is None:
            from selva_core.qa import QAThresholds  # torch: only when a config is made

            self.thresholds = QAThresholds()


@dataclass
class GenerateSummary(ClipCounts):
    input_kind: str = "catalog"
    batch_fill: float = 0.0  # clips per generator batch / batch size, averaged over batches
    batches: int = 0

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_stage.items()))
        return [
            f"{self.input_kind} {self.catalog} clips: {self.ok} ok, {self.failed} failed"
            + (f" ({stages})" if stages else "")
            + f", {self.skipped} skipped (already done)"
            + self.failed_before_text(),
            f"wall time {self.wall_s:.1f} s, {self.clips_per_s:.2f} clips/s, "
            f"{self.batches} generator batches, average batch fill {self.batch_fill:.2f}",
            self.where_text(f"results in {self.folder_text('results')}"),
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
    from selva_core.sampling import SamplerConfig

    try:
        SamplerConfig(num_steps=config.steps, cfg_strength=config.cfg)
    except ValueError as exc:
        raise GenerateInputError(str(exc)) from exc


def effective_peak(config: GenerateConfig) -> float | None:
    if config.peak is not None:
        return config.peak
    return -1.0 if config.loudness is not None else None


def output_settings(config: GenerateConfig, spec, adapters: list[Adapter], precision: str) -> dict:
    """What decides the output; a folder is only continued with the same values: the settings
    declared `output=True`, and what the run derives (the resolved variant and precision, the
    sample rate, the effective peak, the adapters' fingerprints)."""
    return {
        **output_record(config),
        "variant": spec.name,
        "precision": precision,
        "frame_rule": config.frame_rule,
        "sample_rate": spec.sampling_rate,
        "peak": effective_peak(config),
        "adapters": [a.describe() for a in adapters],
    }


def settings_digest(settings: dict) -> str:
    """The folder's settings hash (what a rerun must match)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
