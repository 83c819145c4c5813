"""What a run folder holds, read once for `report` and `inspect`: settings (`_meta.json`),
the results table (generate / qa), the error rows, and a training run's `metrics.jsonl` and
`eval/step_N/*.json` evaluator outputs."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from selva_core.qa import QAThresholds

from ..io.results_schema import read_results


class RunFolderError(ValueError):
    """The folder is not a run folder this version can read."""


@dataclass
class RunFolder:
    root: Path
    meta: dict = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    training: list[dict] = field(default_factory=list)  # metrics.jsonl rows
    evals: dict[int, dict] = field(default_factory=dict)  # step -> {metric: value}
    problems: list[str] = field(default_factory=list)  # unreadable lines / files, for the page

    @property
    def settings(self) -> dict:
        return self.meta.get("settings", {}) if isinstance(self.meta, dict) else {}

    @property
    def is_training(self) -> bool:
        return bool(self.training) or (self.root / "metrics.jsonl").exists()

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
        if "://" in path or os.path.isabs(path):
            return path
        return str(self.root / path)


def load_run(path: str | os.PathLike[str]) -> RunFolder:
    root = Path(path).expanduser()
    if "://" in str(path):
        raise RunFolderError(f"{path}: reports are built from a local run folder; copy it first")
    if not root.is_dir():
        raise RunFolderError(f"run folder {root} does not exist")
    run = RunFolder(root=root.resolve())
    meta_file = root / "_meta.json"
    if meta_file.exists():
        try:
            run.meta = json.loads(meta_file.read_text())
        except ValueError as exc:
            raise RunFolderError(f"{meta_file} is not valid JSON: {exc}") from None
    try:
        run.results = read_results(str(run.root)).to_pylist()
    except Exception as exc:  # noqa: BLE001 - any Arrow read error, in one line
        raise RunFolderError(f"cannot read {root}/results: {exc}") from None
    errors = sorted((root / "errors").glob("part-*.parquet")) if (root / "errors").is_dir() else []
    for f in errors:
        try:
            run.errors.extend(pq.read_table(f).to_pylist())
        except Exception as exc:  # noqa: BLE001 - any Arrow read error, in one line
            raise RunFolderError(f"{f} is not a readable Parquet file: {exc}") from None
    _load_training(run)
    if not (run.meta or run.results or run.errors or run.is_training):
        raise RunFolderError(
            f"{root} is not a run folder (no _meta.json, results/, errors/ or metrics.jsonl)"
        )
    return run


def _load_training(run: RunFolder) -> None:
    metrics = run.root / "metrics.jsonl"
    if metrics.exists():
        for n, line in enumerate(metrics.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if not isinstance(item, dict):
                    raise ValueError("not an object")
                run.training.append(item)
            except ValueError as exc:
                run.problems.append(f"metrics.jsonl line {n} skipped: {exc}")
    eval_root = run.root / "eval"
    if not eval_root.is_dir():
        return
    for folder in sorted(eval_root.iterdir()):
        m = re.fullmatch(r"step_(\d+)", folder.name)
        if not (folder.is_dir() and m):
            continue
        values: dict = {}
        files = sorted(folder.glob("*.json"))
        for f in files:
            try:
                data = json.loads(f.read_text())
            except ValueError as exc:
                run.problems.append(f"{f.relative_to(run.root)} skipped: {exc}")
                continue
            prefix = "" if len(files) == 1 else f"{f.stem}."
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
