"""`selva-ray qa`: QA metrics of every clip's audio track in a catalog, on Ray."""

from __future__ import annotations

import argparse

from .. import validate
from ..qa.config import QAConfig
from ..shared_settings import thresholds_from_args
from .common import add_job_options, finish, job_config


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
    add_job_options(p, QAConfig, run, thresholds=True)


def check_inputs(args: argparse.Namespace) -> tuple[list, list]:
    """Everything the driver can check before Ray or a model starts (no torch here, but for
    the thresholds file last); returns the catalog read."""
    validate.check_device(args.device, local=validate.local_cluster(args.ray_address))
    validate.check_output_folder(args.output, kind="results")
    catalog = validate.read_input_catalog(
        args.input,
        max_duration=args.max_duration,
        allow_roots=args.allow_roots or None,
        default_prompt="",  # QA measures tracks: a manifest needs no prompt column
    )
    if args.qa_thresholds:  # a settings mistake, named before any missing weights
        from selva_core.qa import ThresholdsError

        try:
            thresholds_from_args(args)
        except ThresholdsError as exc:
            raise validate.UsageError(str(exc)) from None
    if args.check_weights and args.desync_variant is not None:
        validate.check_weights(
            "tiny",
            args.weights_dir,
            offline=args.offline,
            keys=validate.desync_weight_keys(args.desync_variant, args.desync),
        )
    return catalog


def run(args: argparse.Namespace) -> int:
    catalog = check_inputs(args)  # before the job's imports (torch): mistakes answer at once
    from ..qa import run_qa

    # unusable input or settings raise a usage error: one line, exit 2 (cli.main)
    return finish(run_qa(job_config(args), catalog=catalog), args.fail_on_error)
