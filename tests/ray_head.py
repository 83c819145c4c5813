"""A stock `ray start --head --block` process for tests, and a stop that ends only its Ray.

`ray stop` would end every Ray that `ray start` made on the machine, other people's included;
instead the head runs in its own session and is stopped through its own processes: SIGTERM to
`ray start --block` (which shuts down what it started), then SIGKILL for any process it left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The cores this process may run on: what every local Ray a test starts declares, no more (a
# cluster with more logical CPUs than cores runs plans the user's machine would not, and can
# hide a hang). Clusters that stand for several machines (cluster_support) are the exception.
MACHINE_CPUS = len(os.sched_getaffinity(0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    """The `ray` script installed beside this interpreter (the one with selva-ray)."""
    script = Path(sys.executable).parent / "ray"
    assert script.is_file(), f"no `ray` script beside {sys.executable}"
    return str(script)


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces
    return int(fields[1]), fields[0], int(fields[19])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def process_tree(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of `root` and every process below it, alive now."""
    stats = {pid: s for pid in _all_pids() if (s := _stat(pid)) is not None}
    found: set[tuple[int, int]] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.add((pid, stats[pid][2]))
            todo += [child for child, s in stats.items() if s[0] == pid]
    return found


def alive(processes: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The ones still running (the same start time: not a reused pid; zombies count as gone)."""
    left = set()
    for pid, start in processes:
        s = _stat(pid)
        if s is not None and s[2] == start and s[1] != "Z":
            left.add((pid, start))
    return left


def naming(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a head's temp dir)."""
    found = []
    for pid in _all_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and (s := _stat(pid)) is not None and s[1] != "Z":
            found.append(pid)
    return found


@dataclass
class Head:
    process: subprocess.Popen
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    log: Path
    seen: set[tuple[int, int]]  # every process of the head seen so far

    def look(self) -> None:
        """Note the head's processes now (jobs add workers), so a stop can check them all."""
        self.seen |= process_tree(self.process.pid)


def start_head(env: dict, temp_dir: str, log: Path, num_cpus: int = 2) -> Head:
    """`ray start --head --block` in its own session, on free ports, once it says it started.
    Ray gives a starting node 30 s to register, which a loaded machine can miss: a head that
    dies starting is started again (twice at most)."""
    for attempt in range(3):
        gcs, dashboard = free_port(), free_port()
        command = [ray_cli(), "start", "--head", "--block", f"--temp-dir={temp_dir}"]
        command += [f"--port={gcs}", f"--dashboard-port={dashboard}", f"--num-cpus={num_cpus}"]
        # Fixed by default (52365, 10001): another Ray on the machine may hold them.
        command += [f"--dashboard-agent-listen-port={free_port()}"]
        command += [f"--ray-client-server-port={free_port()}", "--disable-usage-stats"]
        with open(log, "w") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        head = Head(process, temp_dir, gcs, dashboard, log, set())
        deadline = time.monotonic() + 240
        while "Ray runtime started" not in log.read_text() and process.poll() is None:
            head.look()
            if time.monotonic() > deadline:
                stop_head(head)
                raise AssertionError("head did not start: " + log.read_text()[-3000:])
            time.sleep(1)
        head.look()
        if process.poll() is None:
            return head
        stop_head(head)
        assert attempt < 2, "head did not start: " + log.read_text()[-3000:]
    raise AssertionError("unreachable")


def end_process(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM, then SIGKILL after `grace_s`: for a head that is a driver process of its own
    (`ray.init` in a script), which shuts its cluster down when it ends."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()


def stop_head(head: Head, grace_s: float = 60) -> set[tuple[int, int]]:
    """Stop this head and nothing else; returns the processes that SIGTERM did not end (they
    are killed). Afterwards none of its processes, and none naming its temp dir, runs."""
    head.look()
    if head.process.poll() is None:
        head.process.terminate()  # `ray start --block` shuts its processes down on SIGTERM
    deadline = time.monotonic() + grace_s
    while alive(head.seen) and time.monotonic() < deadline:
        time.sleep(0.5)
    stragglers = alive(head.seen)
    for pid, _ in stragglers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.process.pid, signal.SIGKILL)  # its session: nothing outside it
    head.process.wait(30)
    deadline = time.monotonic() + 30
    while (alive(head.seen) or naming(head.temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(head.seen), f"head processes still running: {sorted(alive(head.seen))}"
    assert not naming(head.temp_dir), (
        f"processes of {head.temp_dir} running: {naming(head.temp_dir)}"
    )
    return stragglers
