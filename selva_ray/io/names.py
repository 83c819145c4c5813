"""Clip ids and output names as file names: which ids a catalog may use, the readable name of
each clip (`clip_names`: its source path relative to the catalog's root), and the one
clip -> file-stem rule that every job applies to the files it writes (tracks, dubbed videos,
training previews, report images)."""

from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata

from ..errors import MAX_ID_BYTES

_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")
_PLAIN = re.compile(r"[^A-Za-z0-9._-]")
_UNSAFE_PART = re.compile(r"[\\:*?\"<>|\x00-\x1f\x7f]")  # not in a name on any common system
_WINDOW = re.compile(r"^(.*)#w(\d+)$")
MAX_STEM = 120
MAX_PART = 100  # bytes-ish cap of one path segment (file systems allow 255 bytes)


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


def file_stem(clip_id: str, name: str | None = None) -> str:
    """The file-name stem (relative path, no extension) of a clip's outputs.

    With `name` (the catalog's readable name, `clip_names`): that name, each folder of it made
    safe, so `shows/ep1/scene3.mp4` gives `shows/ep1/scene3`. Without: the id itself when it is
    plain ASCII, a window row's id as `<id>.w003`, else a cleaned form plus a digest of the id
    (so two ids never share a file)."""
    if name:
        parts = [_safe_part(p) for p in name.split("/") if p not in ("", ".", "..")]
        if parts:
            return "/".join(parts)
    window = _WINDOW.match(clip_id)
    if window:
        return f"{file_stem(window.group(1))}.w{window.group(2)}"
    clean = _PLAIN.sub("_", clip_id).lstrip(".") or "clip"
    if clean == clip_id and len(clip_id) <= MAX_STEM:
        return clip_id
    return f"{clean[:100]}-{_digest(clip_id)}"


def _safe_part(part: str) -> str:
    """One folder or file name: unsafe characters as '_', no leading dot, not too long."""
    part = unicodedata.normalize("NFC", part)
    clean = _UNSAFE_PART.sub("_", part).strip().lstrip(".") or "clip"
    if len(clean.encode()) > MAX_PART:
        clean = f"{clean[:40]}-{_digest(part)}"
    return clean


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def span_suffix(start: float, duration: float | None) -> str:
    """'.s12.5-d8' for a clip that starts later or has its own length ('' for a whole video)."""
    parts = []
    if start:
        parts.append(f"s{start:g}")
    if duration is not None:
        parts.append(f"d{duration:g}")
    return "." + "-".join(parts) if parts else ""


def source_name(source: str, root: str | None) -> str:
    """A source path (or URI) relative to `root` without its extension; the file's own stem
    when it lies outside `root` (or there is none)."""
    path = source.split("://", 1)[-1]
    stem = posixpath.splitext(path)[0]
    if root:
        base = root.split("://", 1)[-1].rstrip("/") + "/"
        if path.startswith(base):
            return stem[len(base) :]
    return posixpath.basename(stem)


def with_id_digest(name: str, clip_id: str) -> str:
    """`name` made unique by a digest of the clip's id (where names would share a file)."""
    return f"{name}-{_digest(clip_id)[:8]}"


def clip_names(items: list[tuple[str, str]]) -> dict[str, str]:
    """(id, readable name) pairs -> id -> the name its files take: the name itself, plus a
    digest of the id only where two names would share a file (compared as the file system
    may: without case)."""
    stems = {cid: file_stem(cid, name) for cid, name in items}
    count: dict[str, int] = {}
    for stem in stems.values():
        count[stem.casefold()] = count.get(stem.casefold(), 0) + 1
    return {
        cid: name if count[stems[cid].casefold()] == 1 else with_id_digest(name, cid)
        for cid, name in items
    }
