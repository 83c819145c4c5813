"""Guarded imports of native libraries whose builds must match torch exactly.

torchaudio ships a native library compiled against one torch release: torchaudio 2.11.1 next to
torch 2.11.0 fails at import with an undefined-symbol OSError from deep inside the package. Every
use of torchaudio in this project goes through `torchaudio_functional()`, so a mismatched install
fails with one line that names both versions and the fix instead of a raw OSError.
"""

from __future__ import annotations

import functools
from importlib import metadata

# The torch family as pinned in pyproject.toml and constraints.txt (a test keeps them equal).
TORCH_STACK = {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0"}
FIX = (
    'python3 -m pip install -c constraints.txt "torch==2.11.0" "torchvision==0.26.0" '
    '"torchaudio==2.11.0" (from the selva-ray checkout; `selva-ray doctor` checks the result)'
)


class TorchaudioLoadError(ImportError):
    """torchaudio is missing, or its native library does not load with the installed torch."""


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def torchaudio_problem(exc: BaseException) -> str:
    """One line naming what is installed, what is needed, and the command that fixes it."""
    have = {name: installed_version(name) or "not installed" for name in TORCH_STACK}
    need = ", ".join(f"{k}=={v}" for k, v in TORCH_STACK.items())
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (
        f"torchaudio {have['torchaudio']} does not load with torch {have['torch']} "
        f"({type(exc).__name__}: {first}); selva-ray needs {need}: run {FIX}"
    )


@functools.cache
def torchaudio_functional():
    """`torchaudio.functional`, or a TorchaudioLoadError that says how to fix the install."""
    try:
        import torchaudio.functional as functional
    except (ImportError, OSError) as exc:
        raise TorchaudioLoadError(torchaudio_problem(exc)) from exc
    return functional
