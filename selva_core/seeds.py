"""Seeds derived from a clip's seed. Plain Python (no torch), so that light workers that
only route rows (the generation job's window assembler) can name a window's seed without
loading a model stack."""

from __future__ import annotations

import hashlib


def window_seed(clip_seed: int, index: int) -> int:
    """The sampling seed of window `index` of a clip seeded `clip_seed`.

    Window 0 keeps the clip's seed (a video no longer than one window generates exactly as an
    ordinary clip); the others take 63 bits of SHA-256 of "clip_seed:index", the same on
    every run, machine and Python version (unlike `hash`), and unrelated across windows.
    """
    if index < 0:
        raise ValueError(f"window index must be >= 0, got {index}")
    if index == 0:
        return int(clip_seed)
    digest = hashlib.sha256(f"selva-window:{int(clip_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
