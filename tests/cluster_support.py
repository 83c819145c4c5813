"""One multi-node Ray cluster on this machine for the fault tests: a head and two worker nodes
(`ray.cluster_utils.Cluster`), with helpers to lose a worker node and get back to three."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

STORE = 200 * 1024 * 1024  # object store per node
HEAD_CPUS = 1  # so that Ray Train cannot pack a worker group on the head alone
WORKER_CPUS = 2


class ThreeNodes:
    """A head and two worker nodes; this process is a driver connected to them."""

    def __init__(self) -> None:
        ray.shutdown()  # the suite's shared cluster, if a module before started it
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": HEAD_CPUS, "object_store_memory": STORE},
        )
        try:
            self.workers = [self._add() for _ in range(2)]
            self.cluster.wait_for_nodes()
            ray.init(address=self.cluster.address)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            self.wait_alive(3)
        except BaseException:
            self.shutdown()  # never leave a half-started cluster behind
            raise

    @property
    def address(self) -> str:
        return self.cluster.address

    def _add(self):
        return self.cluster.add_node(num_cpus=WORKER_CPUS, object_store_memory=STORE)

    def alive(self) -> int:
        return len([n for n in ray.nodes() if n["Alive"]])

    def wait_alive(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while self.alive() != count:
            assert time.time() < deadline, f"{self.alive()} nodes alive, expected {count}"
            time.sleep(0.2)

    def lose(self, node=None):
        """Remove a worker node (the first by default) as if its machine died; returns it."""
        node = node or self.workers[0]
        self.cluster.remove_node(node)
        self.workers.remove(node)
        return node

    def node_of(self, node_id: str):
        """The worker node (of `self.workers`) with this Ray node id, or None (the head)."""
        return next((n for n in self.workers if n.node_id == node_id), None)

    def restore(self) -> None:
        """Back to three nodes after a loss (called from the main thread: add_node installs
        signal handlers)."""
        while len(self.workers) < 2:
            self.workers.append(self._add())
        self.cluster.wait_for_nodes()
        self.wait_alive(3)

    def shutdown(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()


@contextlib.contextmanager
def three_nodes() -> Iterator[ThreeNodes]:
    nodes = ThreeNodes()
    try:
        yield nodes
    finally:
        nodes.shutdown()


def wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def ledger_count(output: Path) -> int:
    return len(list((output / "_ledger").glob("*.json")))
