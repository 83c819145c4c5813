"""`selva-ray` command line: one sub-command per job.

Building the parser imports nothing heavy (no torch, no Ray, no pyarrow), so `--help` and
flag mistakes answer at once; each command imports what it needs when it runs. Every mistake
the driver can see ends in one line `error: ...` and exit status 2, before Ray or a model starts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from .commands import COMMANDS
from .config_file import (
    ConfigFileError,
    add_config_args,
    apply_config,
    dump_settings,
    job_settings,
)

# Jobs whose settings can come from --config FILE (same keys as their flags).
CONFIGURABLE = ("extract", "generate", "train", "qa")


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
    for name in CONFIGURABLE:
        if name in sub.choices:
            add_config_args(sub.choices[name])
    return parser


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; a job's --config file supplies defaults that flags override."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in CONFIGURABLE and "--config" in " ".join(argv):
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        known, _ = pre.parse_known_args(argv)
        if known.config:
            try:
                apply_config(subparser(parser, command), known.config)
            except ConfigFileError as exc:
                parser.exit(2, f"error: {exc}\n")
    return parser.parse_args(argv)


def usage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean unusable input or settings: one line, exit 2, no traceback."""
    from .validate import UsageError

    errors: list[type[BaseException]] = [UsageError]
    if "selva_core.variants" in sys.modules:
        from selva_core.variants import UnknownVariantError

        errors.append(UnknownVariantError)
    if "selva_core.qa.metrics" in sys.modules:
        from selva_core.qa.metrics import ThresholdsError

        errors.append(ThresholdsError)
    if "selva_core.weights" in sys.modules:
        from selva_core.weights import WeightsError

        errors.append(WeightsError)
    return tuple(errors)


RERUN = "rerun the same command to continue"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"{signal.Signals(signum).name}; {RERUN}")


def _leave_ray() -> None:
    """Disconnect from Ray (stopping a private cluster) before the last line is printed: Ray
    forwards its workers' output to this process until then, and a worker stopped by the
    interrupt could otherwise print after that line."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    with contextlib.suppress(Exception):  # the line below matters more than a clean exit
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM (a scheduler, `kill`, `timeout`) ends a run as Ctrl-C does: the output folder's
    # lease released by its context manager, one line, exit 130
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    args = parse(argv)
    if getattr(args, "print_config", False):
        print(dump_settings(job_settings(args)), end="")
        return 0
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
    except KeyboardInterrupt as exc:
        how = exc.args[0] if exc.args else f"SIGINT; {RERUN}"
        _leave_ray()
        print(f"interrupted ({how})", file=sys.stderr)
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
