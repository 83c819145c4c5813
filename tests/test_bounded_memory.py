"""Bounded memory (issue 15): a 10-minute 1080p 60 fps video in a catalog does not take a job
down. With --max-duration 8 --window 0 (no windows) only 8 s are decoded. Peak RSS is
measured, not assumed: the extract job runs as a `selva-ray extract` subprocess against a
local Ray cluster, and the high-water mark (VmHWM) of every process of the cluster (raylet,
the decode workers, the encoder actor) and of the driver is polled; the decode task's own
figure is the peak of the worker processes seen running `decode_batch`.

The file is 36,000 frames (600 s x 60 fps, 1920x1080, with a 10-minute AAC track), written in
seconds by repeating the packets of one encoded second (video_factory.write_long_video).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from ray_head import MACHINE_CPUS
from video_factory import write_long_video

from selva_ray.io.feature_schema import read_features

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
LONG = {"duration": 600.0, "size": (1920, 1080), "fps": 60}
# All 36,000 frames as RGB would be ~210 GiB, the 8 s window as RGB ~2.8 GiB. A decode that
# holds one full frame at a time needs the worker's imports (torch, torchvision, av, pyarrow:
# ~0.7 GiB) plus ~0.1 GiB of decoder buffers and 224 px outputs: ~0.9 GiB measured. (Reading
# PyAV's frame.side_data leaked ~6 MiB per 1080p frame and took this worker to 1.35 GiB.)
DECODE_WORKER_LIMIT = 1152 * MiB
PROCESS_LIMIT = 3 * 1024 * MiB


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("long")
    t0 = time.perf_counter()
    path = write_long_video(folder / "ten_minutes_1080p60.mp4", **LONG)
    took = time.perf_counter() - t0
    print(f"wrote {path.name}: {path.stat().st_size / MiB:.1f} MiB in {took:.1f} s")
    return path


@pytest.fixture(scope="module")
def cluster():
    """A cluster of its own: the peak memory of every worker process is measured, and the
    shared cluster's workers carry the peaks of earlier modules' tasks."""
    ray.shutdown()
    ray.init(
        address="local",
        num_cpus=MACHINE_CPUS,
        object_store_memory=400 * 1024 * 1024,
        include_dashboard=False,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(root: int) -> list[int]:
    tree, out, todo = _children(), [], [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _hwm(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            name = fh.read().replace(b"\0", b" ").decode(errors="replace")[:80]
        return int(fields["VmHWM"].split()[0]) * 1024, name
    except (OSError, KeyError, ValueError):
        return None


class _PeakWatcher(threading.Thread):
    """Polls the high-water mark of every process under this test (the Ray cluster it
    started, and the job's driver); a process's VmHWM only grows, so polling misses nothing
    of a process that is still alive at the next poll."""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period, self.peaks, self.names = period, {}, {}
        self.tasks: dict[int, set[str]] = {}  # pid -> process titles seen (ray::<task>)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in _descendants(os.getpid()):
                found = _hwm(pid)
                if found:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), found[0])
                    self.names[pid] = found[1]
                    self.tasks.setdefault(pid, set()).add(found[1])
            self.done.wait(self.period)


def test_extract_job_over_a_ten_minute_1080p60_video(cluster, long_video, tmp_path):
    manifest = tmp_path / "catalog.csv"
    manifest.write_text(f"video,prompt,id\n{long_video},a block moves,long\n")
    output = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    watcher = _PeakWatcher()
    watcher.start()
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "selva_ray.cli", "extract", "--input", str(manifest)]
            + ["--output", str(output), "--variant", "tiny", "--max-duration", "8", "--window", "0"]
            + ["--with-audio-latents", "--ray-address", cluster, "--no-progress"]
            + ["--allow-root", "/", "--fail-on-error"],
            capture_output=True,
            text=True,
            env=env,
            timeout=420,
        )
    finally:
        watcher.done.set()
        watcher.join()
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 ok, 0 failed" in out.stdout
    row = read_features(str(output), columns=["id", "duration", "sync_len", "latent_len"])
    # 200 frames at 25 fps = 25 Synchformer windows of 16 (stride 8) -> 24 windows x 8
    assert row.to_pylist() == [{"id": "long", "duration": 8.0, "sync_len": 192, "latent_len": 250}]
    assert not (output / "errors").exists() or not pq.read_table(output / "errors").num_rows

    peaks = sorted(((p, watcher.names[pid]) for pid, p in watcher.peaks.items()), reverse=True)
    assert peaks, "no process of the job was seen"
    print(f"extract job over the 10 min 1080p60 file: {wall:.1f} s; peak RSS per process:")
    for peak, name in peaks[:6]:
        print(f"  {peak / MiB:7.0f} MiB  {name}")
    print(f"  sum of all peaks: {sum(p for p, _ in peaks) / MiB:.0f} MiB ({len(peaks)} processes)")
    decoders = [watcher.peaks[pid] for pid, t in watcher.tasks.items() if "decode_batch" in str(t)]
    assert decoders, "the decode task was not seen"
    print(f"  decode worker(s): {', '.join(f'{p / MiB:.0f} MiB' for p in decoders)}")
    assert max(decoders) < DECODE_WORKER_LIMIT, [p / MiB for p in decoders]
    assert peaks[0][0] < PROCESS_LIMIT, peaks[:3]
