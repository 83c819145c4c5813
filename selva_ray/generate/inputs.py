"""The generation job's inputs: a catalog or a features folder made by `extract`, read by the
driver into plan rows (per-clip values from the catalog, else the job's flags), and what an
output folder already holds (finished clips, failed clips)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from selva_core.sampling import SamplerConfig

from ..io.catalog import CatalogProblem, ClipRecord, resolve
from ..io.feature_schema import FeatureLayout
from ..io.output_dir import OutputDir
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
        table = pq.read_table(path, columns=columns, filesystem=out.fs)
        for k, item in enumerate(table.to_pylist()):
            rows.append({**item, "feature_file": path, "feature_row": k, "row": None})
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


def probe_duration(record: ClipRecord, max_duration: float) -> float:
    """`planned_durations` of one clip."""
    return planned_durations([record], max_duration)[0]


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


def bad_settings(rows: list[dict]) -> list[CatalogProblem]:
    problems = []
    for r in rows:
        try:
            SamplerConfig(num_steps=r["steps"], cfg_strength=r["cfg"])
        except ValueError as exc:
            row = r["row"] if r.get("row") is not None else -1
            problems.append(CatalogProblem(r["id"], r["source"], row, str(exc)))
    return problems


def finished_clips(out: OutputDir, mux: bool) -> tuple[set[str], set[str]]:
    """(ids with a committed result row whose files exist, ids with an error row). Result
    rows whose file is gone are dropped, so those clips are done again (exactly once)."""
    listed = {}
    for folder in ("audio", "video"):
        try:
            infos = out.fs.get_file_info(pafs.FileSelector(out.path(folder)))
            listed[folder] = {f"{folder}/{i.base_name}" for i in infos}
        except FileNotFoundError:
            listed[folder] = set()
    done, stale = set(), set()
    for path in out.part_files(kind="results"):
        table = pq.read_table(path, columns=["id", "audio_path", "video_path"], filesystem=out.fs)
        for item in table.to_pylist():
            whole = item["audio_path"] in listed["audio"] and (
                not mux or (item["video_path"] or "") in listed["video"]
            )
            (done if whole else stale).add(item["id"])
    stale -= done
    if stale:
        log.info("%d result row(s) without their file: doing those clips again", len(stale))
        out.drop_rows("results", stale)
    failed = set()
    for path in out.part_files(errors=True):
        failed.update(pq.read_table(path, columns=["id"], filesystem=out.fs)["id"].to_pylist())
    return done, failed - done
