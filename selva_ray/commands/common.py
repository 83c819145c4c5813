"""Options shared by the commands that run a model (variant, device, precision, weights), and
the driver-side checks every job command runs before Ray or a model starts.

Nothing here imports torch or Ray at module level: the parser must build in milliseconds.
"""

from __future__ import annotations

import argparse

from .. import validate
from ..runtime import PRECISIONS, resolve_device, resolve_dtype


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


def add_device_arg(p, *, help: str = "cpu, cuda, cuda:N or auto") -> None:
    p.add_argument("--device", type=device_name, default="auto", help=help)


def add_weights_args(p) -> None:
    """Where the weights are, and whether they may be downloaded."""
    p.add_argument(
        "--weights-dir",
        help="local weights folder (default: $SELVA_WEIGHTS_DIR, else ~/.cache/selva-ray/weights)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="never download; fail with the fetch command when a file is missing",
    )


def add_model_args(p: argparse.ArgumentParser, *, default_variant: str) -> None:
    p.add_argument(
        "--variant",
        type=variant_name,
        default=default_variant,
        help="model variant (`tiny` runs offline on random weights; list them with "
        "`selva-ray weights list`)",
    )
    add_device_arg(p)
    p.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default=None,
        help="model precision; auto: bf16 on GPU and on CPUs with native bf16 (AMX, "
        "avx512_bf16), else fp32 (default: bf16 on GPU, fp32 on CPU)",
    )
    add_weights_args(p)


def add_actor_args(
    p,
    *,
    role: str,
    gpus_default: float | None = 1.0,
    gpus_help: str = "",
    actors_default: str = "one per GPU, else 1",
) -> None:
    """The model actors of a Ray Data job: how many, and what each reserves."""
    p.add_argument(
        "--actors",
        type=validate.actor_count,
        help=f"{role} actors (default: {actors_default})",
    )
    p.add_argument(
        "--gpus-per-actor",
        type=validate.gpu_share,
        default=gpus_default,
        help=gpus_help or f"GPUs reserved per {role} actor (fractions share a GPU)",
    )
    p.add_argument(
        "--actor-memory-gb",
        type=validate.memory_gb,
        help=f"heap reserved per {role} actor (default: by model size)",
    )


def add_run_args(p: argparse.ArgumentParser) -> None:
    """How a resumable Ray Data job commits, retries, fails and reports."""
    p.add_argument(
        "--shard-size",
        type=validate.shard_size,
        default=64,
        help="clips per committed shard",
    )
    p.add_argument("--retry-errors", action="store_true", help="redo clips that failed before")
    p.add_argument(
        "--fail-on-error",
        action="store_true",
        help="exit 1 if any clip failed (default: only if every clip failed)",
    )
    p.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument(
        "--skip-weights-check",
        action="store_true",
        help="do not look for the weight files in the driver (when only the workers see them)",
    )
    p.add_argument("--no-progress", action="store_true", help="no Ray Data progress output")


def check_model_args(args: argparse.Namespace, *, local_device: bool = True) -> None:
    """Driver-side checks of the model options: variant, device, every weight file at once."""
    validate.check_variant(args.variant)
    validate.check_device(args.device, local=local_device)
    validate.check_weights(args.variant, args.weights_dir, offline=args.offline)


def resolve_store(args: argparse.Namespace):
    from selva_core.weights import WeightStore

    return WeightStore(args.weights_dir, allow_download=False if args.offline else None)


def pipeline_config(args: argparse.Namespace, **overrides):
    from selva_core.pipeline import PipelineConfig

    device = resolve_device(args.device)
    return PipelineConfig(
        variant=args.variant,
        dtype=resolve_dtype(args.precision, device),
        device=device,
        **overrides,
    )


def add_allow_root_arg(p: argparse.ArgumentParser) -> None:
    """Where manifest rows may point (the catalog reader refuses paths outside these)."""
    p.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="PATH",
        help="a folder or bucket (s3://b) manifest rows may point into; repeatable (default: "
        "the manifest's folder and bucket; `/` allows any local path)",
    )


MASK_PATHS = ("clip", "sync")  # selva_core.video.mask.MASK_PATHS (no torch import here)


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


def add_window_args(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """`--window`/`--overlap`: how long videos are cut into windows (issue 11)."""
    window = validate.float_range(0, 24 * 3600)
    if defaults:
        p.add_argument(
            "--window",
            type=window,
            default=None,
            help="seconds per window: a video longer than this (a catalog row without "
            "'duration') is cut into overlapping windows (default 8; 0: never, the video is cut "
            "at --max-duration; at most --max-duration)",
        )
        p.add_argument(
            "--overlap",
            type=window,
            default=None,
            help="seconds shared by consecutive windows (default 1, at most half the window)",
        )
        return
    p.add_argument(
        "--window",
        type=window,
        default=None,
        help="window length the features were cut into (default: as extracted; a different "
        "value is refused)",
    )
    p.add_argument(
        "--overlap",
        type=window,
        default=None,
        help="window overlap the features were cut with (default: as extracted)",
    )


def add_mask_args(p: argparse.ArgumentParser) -> None:
    """`--mask-strength`, `--mask-paths`: object-mask focus for catalogs with a `mask` column."""
    p.add_argument(
        "--mask-strength",
        type=validate.float_range(0, 1),
        default=1.0,
        help="how far a catalog row's 'mask' (image or video, 1 keeps the object) blends the "
        "background toward grey before encoding (0: not at all; default 1)",
    )
    p.add_argument(
        "--mask-paths",
        type=mask_paths,
        default=",".join(MASK_PATHS),
        help="streams the mask applies to: clip (CLIP frames, MMAudio family), sync, or both "
        "(default clip,sync)",
    )
