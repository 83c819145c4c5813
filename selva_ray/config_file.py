"""Job settings from a file: `selva-ray <job> --config FILE.yaml|.toml|.json`.

The file holds the same keys as the job's flags (`max-duration` or `max_duration`); flags given
on the command line override it. `--print-config` prints the effective settings in the same
form, so a run can be written down once and fed back (`selva-ray extract --print-config ... >
run.yaml; selva-ray extract --config run.yaml`).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import yaml

# argparse bookkeeping that is not a setting
NOT_SETTINGS = {"help", "run", "command", "config", "print_config", "verbose"}


class ConfigFileError(ValueError):
    """The config file cannot be read, or names a key the job does not have."""


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from a YAML/TOML/JSON file with the same keys as the flags; "
        "flags given here override it",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings as YAML (usable as --config) and exit",
    )


def read_config(path: str) -> dict:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc}") from exc
    try:
        if file.suffix == ".toml":
            data = tomllib.loads(text)
        elif file.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigFileError(f"config file {path} is not valid: {first}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path} must hold a mapping of flag names to values")
    return data


def settings_actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each setting under its flag's name (`max_duration`; `--max-desync` is `max_desync` even
    where its dest differs) and under its dest."""
    actions = {}
    for a in p._actions:
        if a.dest in NOT_SETTINGS:
            continue
        actions[a.dest] = a
        actions[flag_key(a).replace("-", "_")] = a
    return actions


def flag_key(action: argparse.Action) -> str:
    """A setting's key in a config file: its first long flag without dashes (`max-duration`)."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return longs[0][2:] if longs else action.dest.replace("_", "-")


def _switch(action: argparse.Action) -> bool:
    """A flag without a value (`--mux`, `--no-desync`, `--rslora/--no-rslora`)."""
    return action.nargs == 0


def file_value(action: argparse.Action, key: str, value, path: str):
    """A config file's value for one setting, parsed by the same rule as its flag: a switch
    takes a boolean (or yes/no, on/off, 1/0; for a `--no-x` flag keyed by the flag, true
    means the flag is given), any other setting its flag's type and range."""
    from .settings import parse_switch

    where = f"config file {path}: {key}"
    if _switch(action):
        try:
            on = parse_switch(value)
        except ValueError as exc:
            raise ConfigFileError(f"{where}: {exc}") from None
        negated = isinstance(action, argparse._StoreFalseAction)
        return not on if negated and key.replace("_", "-") == flag_key(action) else on
    if value is None:
        return None
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [file_value_one(action, key, v, path) for v in items]
    return file_value_one(action, key, value, path)


def file_value_one(action: argparse.Action, key: str, value, path: str):
    where = f"config file {path}: {key}"
    if isinstance(value, list) and action.type is not None:
        value = ",".join(map(str, value))  # a list for a comma-separated flag (--mask-paths)
    if isinstance(value, bool | dict):
        raise ConfigFileError(f"{where}: expected a value, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigFileError(f"{where}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigFileError(
            f"{where} must be one of {sorted(action.choices, key=str)}, got {value!r}"
        )
    return value


def apply_config(p: argparse.ArgumentParser, path: str) -> None:
    """Make the file's values the parser's defaults (so flags still win), and stop requiring
    flags the file provides."""
    actions = settings_actions(p)
    defaults = {}
    for key, value in read_config(path).items():
        dest = str(key).lstrip("-").replace("-", "_")
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted({flag_key(a) for a in actions.values()}))
            raise ConfigFileError(f"config file {path}: unknown key {key!r} (known: {known})")
        defaults[action.dest] = file_value(action, str(key).lstrip("-"), value, path)
        action.required = False
    p.set_defaults(**defaults)


def effective_settings(
    args: argparse.Namespace, parser: argparse.ArgumentParser | None = None
) -> dict:
    """The settings of a parsed command line, keyed as flags, ready to be a config file. With
    the job's parser, a setting whose dest differs from its flag is keyed by the flag (and a
    `--no-x` flag's value is whether it was given)."""
    actions = {}
    if parser is not None:
        actions = {a.dest: a for a in parser._actions if a.dest not in NOT_SETTINGS}
    settings = {}
    for k, v in vars(args).items():
        if k in NOT_SETTINGS or callable(v):
            continue
        action = actions.get(k)
        if action is None:
            settings[k.replace("_", "-")] = str(v) if isinstance(v, Path) else v
            continue
        if isinstance(action, argparse._StoreFalseAction):
            v = not v
        settings[flag_key(action)] = str(v) if isinstance(v, Path) else v
    return dict(sorted(settings.items()))


def job_settings(args: argparse.Namespace) -> dict:
    """The effective settings of a job's command line (what `--print-config` prints): the
    jobs record them in their output's `_meta.json`, where they can be fed back as --config."""
    from .cli import build_parser, subparser

    return effective_settings(args, subparser(build_parser(), args.command))


def config_record(config) -> dict:
    """What a job writes under `config` in `_meta.json`: the command line's effective settings
    (`job_settings`) when it was started from one, else its config's plain fields."""
    flags = getattr(config, "flags", None)
    if flags is not None:
        return dict(flags)
    plain = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "flags" or callable(value):
            continue
        plain[f.name] = asdict(value) if is_dataclass(value) else value
    return json.loads(json.dumps(plain, default=str))


def recorded_config(meta: dict | None) -> dict | None:
    """The settings the last run of an output folder recorded (see `config_record`)."""
    if not meta:
        return None
    if "config" in meta:  # train: one run folder, one set of settings
        return meta["config"]
    runs = [r for r in meta.get("runs") or [] if "config" in r]
    return runs[-1]["config"] if runs else None


def dump_settings(settings: dict) -> str:
    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
    return yaml.safe_dump(plain, sort_keys=True)
