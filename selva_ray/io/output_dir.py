"""The output folder of a job, and its ledger.

Layout (local path or URI):

    DIR/_meta.json                           settings, schema, summaries of the runs
    DIR/part-<shard>-<digest>.parquet        features (extract), committed per shard
    DIR/results/part-<shard>-<digest>.parquet  one row per generated clip (generate)
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
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .catalog import resolve

log = logging.getLogger(__name__)

META = "_meta.json"
LEDGER = "_ledger"
STAGING = "_staging"
ERRORS = "errors"
TARGET_ROW_GROUP_BYTES = 64 << 20
# Table kind (the fragment name's prefix) -> its folder under DIR ("" is DIR itself).
KIND_FOLDERS = {"features": "", "results": "results", "errors": ERRORS}


class SettingsMismatchError(RuntimeError):
    """The folder already holds output made with other settings."""


@dataclass
class ShardCommit:
    shard: str
    files: list[str] = field(default_factory=list)
    ok: int = 0
    failed: int = 0


class OutputDir:
    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = resolve(uri)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

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
                f"{self.uri} holds output made with other settings: {', '.join(sorted(diff))} "
                f"differ {diff} (old, new); use another output folder"
            )
        if meta is None:
            self.write_meta({**layout_description, "runs": []})

    def record_run(self, summary: dict) -> None:
        meta = self.read_meta() or {}
        meta.setdefault("runs", []).append(summary)
        self.write_meta(meta)

    # ---- finished work ----------------------------------------------------------------------

    def folder(self, kind: str) -> str:
        sub = KIND_FOLDERS[kind]
        return self.path(sub) if sub else self.root

    def part_files(self, errors: bool = False, *, kind: str = "features") -> list[str]:
        """Committed part files of one table kind (`errors=True` is kind "errors")."""
        folder = self.folder(ERRORS if errors else kind)
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
        """Ids present in committed feature files (and error files)."""
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
        rewrites the same fragment instead of adding a duplicate.
        """
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
            if kind == ERRORS:
                result.failed += rows
            else:
                result.ok += rows
            target = self.folder(kind)
            if target != self.root:
                self.fs.create_dir(target, recursive=True)
            dest = f"{target}/part-{shard}-{digest}.parquet"
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

    def drop_rows(self, kind: str, ids: set[str]) -> int:
        """Remove rows with these ids from the committed part files of `kind`; each touched
        file is rewritten under its own name (hidden temp, then renamed), or deleted if empty."""
        dropped = 0
        for path in self.part_files(kind=kind):
            table = pq.read_table(path, filesystem=self.fs)
            keep = pc.invert(pc.is_in(table["id"], pa.array(sorted(ids), pa.string())))
            kept = table.filter(keep)
            if kept.num_rows == table.num_rows:
                continue
            dropped += table.num_rows - kept.num_rows
            if kept.num_rows == 0:
                self.fs.delete_file(path)
                continue
            tmp = f"{path.rsplit('/', 1)[0]}/.{uuid.uuid4().hex[:8]}.tmp"
            pq.write_table(kept, tmp, filesystem=self.fs, compression="zstd")
            self.fs.move(tmp, path)
        return dropped

    def put_file(self, local_path: str, rel: str) -> str:
        """Copy a local file to DIR/rel: written under a hidden name, renamed when whole."""
        import os
        import shutil

        final = self.path(rel)
        folder, name = final.rsplit("/", 1)
        self.fs.create_dir(folder, recursive=True)
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        if isinstance(self.fs, pafs.LocalFileSystem):
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, final)
            return final
        with open(local_path, "rb") as src, self.fs.open_output_stream(tmp) as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
        self.fs.move(tmp, final)
        return final

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def _write_bytes(self, path: str, data: bytes) -> None:
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, path)

    def _delete_dir(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(path)


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group so that a group holds about 64 MB: a good read unit for training."""
    if table.num_rows == 0:
        return 1
    per_row = max(1, table.nbytes // table.num_rows)
    return max(1, min(table.num_rows, TARGET_ROW_GROUP_BYTES // per_row))
