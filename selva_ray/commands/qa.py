"""`selva-ray qa`: QA metrics of every clip's audio track in a catalog, on Ray.

`add_threshold_args` / `thresholds_from_args` are shared with the jobs that flag clips too.
"""

from __future__ import annotations

import argparse
import sys

from .. import validate
from ..runtime import DTYPES
from .common import (
    add_actor_args,
    add_allow_root_arg,
    add_device_arg,
    add_run_args,
    add_weights_args,
)

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


def add_threshold_args(p: argparse.ArgumentParser) -> None:
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
        type=validate.float_range(0.0, validate.MAX_QA_SECONDS, low_open=True),
        default=600.0,
        help="seconds measured per clip from its start, unless the catalog says, at most "
        f"{validate.MAX_QA_SECONDS:g} (default 600)",
    )
    g = p.add_argument_group("DeSync (audio-visual offset, full Synchformer)")
    g.add_argument(
        "--no-desync", action="store_true", help="skip DeSync (desync_s stays null, no model)"
    )
    g.add_argument(
        "--desync-variant",
        type=desync_variant_name,
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
    add_device_arg(g, help="cpu, cuda or auto (default: GPUs if any)")
    add_actor_args(g, role="DeSync", gpus_default=1.0)
    g.add_argument(
        "--desync-batch-size",
        type=validate.int_range(1, 1024),
        default=4,
        help="clips per actor call (default 4)",
    )
    add_weights_args(g)
    add_run_args(p)
    p.set_defaults(run=run)


def desync_variant_name(text: str) -> str:
    """argparse type: `synchformer` or a variant name (tiny ones score with random weights)."""
    from selva_core.variants import VARIANTS

    if text != "synchformer" and text not in VARIANTS:
        raise argparse.ArgumentTypeError(
            f"unknown variant {text!r}; choose synchformer, tiny or a variant name"
        )
    return text


def check_inputs(args: argparse.Namespace) -> tuple[list, list]:
    """Everything the driver can check before Ray or a model starts (no torch here, but for
    the thresholds file last); returns the catalog read."""
    validate.check_device(args.device, local=validate.local_cluster(args.ray_address))
    validate.check_output_folder(args.output, kind="results")
    catalog = validate.read_input_catalog(
        args.input,
        max_duration=args.max_duration,
        allow_roots=args.allow_root or None,
        default_prompt="",  # QA measures tracks: a manifest needs no prompt column
    )
    if args.qa_thresholds:  # a settings mistake, named before any missing weights
        from selva_core.qa import ThresholdsError

        try:
            thresholds_from_args(args)
        except ThresholdsError as exc:
            raise validate.UsageError(str(exc)) from None
    if not args.no_desync and not args.skip_weights_check:
        from selva_core.variants import VARIANTS

        tiny = args.desync_variant in VARIANTS and VARIANTS[args.desync_variant].is_tiny
        if not tiny:
            validate.check_weights(
                "tiny", args.weights_dir, offline=args.offline, keys=("synchformer",)
            )
    return catalog


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
    catalog = check_inputs(args)  # before the job's imports (torch): mistakes answer at once
    from selva_core.qa import ThresholdsError
    from selva_core.variants import UnknownVariantError
    from selva_core.weights import WeightsError

    from ..io.catalog import CatalogError
    from ..io.output_dir import SettingsMismatchError
    from ..qa import run_qa

    try:
        summary = run_qa(config_from_args(args), catalog=catalog)
    except (
        ThresholdsError,
        CatalogError,
        SettingsMismatchError,
        UnknownVariantError,
        WeightsError,
    ) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return summary.exit_code(args.fail_on_error)
