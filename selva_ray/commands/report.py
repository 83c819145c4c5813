"""`selva-ray report RUN_DIR [--out DIR]`: a static HTML page about a run (QA, generation or
training); RUN_DIR may be a local folder or a URI (`s3://...`), the page goes to a local one."""

from __future__ import annotations

import argparse
import sys

from .. import validate


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report/index.html (or --out DIR): summary, QA histograms, worst clips",
        description=(
            "Build a static page (opens from disk, no server, no external URLs) about a run "
            "folder: settings, adapters, clips ok/failed/flagged, throughput, a histogram per "
            "QA metric, and a sortable table of the clips, worst first, each with its "
            "spectrogram, an audio player, its flags and a link to its video. For a training "
            "run: loss curves and the evaluator metrics of each checkpoint. RUN_DIR may be a "
            "URI (s3://...): then --out names the local folder for the page."
        ),
    )
    add_run_dir(p, run, "generate, qa or train")
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="local folder for the page instead of RUN_DIR/report (needed when RUN_DIR is a "
        "URI or read-only); new, empty, or an earlier page: it is replaced whole",
    )
    p.add_argument(
        "--max-clips",
        type=validate.int_range(0, 1_000_000),
        default=500,
        help="clips in the table (the worst ones; default 500)",
    )


def add_run_dir(p: argparse.ArgumentParser, run, written_by: str) -> None:
    """RUN_DIR, the run folder that `report` and `inspect` read, and the command's `run`."""
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help=f"output folder of {written_by} (path or URI)"
    )
    p.set_defaults(run=run)


def check_run_dir(path: str, *, writable: bool) -> None:
    """A local RUN_DIR is a folder (and, for a report without --out, one we may write report/
    into); checked before the report's imports, so a mistake answers at once. A URI is read
    through pyarrow by `load_run`, which names what is wrong with it."""
    import os

    if "://" in path:
        if writable:
            raise validate.UsageError(
                f"run folder {path} is not on this machine's disk: give --out DIR to write "
                "the page to a local folder"
            )
        return
    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
        raise validate.UsageError(f"run folder {path} {what}")
    if writable:
        try:
            validate.check_output_writable(os.path.join(path, "report"), flag="RUN_DIR")
        except validate.UsageError as exc:
            raise validate.UsageError(
                f"{exc}; give --out DIR to write the page elsewhere"
            ) from None


def run(args: argparse.Namespace) -> int:
    check_run_dir(args.run_dir, writable=args.out is None)
    from ..report import RunFolderError, build_report

    try:
        summary = build_report(args.run_dir, max_clips=args.max_clips, out=args.out)
    except RunFolderError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(
        f"{summary.path}: {summary.clips} clips ({summary.shown} in the table), "
        f"{summary.flagged} flagged, {summary.failed} failed, {summary.images} images, "
        f"{summary.wall_s:.1f} s"
    )
    return 0
