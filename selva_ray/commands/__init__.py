"""Sub-commands of `selva-ray`; each module has `add_parser(subparsers)` setting `run`."""

from . import demo, extract, generate_one, train, weights

COMMANDS = [demo, extract, generate_one, train, weights]
