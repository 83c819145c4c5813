"""What a clip's output was computed from, as one digest per row: `input_hash`.

Every job stamps its rows (features, results, errors) with it, computed here and only here:
the catalog values the job uses (`EXTRACT_FIELDS`, `GENERATE_FIELDS`, `QA_FIELDS`), the
identity of the source file (size and modification time, one metadata call per file through
`pyarrow.fs`; no file is read) and the digest of the clip's mask. A rerun treats a clip as done
only when its committed row carries the hash the catalog gives it now (`plan_redo`); a changed
one is redone and its old row and files are removed first. Settings that hold for the whole
run (variant, adapters and their strengths, loudness, ...) are not here: `settings_hash` in
`_meta.json` covers them, and a folder made with other ones is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow.fs as pafs

from .catalog import IDENTITY_FIELDS, resolve

EXTRACT_FIELDS = IDENTITY_FIELDS  # source, prompt, negative prompt, start, duration, seed
GENERATE_FIELDS = (*IDENTITY_FIELDS, "cfg", "steps")  # after the job's defaults are applied
QA_FIELDS = ("source", "prompt", "negative_prompt", "start", "duration")
STAMP_THREADS = 16  # metadata calls in flight (object stores answer each in ~10-50 ms)


def source_stamp(uri: str) -> str:
    """`size:mtime_ns` of a file (local path or URI), "missing" when there is none: cheap
    (no content is read) and changed by any rewrite of the file."""
    try:
        fs, path = resolve(uri)
        info = fs.get_file_info(path)
    except (OSError, ValueError):
        return "missing"
    if info.type != pafs.FileType.File:
        return "missing"
    return f"{info.size}:{info.mtime_ns}"


def source_stamps(uris: Iterable[str]) -> dict[str, str]:
    """`source_stamp` of each distinct uri, looked up in parallel."""
    unique = sorted({u for u in uris if u})
    if len(unique) <= 1:
        return {u: source_stamp(u) for u in unique}
    with ThreadPoolExecutor(min(STAMP_THREADS, len(unique))) as pool:
        return dict(zip(unique, pool.map(source_stamp, unique), strict=True))


def mask_digest(source: str, strength: float, paths: Iterable[str]) -> str:
    """`MaskSettings.digest` of a mask path or URI (file content + strength + paths)."""
    from selva_core.video.mask import MaskSettings

    from .rows import local_copy

    with local_copy(source) as path:
        return MaskSettings(path, float(strength), tuple(paths)).digest()


def with_mask(input_hash: str, digest: str | None) -> str:
    """A clip's input hash, extended by its mask digest when it has a mask (unchanged
    otherwise)."""
    if not digest:
        return input_hash
    blob = json.dumps([input_hash, digest]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def input_hash(row: Mapping, fields: Iterable[str], stamp: str | None) -> str:
    """Digest of `row`'s `fields` and its source's `stamp`."""
    values = [[f, row.get(f)] for f in fields] + [["source_stamp", stamp]]
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stamp_rows(
    rows: list[dict],
    fields: Iterable[str],
    *,
    mask_strength: float = 1.0,
    mask_paths: Iterable[str] = ("clip", "sync"),
    stamps: Mapping[str, str] | None = None,
) -> list[dict]:
    """Set `input_hash` on plan rows (dicts with `source`, the `fields`, maybe `mask`).
    `stamps`: source -> stamp already known (e.g. stored features' own hashes)."""
    fields = tuple(fields)
    known = dict(stamps or {})
    known.update(source_stamps(r["source"] for r in rows if r.get("source") not in known))
    masks: dict[str, str] = {}  # each mask file is read once, however many rows use it
    for r in rows:
        digest = None
        if r.get("mask"):
            digest = masks.get(r["mask"])
            if digest is None:
                try:
                    digest = mask_digest(r["mask"], mask_strength, mask_paths)
                except Exception as exc:  # noqa: BLE001 - the decode stage names the problem
                    digest = f"unreadable:{exc}"
                masks[r["mask"]] = digest
        r["input_hash"] = with_mask(input_hash(r, fields, known.get(r.get("source"))), digest)
    return rows


@dataclass
class Redo:
    """A rerun's view of its catalog against what the folder holds: ids done (a main-table
    row of the current hash), failed before (an error row of the current hash), and stale
    (a row of another hash: removed, then computed again)."""

    done: set[str]
    failed: set[str]
    stale: set[str]


def plan_redo(finished: Mapping, wanted: Mapping[str, str | None], main: str) -> Redo:
    """Split `wanted` (id -> current input hash) by `finished` (`OutputDir.finished()`: id ->
    Finished(kind, input_hash, path)); `main` is the main table's kind. A row written before
    input hashes existed (hash None) counts as current."""
    redo = Redo(set(), set(), set())
    for cid, digest in wanted.items():
        done = finished.get(cid)
        if done is None:
            continue
        if done.input_hash is not None and digest is not None and done.input_hash != digest:
            redo.stale.add(cid)
        elif done.kind == main:
            redo.done.add(cid)
        else:
            redo.failed.add(cid)
    return redo
