"""What a run folder holds, read once for `report` and `inspect`: settings (`_meta.json`),
the results table (generate / qa), the error rows, and a training run's `metrics.jsonl` and
`eval/step_N/*.json` evaluator outputs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from selva_core.qa import QAThresholds

from ..io.catalog import plain_source, resolve, split_query, with_query
from ..io.results_schema import read_results

META = "_meta.json"


class RunFolderError(ValueError):
    """The folder is not a run folder this version can read."""


@dataclass
class RunFolder:
    """A run folder read through a pyarrow file system, so a local path and an `s3://` URI
    read the same way. `root` is what the user named it (an absolute local path, or the URI),
    `fs` and `path` are where its files are."""

    root: str
    fs: pafs.FileSystem = field(default_factory=pafs.LocalFileSystem)
    path: str = ""
    meta: dict = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    training: list[dict] = field(default_factory=list)  # metrics.jsonl rows
    evals: dict[int, dict] = field(default_factory=dict)  # step -> {metric: value}
    problems: list[str] = field(default_factory=list)  # unreadable lines / files, for the page

    def __post_init__(self) -> None:
        self.path = self.path or self.root

    @property
    def name(self) -> str:
        return self.root.rstrip("/").rsplit("/", 1)[-1] or self.root

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def settings(self) -> dict:
        return self.meta.get("settings", {}) if isinstance(self.meta, dict) else {}

    @property
    def is_training(self) -> bool:
        return bool(self.training) or self.exists("metrics.jsonl")

    def file(self, *parts: str) -> str:
        """Path of a file of the folder inside `fs`."""
        return "/".join([self.path.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.file(*parts)).type != pafs.FileType.NotFound

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.file(*parts)) as f:
            return f.read().decode("utf-8", errors="replace")

    def listing(self, *parts: str) -> list[pafs.FileInfo]:
        """Entries of a sub-folder, sorted by name (none when it does not exist)."""
        try:
            selector = pafs.FileSelector(self.file(*parts), allow_not_found=True)
            infos = self.fs.get_file_info(selector)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(infos, key=lambda i: i.base_name)

    def thresholds(self) -> QAThresholds:
        """The thresholds the run flagged with (from its settings), else the defaults."""
        s = self.settings
        raw = s.get("thresholds") or s.get("qa_thresholds")
        if isinstance(raw, dict):
            try:
                return QAThresholds.from_mapping(raw)
            except ValueError:
                pass
        return QAThresholds()

    def media_path(self, row: dict) -> str | None:
        """Absolute path (or URI) of what to listen to: the generated track, else the video."""
        for key in ("audio_path", "video_path"):
            value = row.get(key)
            if value:
                return self.resolve(value)
        return row.get("source") or None

    def resolve(self, path: str) -> str:
        """A path of the results table (relative to the run folder, absolute, or a URI) as an
        absolute local path or a URI."""
        if "://" in path or os.path.isabs(path):
            return path
        if "://" in self.root:  # a folder URI's endpoint query goes after the joined path
            root, query = split_query(self.root)
            return with_query(f"{root.rstrip('/')}/{path}", query)
        return os.path.join(self.root, path)


def source_root(rows: list[dict]) -> str | None:
    """The folder all local sources of a run share (None: none, or only URIs)."""
    folders = [os.path.dirname(plain_source(s)) for r in rows if (s := str(r.get("source") or ""))]
    local = [f for f in folders if "://" not in f and f.startswith("/")]
    return os.path.commonpath(local) if local and len(local) == len(folders) else None


def clip_name(row: dict, root: str | None = None) -> str:
    """What a person calls a clip: its source file's path under `root` (`source_root` of the
    run: `shows/ep1/scene3.mp4`), else its file name, with the start when the clip is a
    window of it (ids are hashes)."""
    source = plain_source(str(row.get("source") or "")).rstrip("/")
    if root and source.startswith(root.rstrip("/") + "/"):
        name = source[len(root.rstrip("/")) + 1 :]
    else:
        name = source.rsplit("/", 1)[-1]
    start = row.get("start")
    if name and isinstance(start, int | float) and start > 0:
        name += f" @{start:g} s"
    return name


def load_run(path: str | os.PathLike[str]) -> RunFolder:
    """Read a run folder (local path or URI) of generate, qa or train; anything else is a
    `RunFolderError` whose one line says what the folder is."""
    text = os.fspath(path)
    try:
        fs, fs_path = resolve(text)
    except OSError as exc:  # e.g. an s3:// URI whose bucket or credentials are wrong
        raise RunFolderError(
            f"cannot open run folder {text}: {' '.join(str(exc).split())}"
        ) from None
    root = text.rstrip("/") if "://" in text else fs_path
    run = RunFolder(root=root, fs=fs, path=fs_path.rstrip("/") or fs_path)
    try:
        info = fs.get_file_info(run.path)
    except OSError as exc:
        raise RunFolderError(
            f"cannot read run folder {root}: {' '.join(str(exc).split())}"
        ) from None
    if info.type == pafs.FileType.NotFound:
        raise RunFolderError(f"run folder {root} does not exist")
    if info.type != pafs.FileType.Directory:
        raise RunFolderError(f"run folder {root} is a file, not a folder")
    if run.exists(META):
        try:
            meta = json.loads(run.read_text(META))
        except ValueError as exc:
            raise RunFolderError(f"{run.resolve(META)} is not valid JSON: {exc}") from None
        run.meta = meta if isinstance(meta, dict) else {}
    _refuse_feature_folder(run)
    try:
        run.results = read_results(text).to_pylist()
    except Exception as exc:  # noqa: BLE001 - any Arrow read error, in one line
        raise RunFolderError(f"cannot read {root}/results: {exc}") from None
    for info in run.listing("errors"):
        if not _is_part(info):
            continue
        try:
            run.errors.extend(pq.read_table(info.path, filesystem=fs).to_pylist())
        except Exception as exc:  # noqa: BLE001 - any Arrow read error, in one line
            raise RunFolderError(
                f"{root}/errors/{info.base_name} is not a readable Parquet file: {exc}"
            ) from None
    _load_training(run)
    if not (run.meta or run.results or run.errors or run.is_training):
        raise RunFolderError(
            f"{root} is not a run folder (no _meta.json, results/, errors/ or metrics.jsonl)"
        )
    return run


def _is_part(info: pafs.FileInfo) -> bool:
    return (
        info.type == pafs.FileType.File
        and info.base_name.startswith("part-")
        and info.base_name.endswith(".parquet")
    )


def _refuse_feature_folder(run: RunFolder) -> None:
    """An extract folder (features as part files at its top, `tensors` in `_meta.json`) holds
    no results table; say so rather than report "0 clips" about it."""
    parts = [i for i in run.listing() if _is_part(i)]
    if not (parts or "tensors" in run.meta):
        return
    rows = 0
    for info in parts:
        with contextlib.suppress(Exception):  # a broken part file does not change the answer
            rows += pq.read_metadata(info.path, filesystem=run.fs).num_rows
    failed = sum(int(r.get("failed") or 0) for r in run.meta.get("runs") or [])
    raise RunFolderError(
        f"{run.root} is an extract (features) folder, not a run folder: {rows} clips of "
        f"features in {len(parts)} part files ({failed} failed in its runs); report and "
        "inspect read the output folder of generate, qa or train "
        f"(train on it with `selva-ray train --features {run.root}`)"
    )


def _load_training(run: RunFolder) -> None:
    if run.exists("metrics.jsonl"):
        for n, line in enumerate(run.read_text("metrics.jsonl").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if not isinstance(item, dict):
                    raise ValueError("not an object")
                run.training.append(item)
            except ValueError as exc:
                run.problems.append(f"metrics.jsonl line {n} skipped: {exc}")
    for folder in run.listing("eval"):
        m = re.fullmatch(r"step_(\d+)", folder.base_name)
        if not (folder.type == pafs.FileType.Directory and m):
            continue
        values: dict = {}
        files = [
            i
            for i in run.listing("eval", folder.base_name)
            if i.type == pafs.FileType.File and i.base_name.endswith(".json")
        ]
        for f in files:
            rel = f"eval/{folder.base_name}/{f.base_name}"
            try:
                data = json.loads(run.read_text(rel))
            except ValueError as exc:
                run.problems.append(f"{rel} skipped: {exc}")
                continue
            prefix = "" if len(files) == 1 else f"{f.base_name[: -len('.json')]}."
            values.update(_numbers(data, prefix))
        if values:
            run.evals[int(m.group(1))] = values


def _numbers(data, prefix: str = "") -> dict[str, float]:
    """Flattened numeric leaves of a JSON object (`a.b` keys)."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(data, bool):
        pass
    elif isinstance(data, int | float) and math.isfinite(data):
        out[prefix.rstrip(".")] = float(data)
    return out


# ---- ranking ----------------------------------------------------------------------------------


def severity_key(row: dict, target_lufs: float | None = -23.0) -> tuple:
    """Sort key, worst first: number of flags, then |DeSync|, clipped share, silent share,
    distance from the loudness target, true peak; ties by id."""

    def num(name: str) -> float:
        v = row.get(name)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else 0.0

    lufs = row.get("loudness_lufs")
    off = abs(lufs - target_lufs) if lufs is not None and target_lufs is not None else 0.0
    return (
        -len(row.get("qa_flags") or []),
        -abs(num("desync_s")),
        -num("clipped_ratio"),
        -num("silence_ratio"),
        -off,
        -num("true_peak_dbtp"),
        str(row.get("id")),
    )


def rank_clips(run: RunFolder) -> list[dict]:
    """The run's results rows, worst first (flagged clips before the rest)."""
    target = run.thresholds().target_lufs
    return sorted(run.results, key=lambda r: severity_key(r, target))
