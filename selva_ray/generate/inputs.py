"""The generation job's inputs: a catalog or a features folder made by `extract`, read by the
driver into plan rows (per-clip values from the catalog, else the job's flags), and what an
output folder already holds (finished clips, failed clips)."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from selva_core.sampling import SamplerConfig

from ..io.catalog import CatalogProblem, ClipRecord, resolve
from ..io.feature_schema import FeatureLayout
from ..io.identity import GENERATE_FIELDS, Redo, input_hash, plan_redo, stamp_rows
from ..io.names import clip_names, file_stem, source_name, span_suffix, with_id_digest
from ..io.output_dir import Finished, OutputDir
from ..io.windows import parent_of
from .config import GenerateConfig, GenerateInputError

log = logging.getLogger(__name__)

# ---- input ----------------------------------------------------------------------------------


def features_layout(uri: str) -> FeatureLayout | None:
    """The layout of an `extract` output folder, or None if `uri` is not one."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    meta = OutputDir(uri).read_meta()
    if not meta or "tensors" not in meta or "settings" not in meta:
        return None
    try:
        return FeatureLayout(**meta["settings"])
    except TypeError as exc:
        raise GenerateInputError(f"{uri}: unreadable feature settings in _meta.json") from exc


def feature_rows(uri: str) -> list[dict]:
    """One plan row per stored clip: its scalars and where its tensors are."""
    out = OutputDir(uri)
    rows = []
    columns = ["id", "source", "prompt", "negative_prompt", "seed", "start", "duration"]
    for path in out.part_files():
        for k, item in enumerate(_read(out, path, [*columns, "input_hash"])):
            item["feature_hash"] = item.pop("input_hash")
            rows.append({**item, "feature_file": path, "feature_row": k, "row": None})
    return name_feature_rows(rows)


def name_feature_rows(rows: list[dict]) -> list[dict]:
    """Readable output names of stored clips: the source relative to the folder all local
    sources share (the file's stem for URIs), '.s<start>' for a clip that starts later; a
    long video's windows share their video's name."""
    local = [os.path.dirname(r["source"]) for r in rows if "://" not in (r["source"] or "")]
    root = os.path.commonpath(local) if local else None
    wanted = {}
    for r in rows:
        parent = parent_of(r["id"])
        suffix = span_suffix(r["start"] or 0.0, None) if parent == r["id"] else ""
        wanted.setdefault(parent, source_name(r["source"] or "", root) + suffix)
    names = clip_names(list(wanted.items()))
    for r in rows:
        r["name"] = names[parent_of(r["id"])]
    return rows


def container_seconds(source: str) -> float | None:
    """A local file's length from its container header (None: not local, or unreadable)."""
    fs, path = resolve(source)
    if fs.type_name != "local":
        return None
    try:
        import av

        with av.open(path) as c:
            stream = c.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return c.duration / av.time_base
    except Exception:  # noqa: BLE001 - the decode stage reports it properly
        return None


def planned_durations(records: list[ClipRecord], max_duration: float) -> list[float]:
    """Expected duration of each clip, for grouping only: the manifest's, or what the
    container header of its local file leaves after its start (the decoder's exact value is
    used for generation). Each distinct file is probed once, however many rows use it."""
    sources = list(dict.fromkeys(r.source for r in records if r.duration is None))
    lengths: dict[str, float | None] = {}
    if sources:
        with ThreadPoolExecutor(8) as pool:
            lengths = dict(zip(sources, pool.map(container_seconds, sources), strict=True))
    out = []
    for r in records:
        if r.duration is not None:
            out.append(r.duration)
            continue
        total = lengths[r.source]
        out.append(
            max_duration if total is None else min(max_duration, max(total - r.start, 16 / 25))
        )
    return out


def read_catalog(config: GenerateConfig) -> tuple[list, list]:
    from ..validate import read_input_catalog

    return read_input_catalog(
        config.input,
        max_duration=config.max_duration,
        allow_roots=config.allow_roots,
        default_prompt=config.prompt,
        prompt_flag="--prompt",
        variant=config.variant,
    )


def defaults(row: dict, config: GenerateConfig) -> dict:
    """Per-clip values from the catalog (or stored features), else the job's flags."""
    return {
        "prompt": row.get("prompt") or config.prompt or "",
        "negative_prompt": row.get("negative_prompt")
        if row.get("negative_prompt") is not None
        else config.negative_prompt,
        "seed": int(row["seed"]) if row.get("seed") is not None else config.seed,
        "cfg": float(row["cfg"]) if row.get("cfg") is not None else config.cfg,
        "steps": int(row["steps"]) if row.get("steps") is not None else config.steps,
    }


def catalog_row(record: ClipRecord, config: GenerateConfig) -> dict:
    row = record.to_row()
    row.update(defaults(row, config))
    row["duration"] = record.duration or config.max_duration
    row["catalog_duration"] = record.duration  # None: to the video's end (maybe windows)
    return row


def hash_rows(rows: list[dict], config: GenerateConfig, features: bool) -> None:
    """Set each plan row's `input_hash` (after `defaults`): catalog input from its values,
    source file and mask (`identity.stamp_rows`); features input from its values and the
    stored row's own hash, the windows of one video sharing one hash (one result row)."""
    if not features:
        stamp_rows(
            rows, GENERATE_FIELDS, mask_strength=config.mask_strength, mask_paths=config.mask_paths
        )
        return
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        r["input_hash"] = input_hash(r, GENERATE_FIELDS, f"features:{r.get('feature_hash')}")
        by_video.setdefault(parent_of(r["id"]), []).append(r)
    for members in by_video.values():
        if len(members) > 1:
            members.sort(key=lambda r: r["id"])
            joint = input_hash({"windows": [m["input_hash"] for m in members]}, ["windows"], None)
            for m in members:
                m["input_hash"] = joint


def bad_settings(rows: list[dict]) -> list[CatalogProblem]:
    problems = []
    for r in rows:
        try:
            SamplerConfig(num_steps=r["steps"], cfg_strength=r["cfg"])
        except ValueError as exc:
            row = r["row"] if r.get("row") is not None else -1
            problems.append(
                CatalogProblem(r["id"], r["source"], row, str(exc), input_hash=r["input_hash"])
            )
    return problems


def finished_clips(
    out: OutputDir, mux: bool, wanted: dict[str, str | None]
) -> tuple[Redo, dict[str, str]]:
    """What the folder holds of `wanted` (id -> input hash now): done, failed before, and
    stale (made from another input: their files are deleted, then their rows, so a crash in
    between leaves rows without files, which the next run drops and redoes). Result rows
    whose file is gone are dropped, so those clips are done again (exactly once). Also
    returns the owner of each file stem kept (`name_owners`)."""
    listed = {}
    for folder in ("audio", "video"):
        try:
            infos = out.fs.get_file_info(pafs.FileSelector(out.path(folder), recursive=True))
            root = out.path(folder).rstrip("/") + "/"
            listed[folder] = {f"{folder}/{i.path[len(root) :]}" for i in infos}
        except FileNotFoundError:
            listed[folder] = set()
    finished: dict[str, Finished] = {}
    errors: dict[str, Finished] = {}
    files: dict[str, list[str]] = {}
    for path in out.part_files(errors=True):
        for item in _read(out, path, ["id", "input_hash"]):
            finished[item["id"]] = errors[item["id"]] = Finished("errors", item["input_hash"], path)
    missing = set()
    for path in out.part_files(kind="results"):
        for item in _read(out, path, ["id", "audio_path", "video_path", "input_hash"]):
            whole = item["audio_path"] in listed["audio"] and (
                not mux or (item["video_path"] or "") in listed["video"]
            )
            if not whole:
                missing.add(item["id"])
                continue
            finished[item["id"]] = Finished("results", item["input_hash"], path)
            files[item["id"]] = [p for p in (item["audio_path"], item["video_path"]) if p]
    missing -= {i for i, f in finished.items() if f.kind == "results"}
    if missing:
        log.info("%d result row(s) without their file: doing those clips again", len(missing))
        out.drop_rows("results", missing)
    redo = plan_redo(finished, wanted, "results")
    if redo.stale:
        for cid in sorted(redo.stale):
            for rel in files.get(cid, []):
                with contextlib.suppress(FileNotFoundError):
                    out.fs.delete_file(out.path(rel))
        results = {i: f for i, f in finished.items() if f.kind == "results"}
        removed = out.remove_ids(redo.stale, results) + out.remove_ids(redo.stale, errors)
        log.info(
            "%d clip(s) changed since their output was made: removed %d old row(s) and their "
            "files; doing them again",
            len(redo.stale),
            removed,
        )
    kept = {cid: rels for cid, rels in files.items() if cid not in redo.stale}
    return redo, name_owners(kept)


def name_owners(files: dict[str, list[str]]) -> dict[str, str]:
    """File stem (folder/stem, compared without case) -> the id whose files use it."""
    return {
        posixpath.splitext(rel.split("/", 1)[-1])[0].casefold(): cid
        for cid, rels in files.items()
        for rel in rels
    }


def claim_names(rows: list[dict], owners: dict[str, str]) -> None:
    """Give a row whose name is used by another clip's kept files (a video that left the
    catalog, an id that changed) a digest of its id, so no rerun overwrites another clip's
    file."""
    for r in rows:
        cid = parent_of(r["id"])
        owner = owners.get(file_stem(cid, r.get("name")).casefold())
        if owner is not None and owner != cid:
            r["name"] = with_id_digest(r.get("name") or file_stem(cid), cid)


def _read(out: OutputDir, path: str, columns: list[str]) -> list[dict]:
    """Rows of a part file, columns it lacks (written before they existed) as None."""
    names = pq.read_schema(path, filesystem=out.fs).names
    have = [c for c in columns if c in names]
    rows = pq.read_table(path, columns=have, filesystem=out.fs).to_pylist()
    return [{c: r.get(c) for c in columns} for r in rows]
