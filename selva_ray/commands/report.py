"""`selva-ray report RUN_DIR`: a static HTML page about a run (QA, generation or training)."""

from __future__ import annotations

import argparse
import sys


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
        type=int,
        default=500,
        help="clips in the table (the worst ones; default 500)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report import RunFolderError, build_report

    if args.max_clips < 0:
        print("error: --max-clips must be >= 0", file=sys.stderr)
        return 2
    try:
        summary = build_report(args.run_dir, max_clips=args.max_clips)
    except RunFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{summary.path}: {summary.clips} clips ({summary.shown} in the table), "
        f"{summary.flagged} flagged, {summary.failed} failed, {summary.images} images, "
        f"{summary.wall_s:.1f} s"
    )
    return 0
