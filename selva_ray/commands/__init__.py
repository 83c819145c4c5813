"""Sub-commands of `selva-ray`; each module has `add_parser(subparsers)` setting `run`."""

from . import demo, doctor, extract, generate, generate_one, inspect, qa, report, train, weights

COMMANDS = [demo, extract, train, generate, generate_one, qa, report, inspect, weights, doctor]
