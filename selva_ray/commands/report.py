"""`selva-ray report RUN_DIR`: a static HTML page about a run (QA, generation or training)."""

from __future__ import annotations

import argparse
import sys

from .. import validate


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report/index.html: summary, QA histograms, worst clips first",
        description=(
            "Build a static page (opens from disk, no server, no external URLs) about a run "
            "folder: settings, adapters, clips ok/failed/flagged, throughput, a histogram per "
            "QA metric, and a sortable table of the clips, worst first, each with its "
            "spectrogram, an audio player, its flags and a link to its video. For a training "
            "run: loss curves and the evaluator metrics of each checkpoint."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder of generate, qa or train")
    p.add_argument(
        "--max-clips",
        type=validate.int_range(0, 1_000_000),
        default=500,
        help="clips in the table (the worst ones; default 500)",
    )
    p.set_defaults(run=run)


def check_run_dir(path: str, *, writable: bool) -> None:
    """RUN_DIR is a local folder (and, for a report, one we may write report/ into); checked
    before the report's imports, so a mistake answers at once."""
    import os

    if "://" in path:
        return  # load_run names the fix (copy it locally first)
    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
        raise validate.UsageError(f"run folder {path} {what}")
    if writable:
        validate.check_output_writable(os.path.join(path, "report"), flag="RUN_DIR")


def run(args: argparse.Namespace) -> int:
    check_run_dir(args.run_dir, writable=True)
    from ..report import RunFolderError, build_report

    try:
        summary = build_report(args.run_dir, max_clips=args.max_clips)
    except RunFolderError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(
        f"{summary.path}: {summary.clips} clips ({summary.shown} in the table), "
        f"{summary.flagged} flagged, {summary.failed} failed, {summary.images} images, "
        f"{summary.wall_s:.1f} s"
    )
    return 0
