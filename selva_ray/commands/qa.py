"""`selva-ray qa`: QA metrics of every clip's audio track in a catalog, on Ray.

`add_threshold_args` / `thresholds_from_args` are shared with the jobs that flag clips too.
"""

from __future__ import annotations

import argparse
import sys

from ..runtime import DTYPES
from .common import add_allow_root_arg

# flag -> QAThresholds field
THRESHOLD_FLAGS = {
    "--max-desync": ("max_abs_desync_s", "flag |DeSync| above this many seconds (default 0.5)"),
    "--max-silence": ("max_silence_ratio", "flag a silent share above this (default 0.5)"),
    "--max-clipping": ("max_clipped_ratio", "flag a clipped share above this (default 0.001)"),
    "--target-lufs": ("target_lufs", "loudness target in LUFS (default -23)"),
    "--loudness-tolerance": ("loudness_tolerance_lu", "flag loudness this far off (default 3)"),
    "--max-true-peak": ("max_true_peak_dbtp", "flag a true peak above this dBTP (default off)"),
    "--max-flatness": ("max_spectral_flatness", "flag spectral flatness above this (default off)"),
}


def add_threshold_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("QA thresholds (flags override the file)")
    g.add_argument(
        "--qa-thresholds",
        metavar="FILE",
        help="thresholds file (.json, .yaml or .toml) with QAThresholds keys",
    )
    for flag, (dest, help_) in THRESHOLD_FLAGS.items():
        g.add_argument(flag, dest=f"qa_{dest}", type=float, metavar="X", help=help_)


def thresholds_from_args(args: argparse.Namespace):
    """QAThresholds from --qa-thresholds and the per-threshold flags (ThresholdsError if bad)."""
    from selva_core.qa import QAThresholds

    base = QAThresholds.from_file(args.qa_thresholds) if args.qa_thresholds else QAThresholds()
    return base.updated(
        **{dest: getattr(args, f"qa_{dest}") for dest, _ in THRESHOLD_FLAGS.values()}
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "qa",
        help="QA metrics and flags of the audio tracks of a video catalog, on Ray",
        description=(
            "Decode every clip's audio track on CPU tasks and measure it: loudness (LUFS, "
            "ITU-R BS.1770), sample and true peak, RMS, clipped and silent shares, spectral "
            "flatness; and score audio-visual sync with the full Synchformer (DeSync, on "
            "model actors: one per GPU, else --actors on CPU); flag clips that cross the "
            "thresholds. Writes OUTPUT/results/ in the "
            "same schema as a generation run (see `selva-ray report` and `inspect`) and bad "
            "clips to OUTPUT/errors/. Rerunning skips finished clips."
        ),
        epilog="INPUT is any catalog `extract` reads (folder or .csv/.jsonl/.parquet manifest).",
    )
    p.add_argument("--input", required=True, help="catalog folder or manifest (path or URI)")
    add_allow_root_arg(p)
    p.add_argument("--output", required=True, help="output folder (path or URI)")
    add_threshold_args(p)
    p.add_argument(
        "--max-duration",
        type=float,
        default=600.0,
        help="seconds measured per clip from its start, unless the catalog says (default 600)",
    )
    g = p.add_argument_group("DeSync (audio-visual offset, full Synchformer)")
    g.add_argument(
        "--no-desync", action="store_true", help="skip DeSync (desync_s stays null, no model)"
    )
    g.add_argument(
        "--desync-variant",
        default="synchformer",
        help="synchformer (published synchformer_state_dict.pth, default) or tiny (seeded "
        "random weights: offline runs and tests; the scores mean nothing)",
    )
    g.add_argument(
        "--desync-precision",
        choices=sorted(DTYPES),
        default="fp32",
        help="DeSync model precision (default fp32: scores are argmaxes over a 0.2 s grid)",
    )
    g.add_argument("--device", default="auto", help="cpu, cuda or auto (default: GPUs if any)")
    g.add_argument("--actors", type=int, help="DeSync actors (default: one per GPU, else 1)")
    g.add_argument("--gpus-per-actor", type=float, default=1.0, help="default 1")
    g.add_argument("--actor-memory-gb", type=float, help="heap reserved per DeSync actor")
    g.add_argument(
        "--desync-batch-size", type=int, default=4, help="clips per actor call (default 4)"
    )
    g.add_argument("--weights-dir", help="local weights folder (default $SELVA_WEIGHTS_DIR)")
    g.add_argument(
        "--offline",
        action="store_true",
        help="never download; fail with the fetch command when the weights are missing",
    )
    p.add_argument("--shard-size", type=int, default=64, help="clips per committed shard")
    p.add_argument("--retry-errors", action="store_true", help="redo clips that failed before")
    p.add_argument(
        "--fail-on-error",
        action="store_true",
        help="exit 1 if any clip failed (default: only if every clip failed)",
    )
    p.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--no-progress", action="store_true", help="no Ray Data progress output")
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    """QAConfig of a command line (ThresholdsError for a bad thresholds file)."""
    from ..config_file import job_settings
    from ..qa import QAConfig

    return QAConfig(
        input=args.input,
        output=args.output,
        thresholds=thresholds_from_args(args),
        max_duration=args.max_duration,
        shard_size=args.shard_size,
        desync_variant=None if args.no_desync else args.desync_variant,
        desync_precision=args.desync_precision,
        device=args.device,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        actor_memory_gb=args.actor_memory_gb,
        desync_batch_size=args.desync_batch_size,
        weights_dir=args.weights_dir,
        offline=args.offline,
        retry_errors=args.retry_errors,
        fail_on_error=args.fail_on_error,
        ray_address=args.ray_address,
        allow_roots=args.allow_root or None,
        progress=not args.no_progress,
        flags=job_settings(args),
    )


def run(args: argparse.Namespace) -> int:
    from selva_core.qa import ThresholdsError
    from selva_core.variants import UnknownVariantError
    from selva_core.weights import WeightsError

    from ..io.catalog import CatalogError
    from ..io.output_dir import SettingsMismatchError
    from ..qa import run_qa

    if not args.max_duration > 0 or args.shard_size < 1:
        print("error: --max-duration must be > 0 and --shard-size >= 1", file=sys.stderr)
        return 2
    if args.desync_batch_size < 1 or (args.actors is not None and args.actors < 1):
        print("error: --desync-batch-size and --actors must be >= 1", file=sys.stderr)
        return 2
    try:
        summary = run_qa(config_from_args(args))
    except (
        ThresholdsError,
        CatalogError,
        SettingsMismatchError,
        UnknownVariantError,
        WeightsError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return summary.exit_code(args.fail_on_error)
