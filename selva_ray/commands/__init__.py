"""Sub-commands of `selva-ray`; each module has `add_parser(subparsers)` setting `run`."""

from . import demo, doctor, extract, generate_one, inspect, qa, report, weights

COMMANDS = [demo, extract, generate_one, qa, report, inspect, weights, doctor]
