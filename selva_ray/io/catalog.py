"""Video catalogs: a folder of videos (with optional prompts.txt) or a manifest table.

Every clip gets a stable id (the manifest's, or a hash of source + start + duration) so reruns
skip finished clips and joins between feature sets are exact. Paths and URIs (local, s3://,
gs://, file://) go through `pyarrow.fs`, so the same catalog works on a laptop and a cluster.
Rows that cannot run (no video, bad numbers, duplicate ids) are returned as catalog errors
instead of stopping the job.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".json", ".parquet")
PROMPTS_FILE = "prompts.txt"
MANIFEST_COLUMNS = (
    "video",
    "prompt",
    "id",
    "negative_prompt",
    "start",
    "duration",
    "seed",
    "cfg",
    "steps",
)


class CatalogError(ValueError):
    """The catalog as a whole cannot be read (missing folder, unreadable manifest)."""


@dataclass(frozen=True)
class ClipRecord:
    id: str
    source: str  # absolute path or URI
    prompt: str
    negative_prompt: str | None = None
    start: float = 0.0
    duration: float | None = None  # None: the job's max duration
    seed: int | None = None
    cfg: float | None = None  # generation only; None: the job's --cfg
    steps: int | None = None  # generation only; None: the job's --steps
    row: int = -1  # manifest row (0-based) or listing index, for error messages

    def to_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CatalogProblem:
    """A catalog row that cannot run; it goes to the errors table with stage 'catalog'."""

    id: str
    source: str
    row: int
    message: str


def clip_id(source: str, start: float, duration: float | None) -> str:
    """Deterministic id from what defines the clip (16 hex chars of SHA-1)."""
    key = json.dumps([source, round(float(start), 6), duration], separators=(",", ":"))
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """File system and path for a local path or URI."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):
        return pafs.LocalFileSystem(), _abspath(uri)


def _abspath(path: str) -> str:
    import os

    return os.path.abspath(os.path.expanduser(path))


def _is_uri(text: str) -> bool:
    return "://" in text


def _join(base: str, rel: str) -> str:
    """`rel` against the folder `base` (both may be URIs); absolute `rel` wins."""
    if _is_uri(rel) or rel.startswith("/"):
        return rel
    if _is_uri(base):
        scheme, _, rest = base.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, rel))}"
    return posixpath.normpath(posixpath.join(base, rel))


def _display(fs: pafs.FileSystem, path: str, original: str) -> str:
    """The source string stored with a clip: a local absolute path, or a URI."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    return f"{original.partition('://')[0]}://{path}"


def fallback_prompt(source: str) -> str:
    """The parent folder's name, with '_' and '-' read as spaces."""
    parent = posixpath.basename(posixpath.dirname(source.rstrip("/")))
    return " ".join(parent.replace("_", " ").replace("-", " ").split())


def parse_prompts_file(text: str) -> dict[str, str]:
    """`filename: description` lines; `#` comments and blank lines are skipped."""
    prompts = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, prompt = line.split(":", 1)
        prompts[name.strip()] = prompt.strip()
    return prompts


def read_catalog(
    source: str, *, max_duration: float = 8.0
) -> tuple[list[ClipRecord], list[CatalogProblem]]:
    """Clips of a folder or manifest (path or URI), and the rows that cannot run."""
    fs, path = resolve(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise CatalogError(f"catalog {source} does not exist")
    if info.type == pafs.FileType.Directory:
        records, problems = _read_folder(fs, path, source), []
    elif path.lower().endswith(MANIFEST_EXTENSIONS):
        records, problems = _read_manifest(fs, path, source)
    else:
        raise CatalogError(
            f"{source} is neither a folder nor a manifest ({', '.join(MANIFEST_EXTENSIONS)})"
        )
    return _validate(records, problems, max_duration)


def _read_folder(fs: pafs.FileSystem, root: str, original: str) -> list[ClipRecord]:
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
    prompt_files = {
        posixpath.dirname(p): parse_prompts_file(_read_text(fs, p))
        for p in files
        if posixpath.basename(p) == PROMPTS_FILE
    }
    records = []
    for index, path in enumerate(p for p in files if p.lower().endswith(VIDEO_EXTENSIONS)):
        source = _display(fs, path, original)
        records.append(
            ClipRecord(
                id=clip_id(source, 0.0, None),
                source=source,
                prompt=_folder_prompt(path, prompt_files),
                row=index,
            )
        )
    return records


def _folder_prompt(path: str, prompt_files: dict[str, dict[str, str]]) -> str:
    """The nearest prompts.txt (this folder, then its parents) naming the file decides."""
    folder = posixpath.dirname(path)
    while True:
        table = prompt_files.get(folder)
        if table:
            rel = posixpath.relpath(path, folder)
            name = posixpath.basename(path)
            for key in (rel, name, posixpath.splitext(rel)[0], posixpath.splitext(name)[0]):
                if key in table:
                    return table[key]
        parent = posixpath.dirname(folder)
        if parent == folder:
            return fallback_prompt(path)
        folder = parent


def _read_text(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def _read_manifest(
    fs: pafs.FileSystem, path: str, original: str
) -> tuple[list[ClipRecord], list[CatalogProblem]]:
    rows, columns = _read_rows(fs, path, original)
    if "video" not in columns:
        raise CatalogError(f"manifest {original} has no 'video' column (columns: {columns})")
    unknown = sorted(set(columns) - set(MANIFEST_COLUMNS))
    if unknown:
        raise CatalogError(
            f"manifest {original}: unknown columns {unknown}; expected {list(MANIFEST_COLUMNS)}"
        )
    local = isinstance(fs, pafs.LocalFileSystem)
    base = posixpath.dirname(path) if local else original.rsplit("/", 1)[0]
    records, problems = [], []
    for row, item in enumerate(rows):
        if "error" in item:
            problems.append(CatalogProblem(f"row-{row}", "", row, item["error"]))
            continue
        video = item.get("video")
        if not isinstance(video, str) or not video.strip():
            problems.append(CatalogProblem(_row_id(item, row), "", row, "row has no 'video' value"))
            continue
        source = _local_source(_join(base, video.strip()))
        try:
            start = _number(item.get("start"), 0.0, "start")
            duration = _number(item.get("duration"), None, "duration")
            seed = None if item.get("seed") in (None, "") else int(item["seed"])
            cfg = _number(item.get("cfg"), None, "cfg")
            steps = None if item.get("steps") in (None, "") else int(item["steps"])
        except (TypeError, ValueError) as exc:
            problems.append(CatalogProblem(_row_id(item, row), source, row, str(exc)))
            continue
        raw_id = item.get("id")
        records.append(
            ClipRecord(
                id=str(raw_id) if raw_id not in (None, "") else clip_id(source, start, duration),
                source=source,
                prompt="" if item.get("prompt") is None else str(item["prompt"]),
                negative_prompt=item.get("negative_prompt") or None,  # empty cell: not given
                start=start,
                duration=duration,
                seed=seed,
                cfg=cfg,
                steps=steps,
                row=row,
            )
        )
    return records, problems


def _row_id(item: dict, row: int) -> str:
    """An id for a row that cannot be parsed: its own, or one naming the row."""
    return str(item["id"]) if item.get("id") not in (None, "") else f"row-{row}"


def _number(value, default, name: str):
    if value is None or value == "":
        return default
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} is not a finite number: {value!r}")
    return x


def _read_rows(fs: pafs.FileSystem, path: str, original: str) -> tuple[list[dict], list[str]]:
    """Manifest rows as dicts and the column names. JSONL is parsed line by line, so one bad
    line becomes that row's problem (`{"error": ...}`) instead of failing the catalog."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            table = pq.read_table(path, filesystem=fs)
            return table.to_pylist(), table.column_names
        if lower.endswith(".csv"):
            # every column as strings: ids like 007 must not become numbers
            with fs.open_input_stream(path) as f:
                table = pacsv.read_csv(
                    f, convert_options=pacsv.ConvertOptions(column_types=_string_types(fs, path))
                )
            return table.to_pylist(), table.column_names
        rows, columns = [], {}
        for line in _read_text(fs, path).splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if not isinstance(item, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                rows.append({"error": f"line {len(rows) + 1} is not a JSON object: {exc}"})
                continue
            rows.append(item)
            columns.update(dict.fromkeys(item))
        return rows, list(columns)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read manifest {original}: {exc}") from exc


def _local_source(source: str) -> str:
    """file:// URIs as plain absolute paths, so a clip's id does not depend on the spelling."""
    return source[len("file://") :] if source.startswith("file://") else source


def _string_types(fs: pafs.FileSystem, path: str) -> dict:
    with fs.open_input_stream(path) as f:
        header = f.read(1 << 16).decode("utf-8", errors="replace").splitlines()[0]
    return {name.strip(): pa.string() for name in header.split(",")}


def _validate(
    records: Iterable[ClipRecord], problems: list[CatalogProblem], max_duration: float
) -> tuple[list[ClipRecord], list[CatalogProblem]]:
    ok: list[ClipRecord] = []
    seen: dict[str, int] = {}
    for r in records:
        reason = None
        if r.id in seen:
            problems.append(
                CatalogProblem(
                    f"{r.id}@row{r.row}",
                    r.source,
                    r.row,
                    f"duplicate id {r.id!r} (first used by row {seen[r.id]})",
                )
            )
            continue
        if r.start < 0:
            reason = f"start must be >= 0, got {r.start}"
        elif r.duration is not None and not 0 < r.duration <= max_duration:
            reason = f"duration must be in (0, {max_duration}], got {r.duration}"
        if reason:
            problems.append(CatalogProblem(r.id, r.source, r.row, reason))
            continue
        seen[r.id] = r.row
        ok.append(r)
    return ok, problems
