"""Sub-commands of `selva-ray`; each module has `add_parser(subparsers)` setting `run`."""

from . import weights

COMMANDS = [weights]
