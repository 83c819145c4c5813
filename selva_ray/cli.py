"""`selva-ray` command line: one sub-command per job.

Building the parser imports nothing heavy (no torch, no Ray, no pyarrow), so `--help` and
flag mistakes answer at once; each command imports what it needs when it runs. Every mistake
the driver can see ends in one line `error: ...` and exit status 2, before Ray or a model starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .commands import COMMANDS


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default unless its help already says it (or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, False, argparse.SUPPRESS)
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `selva-ray extract: error: argument --x: ...`, exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse API
        line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {line} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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


def usage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean unusable input or settings: one line, exit 2, no traceback."""
    from .validate import UsageError

    errors: list[type[BaseException]] = [UsageError]
    if "selva_core.variants" in sys.modules:
        from selva_core.variants import UnknownVariantError

        errors.append(UnknownVariantError)
    if "selva_core.weights" in sys.modules:
        from selva_core.weights import WeightsError

        errors.append(WeightsError)
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own progress at INFO; third-party chatter (open_clip logs to the root) only if -v.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for name in ("selva_core", "selva_ray"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, usage_errors()):
            raise
        if args.verbose:
            logging.getLogger("selva_ray").exception("unusable input or settings")
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
