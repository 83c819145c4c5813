"""What is installed, against what the suite passed with: the lock (`constraints.txt`), the
versions `selva-ray doctor` prints, and the dependency closure the lock is made from.

The lock pins every package in the closure of `selva-ray[dev]` at the versions the suite
passed with, so a fresh machine next month installs the same set. Drift (a newer torchaudio,
say) then shows up as one failing check naming the package instead of a crash deep in a test.
Nothing here imports torch or Ray at module level: `doctor` must work on a broken install.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "selva-ray"
LOCK_NAME = "constraints.txt"
REPORTED = ("torch", "torchvision", "torchaudio", "ray", "pyarrow", "av", "transformers")


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def lock_path() -> Path | None:
    """The lock of a checkout (an editable install or a clone); None for a plain wheel."""
    path = repo_root() / LOCK_NAME
    return path if path.is_file() else None


def read_lock(path: Path) -> dict[str, str]:
    """`name==version` lines (comments and blanks ignored) as {canonical name: version}."""
    pins: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if not m:
            raise ValueError(f"{path}:{n}: expected 'name==version', got {raw!r}")
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def closure(root: str = PROJECT, extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    """Installed distributions that `root[extras]` needs on this machine, transitively, as
    {canonical name: installed version}. Requirements whose markers do not hold here are left
    out; a required package that is not installed maps to ''."""
    env = default_environment()
    found: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(root, extras)]
    seen: set[tuple[str, str]] = set()
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        for extra in ("", *wanted):
            if (key, extra) in seen:
                continue
            seen.add((key, extra))
            try:
                requires = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                found.setdefault(key, "")
                break
            found.setdefault(key, metadata.version(name))
            for text in requires:
                req = Requirement(text)
                if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
                    continue
                if req.marker is None and extra:
                    continue  # unconditional requirements were taken with extra ""
                todo.append((req.name, tuple(sorted(req.extras))))
    found.pop(canonicalize_name(root), None)
    return found


@dataclass(frozen=True)
class Drift:
    package: str
    locked: str | None  # None: not in the lock
    have: str | None  # None: not installed

    def line(self) -> str:
        if self.locked is None:
            return f"{self.package} {self.have} is installed and needed but not in {LOCK_NAME}"
        if self.have is None:
            return f"{self.package} is locked at {self.locked} but not installed"
        return f"{self.package} {self.have} is installed, the lock says {self.locked}"


def lock_drift(lock: dict[str, str], needed: dict[str, str]) -> list[Drift]:
    """Every needed package must be installed at its locked version (local labels such as
    +cu130 aside); locked packages that this platform does not need are not checked."""
    drifts = []
    for name, have in sorted(needed.items()):
        want = lock.get(name)
        if want is None or not have:
            drifts.append(Drift(name, want, have or None))
        elif Version(have).public != Version(want).public:
            drifts.append(Drift(name, want, have))
    return drifts


def installed_extras(root: str = PROJECT) -> tuple[str, ...]:
    """The extras of `root` whose requirements are all installed (an image without [dev] must
    not be told that pytest is missing)."""
    try:
        requires = metadata.requires(root) or []
    except metadata.PackageNotFoundError:
        return ()
    by_extra: dict[str, list[str]] = {}
    for text in requires:
        m = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", text)
        if m:
            by_extra.setdefault(m.group(1), []).append(Requirement(text).name)
    return tuple(sorted(e for e, names in by_extra.items() if all(installed(n) for n in names)))


def torchaudio_status() -> str:
    """'ok', or the one-line reason torchaudio's native library does not load."""
    from selva_core.compat import TorchaudioLoadError, torchaudio_functional

    try:
        torchaudio_functional()
    except TorchaudioLoadError as exc:
        return str(exc)
    return "ok"


def cuda_status() -> str:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken torch is what doctor reports
        return f"torch does not import: {exc}"
    if not torch.cuda.is_available():
        return f"not available (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} GPU(s): {', '.join(names)} (CUDA {torch.version.cuda})"


def report() -> tuple[list[str], bool]:
    """The lines `selva-ray doctor` prints, and whether everything is as locked."""
    lines = [f"selva-ray {installed(PROJECT) or '(not installed)'} at {repo_root()}"]
    for name in REPORTED:
        lines.append(f"  {name:<13} {installed(name) or 'not installed'}")
    lines.append(f"  {'open_clip':<13} {installed('open_clip_torch') or 'not installed'}")
    lines.append(f"CUDA: {cuda_status()}")
    audio = torchaudio_status()
    lines.append(f"torchaudio native library: {'loads' if audio == 'ok' else audio}")
    healthy = audio == "ok"
    path = lock_path()
    if path is None:
        lines.append(f"lock: no {LOCK_NAME} beside the package (not a checkout); not checked")
        return lines, healthy
    drifts = lock_drift(read_lock(path), closure(extras=installed_extras()))
    if drifts:
        lines.append(f"lock: {len(drifts)} package(s) differ from {path}:")
        lines += [f"  {d.line()}" for d in drifts]
        lines.append(f"  fix: python3 -m pip install -e '.[dev]' -c {LOCK_NAME}")
    else:
        lines.append(f"lock: every needed package matches {path}")
    return lines, healthy and not drifts


def lock_lines() -> list[str]:
    """The lock for this machine's installed closure (what scripts/update_lock.py writes)."""
    return [f"{name}=={version}" for name, version in sorted(closure().items()) if version]
