"""Another Ray on this machine, registered where a bare `ray.init()` looks for one (its temp
dir's `ray_current_cluster`, found through RAY_TMPDIR), for the tests that show a command never
joins it; and a command interrupted once its training worker group has started."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ray_head import end_process

OTHER_HEAD = """
import sys, time
import ray
from ray._private.utils import write_ray_address
ctx = ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1])
write_ray_address(ctx.address_info["gcs_address"], sys.argv[1])
print("READY", ctx.address_info["gcs_address"], flush=True)
while True:
    time.sleep(1)
"""

# A training run that only an interrupt ends.
TRAIN_LONG = [
    "train", "--steps", "100000", "--batch-size", "2", "--preview-clips", "0", "--offline",
]  # fmt: skip


@dataclass(frozen=True)
class OtherRay:
    temp: str  # its temp dir: RAY_TMPDIR=temp makes it the cluster `ray.init()` would find
    address: str  # its GCS address


@contextlib.contextmanager
def other_ray(log: Path, env: dict) -> Iterator[OtherRay]:
    temp = tempfile.mkdtemp(prefix="ro-", dir="/tmp")  # short: Ray's socket paths
    with open(log, "w") as fh:
        head = subprocess.Popen(
            [sys.executable, "-c", OTHER_HEAD, temp], stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 240
        while "READY" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        yield OtherRay(temp, log.read_text().split("READY", 1)[1].split()[0])
    finally:
        end_process(head)
        shutil.rmtree(temp, ignore_errors=True)


def interrupt(args: list[str], env: dict, sig: signal.Signals) -> subprocess.CompletedProcess:
    """Run a command, send it `sig` once its training worker group has started."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "selva_ray.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        seen.append(line)
        if "Started training worker group" in line or time.monotonic() > deadline:
            break
    time.sleep(3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(args, proc.returncode, out, "".join(seen) + err)
