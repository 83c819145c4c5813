"""The output folder without Ray: the run lease (live, stale, contended), replacing stale rows,
and corrupt files named in one line."""

import json
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selva_ray.io.output_dir import (
    LEASE,
    CorruptOutputError,
    OutputBusyError,
    OutputDir,
)
from selva_ray.io.rows import error_table


def test_a_live_lease_refuses_a_second_run_and_is_released(tmp_path):
    out = OutputDir(str(tmp_path / "o"))
    with out.acquire_lease(heartbeat_s=0.2):
        with pytest.raises(OutputBusyError, match="in use by another run") as info:
            OutputDir(str(tmp_path / "o")).acquire_lease()
        assert "_lease/" in str(info.value) and "\n" not in str(info.value)
        time.sleep(0.5)  # the heartbeat keeps it fresh
        with pytest.raises(OutputBusyError):
            OutputDir(str(tmp_path / "o")).acquire_lease(stale_after_s=0.4)
    assert not list((tmp_path / "o" / LEASE).glob("*.json"))
    OutputDir(str(tmp_path / "o")).acquire_lease().release()


def test_a_stale_lease_is_taken_over(tmp_path):
    folder = tmp_path / "o" / LEASE
    folder.mkdir(parents=True)
    dead = {"token": "dead", "host": "h", "pid": 1, "heartbeat_at": time.time() - 3600}
    (folder / "dead.json").write_text(json.dumps(dead))
    lease = OutputDir(str(tmp_path / "o")).acquire_lease()
    assert [p.name for p in folder.glob("*.json")] == [f"{lease.token}.json"]
    lease.release()


def test_the_lease_of_a_killed_process_on_this_machine_is_taken_over_at_once(tmp_path):
    """A driver killed with SIGKILL leaves a fresh lease; on the same host and PID namespace a
    rerun sees that its process is gone. A live process, or another host, still holds it."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    folder = tmp_path / "o" / LEASE
    folder.mkdir(parents=True)
    ns = os.stat("/proc/self/ns/pid").st_ino
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        here = {"host": socket.gethostname(), "pid_namespace": ns, "heartbeat_at": time.time()}
        holders = {
            "live": {**here, "pid": live.pid},
            "elsewhere": {**here, "pid": killed.pid, "host": "another-host"},
            "killed": {**here, "pid": killed.pid},
        }
        for name in ("live", "elsewhere"):
            (folder / f"{name}.json").write_text(json.dumps({"token": name, **holders[name]}))
            with pytest.raises(OutputBusyError, match=f"pid {holders[name]['pid']}"):
                OutputDir(str(tmp_path / "o")).acquire_lease()
            (folder / f"{name}.json").unlink()
        (folder / "killed.json").write_text(json.dumps({"token": "killed", **holders["killed"]}))
        lease = OutputDir(str(tmp_path / "o")).acquire_lease()
        assert [p.name for p in folder.glob("*.json")] == [f"{lease.token}.json"]
        lease.release()
    finally:
        live.kill()
        live.wait()


def test_runs_racing_for_a_lease_never_both_win(tmp_path):
    winners, losers = [], []
    barrier = threading.Barrier(4)

    def contend():
        barrier.wait()
        try:
            lease = OutputDir(str(tmp_path / "o")).acquire_lease()
        except OutputBusyError:
            losers.append(1)
            return
        winners.append(lease)
        time.sleep(1.5)  # hold it while the others try

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) <= 1 and len(winners) + len(losers) == 4
    for lease in winners:
        lease.release()


def test_remove_ids_rewrites_files_without_the_stale_rows(tmp_path):
    out = OutputDir(str(tmp_path))
    table = pa.table({"id": ["a", "b", "c"], "input_hash": ["1", "2", "3"], "x": [1, 2, 3]})
    pq.write_table(table, tmp_path / "part-s-1.parquet")
    rows = [{"id": "d", "source": "", "stage": "decode", "error_type": "E", "message": "m"}]
    (tmp_path / "errors").mkdir()
    pq.write_table(error_table(rows, "h"), tmp_path / "errors" / "part-s-3.parquet")
    done = out.finished()
    assert {k: (v.kind, v.input_hash) for k, v in done.items()} == {
        "a": ("features", "1"),
        "b": ("features", "2"),
        "c": ("features", "3"),
        "d": ("errors", None),
    }
    assert out.remove_ids({"b", "d"}) == 2
    assert pq.read_table(tmp_path / "part-s-1.parquet")["id"].to_pylist() == ["a", "c"]
    assert not (tmp_path / "errors" / "part-s-3.parquet").exists()  # emptied: deleted
    assert not list(tmp_path.rglob("*.tmp"))


def test_late_fragments_of_a_killed_run_never_duplicate_a_committed_clip(tmp_path):
    """A killed driver's workers can stage fragments after the next run committed the same
    clips (the rerun redid them): recovering those fragments keeps one row per id."""
    out = OutputDir(str(tmp_path))
    table = pa.table({"id": ["a", "b"], "input_hash": ["1", "2"], "x": [1, 2]})
    out.stage("rerun-00000", "features", table)
    assert out.commit("rerun-00000").ok == 2
    # late writes into the dead run's shard: one clip committed since, one new; one all old
    out.stage(
        "dead-00000",
        "features",
        pa.table({"id": ["b", "c"], "input_hash": ["2", "3"], "x": [9, 3]}),
    )
    out.stage("dead-00001", "features", pa.table({"id": ["a"], "input_hash": ["1"], "x": [9]}))
    rows = [{"id": "b", "source": "", "stage": "decode", "error_type": "E", "message": "m"}]
    out.stage("dead-00001", "errors", error_table(rows, "h"))
    commits = out.recover()
    assert sorted((c.shard, c.ok, c.failed) for c in commits) == [
        ("dead-00000", 1, 0),
        ("dead-00001", 0, 0),
    ]
    ids = pq.read_table(tmp_path, columns=["id"])["id"].to_pylist()
    assert sorted(ids) == ["a", "b", "c"]  # each clip once
    kept = pq.read_table(tmp_path, columns=["id", "x"]).to_pylist()
    assert {r["id"]: r["x"] for r in kept} == {"a": 1, "b": 2, "c": 3}  # the committed rows win
    assert not (tmp_path / "errors").exists() and not (tmp_path / "_staging").exists()
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.frag"))


def test_corrupt_files_are_named(tmp_path):
    (tmp_path / "_meta.json").write_text("{oops")
    with pytest.raises(CorruptOutputError, match="_meta.json is corrupt"):
        OutputDir(str(tmp_path)).read_meta()
    (tmp_path / "_meta.json").unlink()
    (tmp_path / "part-x.parquet").write_bytes(b"garbage")
    with pytest.raises(CorruptOutputError, match="part-x.parquet is not a readable Parquet"):
        OutputDir(str(tmp_path)).finished_ids()
