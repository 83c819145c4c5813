"""Clip ids as file names: which ids a catalog may use, and the one id -> file-stem rule that
every job applies to the files it writes (tracks, dubbed videos, training previews)."""

from __future__ import annotations

import hashlib
import re

from ..errors import MAX_ID_BYTES

_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")
_PLAIN = re.compile(r"[^A-Za-z0-9._-]")
MAX_STEM = 120


def id_problem(clip_id: str) -> str | None:
    """Why a clip id cannot be used as a file name under an output folder (None: it can)."""
    if not clip_id.strip():
        return "id is empty"
    if _UNSAFE_ID.search(clip_id):
        return f"id {clip_id!r} contains '/', '\\' or a control character"
    if clip_id in (".", "..") or clip_id.startswith("."):
        return f"id {clip_id!r} starts with '.'"
    if len(clip_id.encode()) > MAX_ID_BYTES:
        return f"id is longer than {MAX_ID_BYTES} bytes ({clip_id[:24]}...)"
    return None


def file_stem(clip_id: str) -> str:
    """The file-name stem of a clip id: the id itself when it is plain ASCII, else a cleaned
    form plus a digest of the id (so two ids never share a file)."""
    clean = _PLAIN.sub("_", clip_id).lstrip(".") or "clip"
    if clean == clip_id and len(clip_id) <= MAX_STEM:
        return clip_id
    return f"{clean[:100]}-{hashlib.sha1(clip_id.encode()).hexdigest()[:10]}"
