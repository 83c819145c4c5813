"""The settings several jobs share, declared once (`selva_ray.settings.opt`); each job's config
class lists the ones it has. Defaults shared with the model come from `selva_core.defaults`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from selva_core.defaults import (
    DEFAULT_CFG,
    DEFAULT_OVERLAP,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    DEFAULT_VARIANT,
    DEFAULT_WINDOW,
)

from . import validate
from .settings import APPEND, NEGATED, SWITCH, opt

MASK_PATHS = ("clip", "sync")  # selva_core.video.mask.MASK_PATHS (no torch import here)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # runtime.PRECISIONS (no torch import)

RUN = "run"  # group titles
WEIGHTS = None


def variant_name(text: str) -> str:
    """argparse type: a known variant name (selva_core.variants imports no torch)."""
    from selva_core.variants import VARIANTS

    if text not in VARIANTS:
        raise argparse.ArgumentTypeError(
            f"unknown variant {text!r}; choose from {', '.join(VARIANTS)}"
        )
    return text


def device_name(text: str) -> str:
    """argparse type: a device name of the right form (availability is checked later)."""
    if not validate.DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def mask_paths(text: str) -> str:
    """argparse type of `--mask-paths clip,sync`: a non-empty subset, canonical order (kept
    as text, so `--print-config` writes it back as the flag reads it)."""
    paths = {p.strip() for p in text.split(",") if p.strip()}
    if not paths or paths - set(MASK_PATHS):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(MASK_PATHS)}, got {text!r}"
        )
    return ",".join(p for p in MASK_PATHS if p in paths)


def mask_path_tuple(value) -> tuple[str, ...]:
    """`--mask-paths` as the job configs take it (a config file may give a list)."""
    if isinstance(value, str):
        value = mask_paths(value).split(",")
    return tuple(value)


def none_if_empty(value):
    return value or None


# ---- input and output -----------------------------------------------------------------------


def input_opt(help: str, **extra) -> Any:
    return opt(help=help, required=True, **extra)


def output_opt(help: str = "output folder (path or URI)", **extra) -> Any:
    return opt(help=help, required=True, **extra)


def allow_roots_opt(**extra) -> Any:
    return opt(
        None,
        flag="--allow-root",
        kind=APPEND,
        metavar="PATH",
        convert=none_if_empty,
        help="a folder or bucket (s3://b) manifest rows may point into; repeatable (default: "
        "the manifest's folder and bucket; `/` allows any local path)",
        **extra,
    )


# ---- the model ------------------------------------------------------------------------------


def variant_opt(default: str | None = DEFAULT_VARIANT, help: str | None = None, **extra) -> Any:
    return opt(
        default,
        type=variant_name,
        help=help
        or "model variant (`tiny` runs offline on random weights; list them with "
        "`selva-ray weights list`)",
        **extra,
    )


def device_opt(help: str = "cpu, cuda, cuda:N or auto", group: str | None = None, **extra) -> Any:
    return opt("auto", type=device_name, help=help, group=group, **extra)


def precision_opt(
    help: str = "model precision; auto: bf16 on GPU and on CPUs with native bf16 (AMX, "
    "avx512_bf16), else fp32 (default: bf16 on GPU, fp32 on CPU)",
    choices: tuple[str, ...] = PRECISIONS,
    default: str | None = None,
    group: str | None = None,
    **extra,
) -> Any:
    return opt(default, choices=choices, help=help, group=group, **extra)


def weights_dir_opt(group: str | None = None, **extra) -> Any:
    return opt(
        None,
        group=group,
        help="local weights folder (default: $SELVA_WEIGHTS_DIR, else ~/.cache/selva-ray/weights)",
        **extra,
    )


def offline_opt(group: str | None = None, **extra) -> Any:
    return opt(
        False,
        kind=SWITCH,
        group=group,
        help="never download; fail with the fetch command when a file is missing",
        **extra,
    )


def check_weights_opt(group: str | None = None, **extra) -> Any:
    return opt(
        True,
        flag="--skip-weights-check",
        kind=NEGATED,
        group=group,
        help="do not look for the weight files in the driver (when only the workers see them)",
        **extra,
    )


# ---- model actors -----------------------------------------------------------------------------


def actors_opt(
    role: str,
    default_text: str = "one per GPU, else 1; no more than the run has batches",
    group=None,
    **extra,
) -> Any:
    return opt(
        None,
        type=validate.actor_count,
        group=group,
        help=f"{role} actors (default: {default_text})",
        **extra,
    )


def gpus_per_actor_opt(role: str, default: float | None = 1.0, help: str = "", group=None, **extra):
    return opt(
        default,
        type=validate.gpu_share,
        group=group,
        help=help or f"GPUs reserved per {role} actor (fractions share a GPU)",
        **extra,
    )


def actor_memory_opt(role: str, group=None, **extra) -> Any:
    return opt(
        None,
        type=validate.memory_gb,
        group=group,
        help=f"heap reserved per {role} actor (default: by model size)",
        **extra,
    )


# ---- how a resumable job runs ---------------------------------------------------------------


def shard_size_opt(**extra) -> Any:
    return opt(64, type=validate.shard_size, help="clips per committed shard", **extra)


def retry_errors_opt(**extra) -> Any:
    return opt(False, kind=SWITCH, help="redo clips that failed before", **extra)


def fail_on_error_opt(**extra) -> Any:
    return opt(
        False,
        kind=SWITCH,
        help="exit 1 if any clip failed (default: only if every clip failed)",
        **extra,
    )


RAY_ADDRESS_HELP = (
    "an existing Ray cluster: auto or HOST:PORT (default: $RAY_ADDRESS as `ray job submit` "
    "sets it, else a private local cluster of this machine's cores)"
)


def ray_address_opt(group: str | None = None, **extra) -> Any:
    return opt(None, help=RAY_ADDRESS_HELP, group=group, **extra)


DRY_RUN_HELP = (
    "read and check the input, plan the run (actors, batches, shards) and print the plan with "
    "an estimate of the work, then exit: no model, no output folder, and no Ray unless "
    "--ray-address names a cluster (then only its resources are read)"
)


def dry_run_opt(group: str | None = None, **extra) -> Any:
    return opt(False, kind=SWITCH, help=DRY_RUN_HELP, group=group, **extra)


def progress_opt(**extra) -> Any:
    return opt(True, kind=NEGATED, help="no Ray Data progress output", **extra)


@dataclass(kw_only=True)
class BatchJobSettings:
    """How a resumable Ray Data job runs: shards, retries, exit status, cluster, checks,
    progress (its flags come after the job's own in --help), and the resources of its CPU
    tasks and model actors that no flag sets."""

    shard_size: int = shard_size_opt()
    retry_errors: bool = retry_errors_opt()
    fail_on_error: bool = fail_on_error_opt()
    ray_address: str | None = ray_address_opt()
    check_weights: bool = check_weights_opt()
    progress: bool = progress_opt()
    dry_run: bool = dry_run_opt()
    cpus_per_actor: float = 1.0
    decode_cpus: float = 1.0
    decode_memory_gb: float = 1.0
    flags: dict | None = None  # the command line's settings (`--print-config`), to _meta.json


# ---- clips ------------------------------------------------------------------------------------


def max_duration_opt(default: float = 8.0, **extra) -> Any:
    return opt(
        default,
        type=validate.seconds,
        help=f"seconds per clip, at most {validate.MAX_CLIP_SECONDS:g}",
        **extra,
    )


def seed_opt(
    help: str = f"noise seed per clip, 0..{validate.MAX_SEED}", group=None, **extra
) -> Any:
    return opt(DEFAULT_SEED, type=validate.seed, help=help, group=group, **extra)


def cfg_opt(help: str = f"guidance strength, 0..{validate.MAX_CFG:g}", group=None, **extra) -> Any:
    return opt(DEFAULT_CFG, type=validate.cfg, help=help, group=group, **extra)


def steps_opt(help: str = f"Euler steps, 1..{validate.MAX_STEPS}", group=None, **extra) -> Any:
    return opt(DEFAULT_STEPS, type=validate.steps, help=help, group=group, **extra)


WINDOW_TYPE = validate.float_range(0, 24 * 3600)
WINDOW_HELP = (
    "seconds per window: a video longer than this (a catalog row without 'duration') "
    f"is cut into overlapping windows (default {DEFAULT_WINDOW:g}; 0: never, the video is "
    "cut at --max-duration; at most --max-duration)"
)
OVERLAP_HELP = (
    f"seconds shared by consecutive windows (default {DEFAULT_OVERLAP:g}, at most half the window)"
)


def window_opt(
    default: float | None = DEFAULT_WINDOW, help: str | None = None, group=None, **extra
):
    return opt(default, type=WINDOW_TYPE, group=group, help=help or WINDOW_HELP, **extra)


def overlap_opt(
    default: float | None = DEFAULT_OVERLAP, help: str | None = None, group=None, **extra
):
    return opt(default, type=WINDOW_TYPE, group=group, help=help or OVERLAP_HELP, **extra)


def mask_strength_opt(**extra) -> Any:
    return opt(
        1.0,
        type=validate.float_range(0, 1),
        help="how far a catalog row's 'mask' (image or video, 1 keeps the object) blends the "
        "background toward grey before encoding (0: not at all; default 1)",
        **extra,
    )


def mask_paths_opt(**extra) -> Any:
    return opt(
        MASK_PATHS,
        type=mask_paths,
        cli_default=",".join(MASK_PATHS),
        convert=mask_path_tuple,
        help="streams the mask applies to: clip (CLIP frames, MMAudio family), sync, or both "
        "(default clip,sync)",
        **extra,
    )


# ---- QA thresholds (qa, generate): a file, and one flag per threshold over it ------------------

# flag -> (QAThresholds field, help, argparse type with the value's range)
THRESHOLD_FLAGS = {
    "--max-desync": (
        "max_abs_desync_s",
        "flag |DeSync| above this many seconds, 0..10 (default 0.5)",
        validate.float_range(0.0, 10.0),
    ),
    "--max-silence": (
        "max_silence_ratio",
        "flag a silent share above this, 0..1 (default 0.5)",
        validate.ratio,
    ),
    "--max-clipping": (
        "max_clipped_ratio",
        "flag a clipped share above this, 0..1 (default 0.001)",
        validate.ratio,
    ),
    "--target-lufs": (
        "target_lufs",
        f"loudness target in LUFS, {validate.MIN_LEVEL_DB:g}..0 (default -23)",
        validate.level_db,
    ),
    "--loudness-tolerance": (
        "loudness_tolerance_lu",
        "flag loudness this many LU off the target, 0..70 (default 3)",
        validate.float_range(0.0, 70.0),
    ),
    "--max-true-peak": (
        "max_true_peak_dbtp",
        f"flag a true peak above this dBTP, {validate.MIN_LEVEL_DB:g}..20 (default off)",
        validate.float_range(validate.MIN_LEVEL_DB, 20.0),
    ),
    "--max-flatness": (
        "max_spectral_flatness",
        "flag spectral flatness above this, 0..1 (default off)",
        validate.ratio,
    ),
}


def add_threshold_args(p) -> None:
    g = p.add_argument_group("QA thresholds (flags override the file)")
    g.add_argument(
        "--qa-thresholds",
        metavar="FILE",
        help="thresholds file (.json, .yaml or .toml) with QAThresholds keys",
    )
    for flag, (dest, help_, kind) in THRESHOLD_FLAGS.items():
        g.add_argument(flag, dest=f"qa_{dest}", type=kind, metavar="X", help=help_)


def thresholds_from_args(args: argparse.Namespace):
    """QAThresholds from --qa-thresholds and the per-threshold flags (ThresholdsError if bad)."""
    from selva_core.qa import QAThresholds

    base = QAThresholds.from_file(args.qa_thresholds) if args.qa_thresholds else QAThresholds()
    return base.updated(
        **{dest: getattr(args, f"qa_{dest}") for dest, _, _ in THRESHOLD_FLAGS.values()}
    )
