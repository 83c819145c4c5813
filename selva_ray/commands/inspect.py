"""`selva-ray inspect RUN_DIR --worst N`: the report's worst-first ranking in the terminal;
RUN_DIR may be a local folder or a URI (`s3://...`): only its tables are read."""

from __future__ import annotations

import argparse
import sys

from .. import validate
from .report import add_run_dir, check_run_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="print the worst clips of a run (flagged first) with their QA metrics",
        description=(
            "Rank a run's clips as `selva-ray report` does (number of QA flags, then |DeSync|, "
            "clipping, silence, distance from the loudness target) and print the worst ones."
        ),
    )
    add_run_dir(p, run, "generate or qa")
    p.add_argument(
        "--worst",
        type=validate.int_range(0, 1_000_000),
        default=10,
        help="how many clips (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    check_run_dir(args.run_dir, writable=False)
    from ..report import RunFolderError, load_run, ranking_lines

    try:
        run_folder = load_run(args.run_dir)
    except RunFolderError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for line in ranking_lines(run_folder, args.worst):
        print(line)
    return 0
