"""Sub-commands of `selva-ray`; each module has `add_parser(subparsers)` setting `run`."""

from . import demo, extract, generate, generate_one, weights

COMMANDS = [demo, extract, generate, generate_one, weights]
