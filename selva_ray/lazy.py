"""Lazy exports of a package: the light names (settings) import at once, the job's heavy
modules (torch, Ray, pyarrow) on first use, so the command line's parser stays fast."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that imports `names[attr]` (a submodule of `package`) on first
    access of `attr` and returns the attribute."""

    def __getattr__(attr: str):
        if attr in names:
            return getattr(importlib.import_module(f"{package}.{names[attr]}"), attr)
        raise AttributeError(f"module {package!r} has no attribute {attr!r}")

    return __getattr__
