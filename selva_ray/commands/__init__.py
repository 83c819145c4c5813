"""Sub-commands of `selva-ray`; each module has `add_parser(subparsers)` setting `run`."""

from . import generate_one, weights

COMMANDS = [generate_one, weights]
