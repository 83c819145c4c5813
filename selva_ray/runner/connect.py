"""Which Ray cluster a job runs on.

- Already connected in this process (a test, the demo, a notebook): that cluster.
- No address (no `--ray-address`, no `RAY_ADDRESS`): a private local cluster started for this
  process, with as many logical CPUs as the cores this process may use, so the job's plan
  fits the real machine. A cluster another process started on the machine is never joined.
- `--ray-address auto`, `RAY_ADDRESS` (as `ray job submit` sets it) or `host:port`: that
  cluster. Its GCS port is probed first with a short timeout, so an unreachable address is
  one line and exit 2 instead of a driver that retries for ever; nothing has been claimed.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from ..errors import UsageError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = float(os.environ.get("SELVA_RAY_CONNECT_TIMEOUT_S", "10"))
# A job stuck with no progress fails after this long instead of hanging a cluster (Ray's
# default is 30 min).
NO_PROGRESS_TIMEOUT_S = 3600


class ClusterUnreachableError(UsageError):
    """The address names no Ray cluster that answers."""


@dataclass(frozen=True)
class Connection:
    """How this process reached Ray: `private` (a cluster of its own), `existing` (an address),
    or `attached` (Ray was already initialised by the caller). `ends_with_driver`: one node
    that this process started and that stops with it (a private cluster, or the local
    cluster of the caller's own `ray.init()`: a notebook's, a test's), so nothing outlives
    the driver and no other node can be drained under the run."""

    kind: str
    address: str
    ends_with_driver: bool = False

    def describe(self) -> dict:
        return {"kind": self.kind, "address": self.address}


def requested_address(address: str | None) -> str | None:
    """The cluster a job was asked to join: the flag, else $RAY_ADDRESS; None (or "local")
    means a private local cluster."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address in (None, "", "local") else address


def _probe(address: str, timeout_s: float) -> None:
    """Open and close a TCP connection to the GCS of `host:port` (or `ray://host:port`)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterUnreachableError(
            f"--ray-address {address!r} is not host:port, ray://host:port or auto"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError | socket.timeout):
            reason = f"no answer in {timeout_s:g} s"
        raise ClusterUnreachableError(
            f"cannot reach the Ray cluster at {address} ({reason}); check the address (`ray "
            "status` on the head), or drop --ray-address and unset RAY_ADDRESS to run on a "
            "private local cluster"
        ) from None


def _started_here() -> bool:
    """Whether the Ray this process is attached to is a one-node local cluster that this
    process's own `ray.init()` started (it stops with the process). Read from Ray's node
    object; when that changes shape the answer is no, which only keeps Ray Train's helpers."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if not getattr(node, "ray_init_cluster", False):
        return False
    return sum(1 for n in ray.nodes() if n.get("Alive")) == 1


def connect(
    address: str | None = None,
    *,
    progress: bool = True,
    num_cpus: int | None = None,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> Connection:
    """Connect this process to Ray as the module doc says; set the Ray Data options every job
    wants. `num_cpus`: logical CPUs of a private cluster (default: this process's cores)."""
    import ray

    from ..logs import quiet_ray_logs
    from ..runtime import node_cores

    if ray.is_initialized():
        gcs = ray.get_runtime_context().gcs_address
        conn = Connection("attached", gcs, ends_with_driver=_started_here())
    else:
        target = requested_address(address)
        quiet_ray_logs(local_cluster=target is None)
        if target is None:
            cpus = num_cpus or node_cores()
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True)
            gcs = ray.get_runtime_context().gcs_address
            conn = Connection("private", gcs, ends_with_driver=True)
            log.info("started a private local Ray cluster (%d CPUs)", cpus)
        else:
            if target != "auto":
                _probe(target, timeout_s)
            try:
                ray.init(address=target, log_to_driver=True)
            except ConnectionError as exc:
                raise ClusterUnreachableError(
                    f"cannot reach the Ray cluster at {target} ({' '.join(str(exc).split())[:200]}"
                    "); start one with `ray start --head`, or drop --ray-address and unset "
                    "RAY_ADDRESS to run on a private local cluster"
                ) from None
            conn = Connection("existing", ray.get_runtime_context().gcs_address)
            log.info("connected to the Ray cluster at %s", conn.address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    ctx.execution_no_progress_timeout_s = NO_PROGRESS_TIMEOUT_S
    return conn
