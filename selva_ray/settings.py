"""One declaration per setting.

A job's config dataclass declares each setting once, as a field made by `opt(...)`: its type
and default (the field), its flag, value parser (the `validate` type that also bounds it),
choices, help and group (`Opt`). From that one place come:

- the command line (`add_options`: one argparse flag per field, `dest` = the field's name);
- the config from a parsed command line (`from_args`);
- the keys of `--config` files and of `--print-config` / `_meta.json`'s `config` record (the
  flag names, `selva_ray.config_file`), parsed by the same rule as the flag: a file's
  `"false"` for a switch is false, `steps: abc` is one line naming the key and the file;
- the flag tables of the docs (`flag_table`).

Nothing here imports torch, Ray or pyarrow: the parser builds in milliseconds.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

AS_FIELD = object()  # Opt.cli_default: the flag's default is the field's

# How a flag sets its field:
VALUE = "value"  # --flag VALUE
SWITCH = "switch"  # --flag sets True (default False)
NEGATED = "negated"  # --no-x sets the field False (default True)
BOTH = "both"  # --x / --no-x
APPEND = "append"  # --flag VALUE, repeatable: a list


@dataclass(frozen=True)
class Opt:
    """How a config field is set from the command line and from config files."""

    help: str
    flag: str | None = None  # default: "--" + the field name with dashes
    type: Callable[[str], Any] | None = None  # parses (and bounds) a flag's text
    choices: tuple | None = None
    kind: str = VALUE
    metavar: str | None = None
    group: str | None = None  # argparse group title
    required: bool = False
    cli_default: Any = AS_FIELD  # the flag's default when it differs from the field's form
    convert: Callable[[Any], Any] | None = None  # the flag's value -> the field's value
    resumable: bool = False  # a resumed run may change it (where and how it runs, reports)
    output: bool = False  # the job's output depends on it: part of the folder's settings


def opt(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **kw) -> Any:
    """A dataclass field that is also a setting (see `Opt` for the keywords)."""
    meta = {"opt": Opt(**kw)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def options(cls) -> list[tuple[Field, Opt]]:
    """The settings of a config class: its own in declaration order, then inherited ones
    (shared groups of settings come after the job's own)."""
    own = set(vars(cls).get("__annotations__", {}))
    found = [f for f in fields(cls) if "opt" in f.metadata]
    found.sort(key=lambda f: f.name not in own)
    return [(f, f.metadata["opt"]) for f in found]


def flag_of(f: Field, o: Opt) -> str:
    if o.flag:
        return o.flag
    name = f.name.replace("_", "-")
    return f"--no-{name}" if o.kind == NEGATED else f"--{name}"


def resumable(cls) -> frozenset[str]:
    """The fields of `cls` a resumed run may change: settings declared `resumable`, and plain
    fields whose metadata says so (`field(metadata={"resumable": True})`)."""
    return frozenset(
        f.name
        for f in fields(cls)
        if f.metadata.get("resumable") or ("opt" in f.metadata and f.metadata["opt"].resumable)
    )


def output_record(config) -> dict:
    """The settings of `config` declared `output`, keyed as their flags with underscores
    (`--format` -> format, `--mask-paths` -> mask_paths), tuples as lists: the part of a
    folder's recorded settings that a rerun must match (the job adds what it derives)."""
    record = {}
    for f, o in options(type(config)):
        if o.output:
            value = getattr(config, f.name)
            key = flag_of(f, o).removeprefix("--").replace("-", "_")
            record[key] = list(value) if isinstance(value, tuple) else value
    return record


def field_default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def add_options(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = ()) -> None:
    """One argparse flag per setting of `cls` (groups made on first use)."""
    groups: dict[str, Any] = {}
    for f, o in options(cls):
        if f.name in skip:
            continue
        target = parser
        if o.group:
            if o.group not in groups:
                groups[o.group] = parser.add_argument_group(o.group)
            target = groups[o.group]
        kwargs: dict[str, Any] = {"dest": f.name, "help": o.help}
        default = field_default(f) if o.cli_default is AS_FIELD else o.cli_default
        if o.kind == SWITCH:
            kwargs.update(action="store_true")
        elif o.kind == NEGATED:
            kwargs.update(action="store_false")
        elif o.kind == BOTH:
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        elif o.kind == APPEND:
            kwargs.update(action="append", default=[], type=o.type)
        else:
            kwargs.update(type=o.type, default=default)
        if o.choices is not None:
            kwargs["choices"] = list(o.choices)
        if o.metavar:
            kwargs["metavar"] = o.metavar
        if o.required:
            kwargs["required"] = True
            kwargs.pop("default", None)
        target.add_argument(flag_of(f, o), **kwargs)


def from_args(cls, args: argparse.Namespace, **extra):
    """The config of a parsed command line: each setting from its flag (converted), plus
    `extra` fields that are no flag (the recorded flags, a thresholds object)."""
    values = {}
    for f, o in options(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        values[f.name] = o.convert(value) if o.convert else value
    return cls(**values, **extra)


TRUE_WORDS = {"true", "yes", "on", "1"}
FALSE_WORDS = {"false", "no", "off", "0"}


def parse_switch(value: Any) -> bool:
    """A switch's value from a config file: a boolean, or its usual words; else ValueError."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def flag_table(cls) -> list[tuple[str, str, str]]:
    """(flag, default, help) rows of a job's settings, for the docs."""
    rows = []
    for f, o in options(cls):
        default = field_default(f) if o.cli_default is AS_FIELD else o.cli_default
        shown = "" if default in (None, [], ()) or o.kind in (SWITCH, NEGATED) else default
        if isinstance(shown, tuple | list):
            shown = ",".join(map(str, shown))
        rows.append((flag_of(f, o), str(shown), o.help))
    return rows
