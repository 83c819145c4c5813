"""`selva-ray` command line: one sub-command per job; heavy imports happen inside commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selva-ray",
        description=(
            "Batch video-to-audio generation with SelVA / MMAudio on Ray: extract features from "
            "video catalogs, fine-tune LoRA adapters, generate audio tracks and dubbed videos."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own progress at INFO; third-party chatter (open_clip logs to the root) only if -v.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for name in ("selva_core", "selva_ray"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from selva_core.compat import TorchaudioLoadError

    try:
        return int(args.run(args) or 0)
    except TorchaudioLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
