"""The output folder of a batch job, and its ledger.

Layout (local path or URI):

    DIR/_meta.json                           settings, schema, summaries of the runs
    DIR/part-<shard>-<digest>.parquet        features (extract), committed per shard
    DIR/results/part-<shard>-<digest>.parquet  per-clip results (generate, qa)
    DIR/errors/part-<shard>-<digest>.parquet bad items (id, source, row, stage, message)
    DIR/_ledger/<shard>.json                 success marker of a committed shard
    DIR/_staging/<shard>/*.frag              fragments of shards in flight (invisible)

Workers write fragments (hidden name, then renamed to `.frag`, so a fragment is either whole
or absent); the driver commits a shard once every clip of it is accounted for by renaming its
fragments into place and writing the marker last. Which clips are finished is read from the
visible Parquet files themselves, so deleting part files makes a rerun redo exactly those
clips. After a crash, fragments that were fully written are committed on the next start: an
interruption loses only the blocks that were in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .catalog import resolve

log = logging.getLogger(__name__)

META = "_meta.json"
LEDGER = "_ledger"
STAGING = "_staging"
ERRORS = "errors"
RESULTS = "results"
# kind of a job's main table -> its folder under DIR ("" = DIR itself); fragments of any of
# these kinds count as finished clips, fragments of kind "errors" as failed ones
DATA_FOLDERS = {"features": "", "results": RESULTS}
TARGET_ROW_GROUP_BYTES = 64 << 20


class SettingsMismatchError(RuntimeError):
    """The folder already holds output made with other settings."""


@dataclass
class ShardCommit:
    shard: str
    files: list[str] = field(default_factory=list)
    ok: int = 0
    failed: int = 0


class OutputDir:
    """`kind` names the job's main table ("features" for extract, "results" for generate and
    qa): where `part_files()` and `finished_ids()` look."""

    def __init__(self, uri: str, kind: str = "features"):
        if kind not in DATA_FOLDERS:
            raise ValueError(f"unknown output kind {kind!r}; known: {sorted(DATA_FOLDERS)}")
        self.uri = uri
        self.kind = kind
        self.fs, self.root = resolve(uri)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p for p in parts if p)])

    # ---- settings -------------------------------------------------------------------------

    def read_meta(self) -> dict | None:
        try:
            with self.fs.open_input_stream(self.path(META)) as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None

    def write_meta(self, meta: dict) -> None:
        self._write_bytes(self.path(META), json.dumps(meta, indent=1, sort_keys=True).encode())

    def claim(self, layout_description: dict) -> None:
        """Record the run's settings, or refuse a folder made with different ones."""
        self.fs.create_dir(self.root, recursive=True)
        meta = self.read_meta()
        if meta is not None and meta.get("settings_hash") != layout_description["settings_hash"]:
            old, new = meta.get("settings", {}), layout_description["settings"]
            diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
            raise SettingsMismatchError(
                f"{self.uri} holds {self.kind} made with other settings {diff} (old, new); "
                "use another output folder"
            )
        if meta is None:
            self.write_meta({**layout_description, "runs": []})

    def record_run(self, summary: dict) -> None:
        meta = self.read_meta() or {}
        meta.setdefault("runs", []).append(summary)
        self.write_meta(meta)

    # ---- finished work ----------------------------------------------------------------------

    def part_files(self, errors: bool = False) -> list[str]:
        folder = self.path(ERRORS if errors else DATA_FOLDERS[self.kind])
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(folder, recursive=False))
        except FileNotFoundError:
            return []
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.startswith("part-")
            and i.base_name.endswith(".parquet")
        )

    def finished_ids(self, include_errors: bool = True) -> set[str]:
        """Ids present in committed files of the main table (and error files)."""
        files = self.part_files() + (self.part_files(errors=True) if include_errors else [])
        done: set[str] = set()
        for path in files:
            done.update(pq.read_table(path, columns=["id"], filesystem=self.fs)["id"].to_pylist())
        return done

    def clear_errors(self) -> int:
        files = self.part_files(errors=True)
        for path in files:
            self.fs.delete_file(path)
        return len(files)

    # ---- writing ------------------------------------------------------------------------------

    def stage(self, shard: str, kind: str, table: pa.Table) -> str:
        """Write one fragment of a shard; it appears under its final name only when whole.

        The name is a digest of the fragment's ids: a task that Ray retries after a node loss
        rewrites the same fragment instead of adding a duplicate. `kind` is "errors" or a
        key of DATA_FOLDERS.
        """
        if kind != ERRORS and kind not in DATA_FOLDERS:
            raise ValueError(f"unknown fragment kind {kind!r}")
        folder = self.path(STAGING, shard)
        self.fs.create_dir(folder, recursive=True)
        digest = hashlib.sha1("\n".join(sorted(table["id"].to_pylist())).encode()).hexdigest()
        name = f"{kind}-{digest[:16]}"
        tmp, final = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp", f"{folder}/{name}.frag"
        pq.write_table(
            table,
            tmp,
            filesystem=self.fs,
            row_group_size=row_group_rows(table),
            compression="zstd",
        )
        self.fs.move(tmp, final)
        return final

    def commit(self, shard: str, *, recovered: bool = False) -> ShardCommit:
        """Move a shard's fragments into place, then write its success marker."""
        folder = self.path(STAGING, shard)
        try:
            frags = sorted(
                i.path
                for i in self.fs.get_file_info(pafs.FileSelector(folder))
                if i.base_name.endswith(".frag")
            )
        except FileNotFoundError:
            frags = []
        result = ShardCommit(shard)
        for frag in frags:
            kind, digest = frag.rsplit("/", 1)[-1].removesuffix(".frag").split("-", 1)
            rows = pq.read_metadata(frag, filesystem=self.fs).num_rows
            if kind in DATA_FOLDERS:
                result.ok += rows
                self.fs.create_dir(self.path(DATA_FOLDERS[kind]), recursive=True)
                dest = self.path(DATA_FOLDERS[kind], f"part-{shard}-{digest}.parquet")
            else:
                result.failed += rows
                self.fs.create_dir(self.path(ERRORS), recursive=True)
                dest = self.path(ERRORS, f"part-{shard}-{digest}.parquet")
            self.fs.move(frag, dest)
            result.files.append(dest)
        marker = {
            "shard": shard,
            "files": [f.rsplit("/", 1)[-1] for f in result.files],
            "ok": result.ok,
            "failed": result.failed,
            "recovered": recovered,
            "committed_at": time.time(),
        }
        self.fs.create_dir(self.path(LEDGER), recursive=True)
        self._write_bytes(self.path(LEDGER, f"{shard}.json"), json.dumps(marker).encode())
        self._delete_dir(folder)
        return result

    def recover(self) -> list[ShardCommit]:
        """Commit whole fragments left by an interrupted run; drop partial writes."""
        try:
            shards = [
                i.base_name
                for i in self.fs.get_file_info(pafs.FileSelector(self.path(STAGING)))
                if i.type == pafs.FileType.Directory
            ]
        except FileNotFoundError:
            return []
        commits = [self.commit(shard, recovered=True) for shard in sorted(shards)]
        self._delete_dir(self.path(STAGING))
        if commits:
            log.info("recovered %d shard(s) of an interrupted run", len(commits))
        return commits

    def _write_bytes(self, path: str, data: bytes) -> None:
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, path)

    def _delete_dir(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(path)


class ShardTracker:
    """Driver side of a sharded job: count the status rows that come back from the writer and
    commit each shard once all of its clips are accounted for."""

    def __init__(self, out: OutputDir, expected: Counter):
        self.out = out
        self.expected = expected
        self.seen: Counter = Counter()
        self.committed: set[str] = set()
        self.ok = 0
        self.failed: Counter = Counter()  # by stage

    @property
    def done(self) -> int:
        return self.ok + sum(self.failed.values())

    def add(self, shard: str, status: str, stage: str) -> None:
        self.seen[shard] += 1
        if status == "ok":
            self.ok += 1
        else:
            self.failed[stage] += 1
        if self.seen[shard] == self.expected[shard] and shard not in self.committed:
            commit = self.out.commit(shard)
            self.committed.add(shard)
            log.info("committed shard %s: %d ok, %d failed", shard, commit.ok, commit.failed)

    def finish(self) -> None:
        """Commit shards that lost rows upstream with what was written, then clean up."""
        for shard in sorted(set(self.expected) - self.committed):
            log.warning(
                "shard %s saw %d/%d clips; committing what was written",
                shard,
                self.seen[shard],
                self.expected[shard],
            )
            self.out.commit(shard)
            self.committed.add(shard)
        self.out.recover()


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group so that a group holds about 64 MB: a good read unit for training."""
    if table.num_rows == 0:
        return 1
    per_row = max(1, table.nbytes // table.num_rows)
    return max(1, min(table.num_rows, TARGET_ROW_GROUP_BYTES // per_row))
