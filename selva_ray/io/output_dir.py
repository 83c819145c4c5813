"""The output folder of a batch job, and its ledger.

Layout (local path or URI):

    DIR/_meta.json                           settings, schema, summaries of the runs
    DIR/part-<shard>-<digest>.parquet        features (extract), committed per shard
    DIR/results/part-<shard>-<digest>.parquet  per-clip results (generate, qa)
    DIR/errors/part-<shard>-<digest>.parquet bad items (id, source, row, stage, message)
    DIR/_ledger/<shard>.json                 success marker of a committed shard
    DIR/_staging/<shard>/*.frag              fragments of shards in flight (invisible)
    DIR/_lease/<token>.json                  the run that holds the folder (with a heartbeat)

Workers write fragments (hidden name, then renamed to `.frag`, so a fragment is either whole
or absent); the driver commits a shard once every clip of it is accounted for by renaming its
fragments into place and writing the marker last. Which clips are finished is read from the
visible Parquet files themselves, so deleting part files makes a rerun redo exactly those
clips. After a crash, fragments that were fully written are committed on the next start: an
interruption loses only the blocks that were in flight.

One run at a time: a run holds a lease (`_lease/<token>.json`, refreshed by a heartbeat) from
its claim to its end; a second run refuses to start while the lease is live, and takes over a
lease whose heartbeat is older than `LEASE_STALE_S` (its owner died), or at once one whose
process is gone from this very machine (same host and process namespace: a driver killed with
SIGKILL is rerun without waiting). The lease uses only create, list and delete through
`pyarrow.fs`, so it works the same on object storage.

Rows carry an `input_hash` (what the row was computed from); a rerun whose catalog row changed
first deletes the old row (rewriting its file without it, atomically by rename), then computes
the clip again: a reader sees the old row, then no row, then the new row, never two.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import UsageError
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
LEASE = "_lease"
LEASE_HEARTBEAT_S = 20.0
LEASE_STALE_S = 120.0  # a lease not refreshed for this long belongs to a dead run
TARGET_ROW_GROUP_BYTES = 64 << 20


class SettingsMismatchError(UsageError, RuntimeError):
    """The folder already holds output made with other settings."""


class OutputBusyError(UsageError, RuntimeError):
    """Another live run holds the folder's lease."""


class CorruptOutputError(UsageError, RuntimeError):
    """A file of the folder (`_meta.json`, a part file) cannot be read; the message names it."""


@dataclass(frozen=True)
class Finished:
    """A committed row: in which table (features/errors), from what input, in which file."""

    kind: str
    input_hash: str | None
    path: str


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
                meta = json.loads(f.read().decode())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptOutputError(
                f"{self.path(META)} is corrupt ({exc}); restore it or use another output folder"
            ) from exc
        if not isinstance(meta, dict):
            raise CorruptOutputError(f"{self.path(META)} is corrupt (not a JSON object)")
        return meta

    def check_settings(self, layout_description: dict) -> None:
        """Refuse a folder that is not a folder, or holds results of other settings, without
        writing anything (a run that fails to start must not claim the folder)."""
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise UsageError(f"output {self.uri} is a file, not a folder")
        if info.type == pafs.FileType.NotFound:
            return
        meta = self.read_meta()
        if meta is not None and meta.get("settings_hash") != layout_description["settings_hash"]:
            old, new = meta.get("settings", {}), layout_description["settings"]
            diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
            raise SettingsMismatchError(
                f"{self.uri} holds {self.kind} made with other settings {diff} (old, new); "
                "use another output folder"
            )

    def write_meta(self, meta: dict) -> None:
        self._write_bytes(self.path(META), json.dumps(meta, indent=1, sort_keys=True).encode())

    def claim(self, layout_description: dict) -> None:
        """Record the run's settings, or refuse a folder made with different ones."""
        self.check_settings(layout_description)
        self.fs.create_dir(self.root, recursive=True)
        meta = self.read_meta()
        if meta is None:
            self.write_meta({**layout_description, "runs": []})

    def record_run(self, summary: dict) -> None:
        meta = self.read_meta() or {}
        meta.setdefault("runs", []).append(summary)
        self.write_meta(meta)

    # ---- finished work ----------------------------------------------------------------------

    def folder(self, kind: str) -> str:
        """Where committed files of a table kind (features, results, errors) live."""
        sub = ERRORS if kind == ERRORS else DATA_FOLDERS[kind]
        return self.path(sub) if sub else self.root

    def part_files(self, errors: bool = False, *, kind: str | None = None) -> list[str]:
        """Committed part files of the folder's main table (or `kind`), or of its errors."""
        return part_files_in(self.fs, self.folder(ERRORS if errors else kind or self.kind))

    def finished_ids(self, include_errors: bool = True) -> set[str]:
        """Ids present in committed files of the main table (and error files)."""
        return set(self.finished(include_errors=include_errors))

    def finished(self, include_errors: bool = True) -> dict[str, Finished]:
        """Every committed row: id -> table, input hash (None for rows written before input
        hashes existed) and file. Main-table rows win over error rows of the same id."""
        done: dict[str, Finished] = {}
        kinds = [("errors", True)] if include_errors else []
        for kind, errors in [*kinds, (self.kind, False)]:
            for path in self.part_files(errors=errors):
                table = self._read_ids(path)
                hashes = (
                    table["input_hash"].to_pylist()
                    if "input_hash" in table.column_names
                    else [None] * table.num_rows
                )
                for cid, h in zip(table["id"].to_pylist(), hashes, strict=True):
                    done[cid] = Finished(kind, h, path)
        return done

    def _read_ids(self, path: str) -> pa.Table:
        try:
            names = pq.read_schema(path, filesystem=self.fs).names
            columns = ["id"] + (["input_hash"] if "input_hash" in names else [])
            return pq.read_table(path, columns=columns, filesystem=self.fs)
        except (pa.ArrowInvalid, OSError, KeyError) as exc:
            raise CorruptOutputError(
                f"{path} is not a readable Parquet file ({' '.join(str(exc).split())[:200]}); "
                "move it out of the folder (its clips will be redone) and run again"
            ) from exc

    def remove_ids(self, ids: set[str], finished: dict[str, Finished] | None = None) -> int:
        """Delete the committed rows of `ids` (stale results of changed inputs): each file
        holding one is rewritten without it under a hidden name, then renamed over itself."""
        finished = self.finished() if finished is None else finished
        by_file: dict[str, set[str]] = {}
        for cid in ids:
            if cid in finished:
                by_file.setdefault(finished[cid].path, set()).add(cid)
        return sum(
            self._rewrite_without(path, victims) for path, victims in sorted(by_file.items())
        )

    def drop_rows(self, kind: str, ids: set[str]) -> int:
        """Remove the rows of `ids` from every committed part file of `kind`."""
        return sum(self._rewrite_without(path, ids) for path in self.part_files(kind=kind))

    def _rewrite_without(self, path: str, victims: set[str]) -> int:
        """Rewrite one part file without the rows of `victims` (hidden temp, then renamed over
        it; deleted when nothing is left); the number of rows removed."""
        table = pq.read_table(path, filesystem=self.fs)
        keep = pa.array([cid not in victims for cid in table["id"].to_pylist()])
        kept = table.filter(keep)
        removed = table.num_rows - kept.num_rows
        if removed == 0:
            return 0
        if kept.num_rows == 0:
            self.fs.delete_file(path)
            return removed
        folder, name = path.rsplit("/", 1)
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        pq.write_table(
            kept, tmp, filesystem=self.fs, row_group_size=row_group_rows(kept), compression="zstd"
        )
        self.fs.move(tmp, path)
        return removed

    def put_file(self, local_path: str, rel: str) -> str:
        """Copy a local file to DIR/rel: written under a hidden name, renamed when whole."""
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

    def record_catalog_problems(self, shard: str, problems: list, settings_hash: str) -> None:
        """Commit catalog rows that cannot run (`CatalogProblem`s) as one shard of error rows
        (stage "catalog"), logging each once: the same for every job."""
        from .rows import error_table

        rows = [
            {
                "id": p.id,
                "source": p.source,
                "row": p.row,
                "stage": "catalog",
                "error_type": "CatalogError",
                "message": p.message,
                "input_hash": getattr(p, "input_hash", None) or None,
            }
            for p in problems
        ]
        for p in problems:
            log.warning("catalog row %d (%s): %s", p.row, p.source or p.id, p.message)
        self.stage(shard, "errors", error_table(rows, settings_hash))
        self.commit(shard)

    def stage_rows(self, rows: list[dict], kind: str, build, settings_hash: str) -> None:
        """Stage a block's rows shard by shard: the good ones as one `kind` fragment each
        (`build(indices) -> Table`; a row that does not fit the schema becomes an error row
        at stage "write" instead of failing the block), the failed ones as error rows."""
        from .rows import error_result, error_table, table_or_error_rows

        def unstorable(i: int, exc: Exception) -> None:
            rows[i].update(error_result(rows[i], "write", exc))

        by_shard: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_shard.setdefault(row["shard"], []).append(i)
        for shard, idx in by_shard.items():
            ok = [i for i in idx if rows[i]["status"] == "ok"]
            if ok:
                table = table_or_error_rows(build, ok, unstorable)
                if table is not None:
                    self.stage(shard, kind, table)
            bad = [rows[i] for i in idx if rows[i]["status"] != "ok"]
            if bad:
                self.stage(shard, ERRORS, error_table(bad, settings_hash))

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

    def commit(
        self, shard: str, *, recovered: bool = False, skip_ids: set[str] | None = None
    ) -> ShardCommit:
        """Move a shard's fragments into place, then write its success marker. Rows of
        `skip_ids` (clips committed already) are dropped from the fragments first."""
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
            if skip_ids:
                dropped = self._rewrite_without(frag, skip_ids)
                if dropped:
                    log.warning(
                        "%s: dropped %d row(s) of clips committed since (late writes of a "
                        "killed run)",
                        frag.rsplit("/", 1)[-1],
                        dropped,
                    )
                if not self.fs.get_file_info(frag).is_file:
                    continue  # every row was committed already: the fragment is gone
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
        """Commit whole fragments left by an interrupted run; drop partial writes.

        A killed driver's workers can outlive it by a moment and stage fragments for clips
        that the next run has committed since: those rows are dropped, so a reader never sees
        two rows for an id."""
        try:
            shards = [
                i.base_name
                for i in self.fs.get_file_info(pafs.FileSelector(self.path(STAGING)))
                if i.type == pafs.FileType.Directory
            ]
        except FileNotFoundError:
            return []
        committed = self.finished_ids() if shards else set()
        commits = [
            self.commit(shard, recovered=True, skip_ids=committed) for shard in sorted(shards)
        ]
        self._delete_dir(self.path(STAGING))
        if commits:
            log.info("recovered %d shard(s) of an interrupted run", len(commits))
        return commits

    def sweep_partial_files(self, *folders: str) -> int:
        """Delete hidden files (a writer's temp names: `.name.*.tmp`, `.stem.pid.partial.x`)
        left in `folders` of DIR by a run that was killed mid-write. Only under the lease: no
        live run of this folder can be writing one."""
        removed = 0
        for folder in folders:
            try:
                infos = self.fs.get_file_info(pafs.FileSelector(self.path(folder), recursive=True))
            except FileNotFoundError:
                continue
            for info in infos:
                if info.type == pafs.FileType.File and info.base_name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.delete_file(info.path)
                        removed += 1
        if removed:
            log.info("removed %d partial file(s) of an interrupted run", removed)
        return removed

    # ---- lease --------------------------------------------------------------------------------

    def acquire_lease(
        self, *, stale_after_s: float = LEASE_STALE_S, heartbeat_s: float = LEASE_HEARTBEAT_S
    ) -> Lease:
        """Hold the folder for this run, or raise OutputBusyError naming the live holder."""
        lease = Lease(self, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s)
        for attempt in range(3):
            self._check_no_live_lease(lease, stale_after_s)
            lease.write()
            others = self._live_leases(lease.token, stale_after_s)
            if not others:
                lease.start_heartbeat()
                return lease
            # Two runs wrote at once: both step back, and try again after a random pause,
            # so at most one of them ever proceeds.
            lease.delete()
            time.sleep(random.uniform(0.2, 1.0) * (attempt + 1))
        self._check_no_live_lease(lease, stale_after_s)
        raise OutputBusyError(f"{self.uri} is contended by another run starting now; retry")

    def _lease_files(self) -> list[pafs.FileInfo]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(LEASE)))
        except FileNotFoundError:
            return []
        return [i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".json")]

    def _live_leases(self, own: str, stale_after_s: float) -> list[dict]:
        live = []
        for info in self._lease_files():
            if info.base_name == f"{own}.json":
                continue
            try:
                with self.fs.open_input_stream(info.path) as f:
                    holder = json.loads(f.read().decode())
                beat = float(holder["heartbeat_at"])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                holder = {"token": info.base_name, "host": "?", "pid": "?"}
                beat = info.mtime.timestamp() if info.mtime else 0.0
            age = time.time() - beat
            gone = _process_gone(holder)
            if age > stale_after_s or gone:
                log.warning(
                    "taking over the stale lease of %s (host %s, pid %s, last heartbeat %.0f s "
                    "ago%s)",
                    self.uri,
                    holder.get("host"),
                    holder.get("pid"),
                    age,
                    "; that process is gone" if gone else "",
                )
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_file(info.path)
                continue
            live.append({**holder, "age": age, "file": info.path})
        return live

    def _check_no_live_lease(self, lease: Lease, stale_after_s: float) -> None:
        others = self._live_leases(lease.token, stale_after_s)
        if others:
            h = others[0]
            raise OutputBusyError(
                f"{self.uri} is in use by another run (host {h.get('host')}, pid {h.get('pid')}, "
                f"heartbeat {h['age']:.0f} s ago); wait for it to finish, or if it died, delete "
                f"{h['file']} (a lease goes stale after {stale_after_s:.0f} s)"
            )

    def _write_bytes(self, path: str, data: bytes) -> None:
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, path)

    def _delete_dir(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(path)


class Lease:
    """This run's hold on an output folder; refreshed by a daemon thread until released."""

    def __init__(self, out: OutputDir, *, stale_after_s: float, heartbeat_s: float):
        self.out = out
        self.token = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        self.path = out.path(LEASE, f"{self.token}.json")
        self.heartbeat_s = heartbeat_s
        self.acquired_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self) -> None:
        self.out.fs.create_dir(self.out.path(LEASE), recursive=True)
        record = {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_namespace": _pid_namespace(),
            "acquired_at": self.acquired_at,
            "heartbeat_at": time.time(),
        }
        self.out._write_bytes(self.path, json.dumps(record).encode())

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="selva-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.write()
            except OSError as exc:  # keep trying: a blip must not end the run
                log.warning("could not refresh the lease %s: %s", self.path, exc)

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.out.fs.delete_file(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.delete()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_namespace() -> int | None:
    """Identity of this process's PID namespace (Linux), so that a pid is only judged on the
    machine and container that issued it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _process_gone(holder: dict) -> bool:
    """True only when the lease's process provably no longer runs: same host and PID
    namespace, and no such pid (or a zombie). Anything uncertain counts as alive."""
    pid, ns = holder.get("pid"), holder.get("pid_namespace")
    if holder.get("host") != socket.gethostname() or ns is None or ns != _pid_namespace():
        return False
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # e.g. another user's process: it exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # killed, not yet reaped
    except (OSError, IndexError):
        return False


def part_files_in(fs: pafs.FileSystem, folder: str) -> list[str]:
    """The committed part files (`part-*.parquet`) directly in `folder`, sorted; none if the
    folder does not exist."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False))
    except FileNotFoundError:
        return []
    return sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.base_name.startswith("part-")
        and i.base_name.endswith(".parquet")
    )


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group so that a group holds about 64 MB: a good read unit for training."""
    if table.num_rows == 0:
        return 1
    per_row = max(1, table.nbytes // table.num_rows)
    return max(1, min(table.num_rows, TARGET_ROW_GROUP_BYTES // per_row))
