"""Process-level setup shared by jobs: device and precision choice, CPU cores and threads,
and the actor pools of model stages (the Ray connection is `runner.connect`)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(precision: str | None, device: str):
    """Named precision, or the default: bf16 on GPU (as the official demo), fp32 on CPU."""
    import torch

    if precision is None:
        precision = "fp32" if device == "cpu" else "bf16"
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    return getattr(torch, DTYPES[precision])


def model_pool(actors: int, in_flight: int = 2):
    """The Ray Data actor pool of a model stage: exactly `actors` actors for the whole run.
    Ray Data's autoscaler shrinks a pool that runs over its share of the cluster's CPUs down
    to `min_size`, even while its actors only wait for an upstream stage: on 2 CPUs it retired
    the second generator while both waited for the encoder's first batch, and the job ran on
    one (docs/benchmarks.md). A model actor takes seconds to build, so none is given up."""
    import ray

    return ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=in_flight)


def node_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a
    Kubernetes pod's limit); not Ray's logical CPU count, which clusters (and tests) often
    set above the cores there are."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def cpu_model_slots(memory: int) -> int:
    """How many one-thread model actors a CPU cluster runs side by side: every alive node's
    cores (this node's `node_cores()`, another node's logical CPUs), each node capped by its
    Ray `memory` resource over `memory` bytes per actor (`runner.plan.ClusterView`).

    Why one thread per actor: on CPUs, model actors working on different batches use the
    cores better than one actor's intra-op threads at the sizes these models run
    (bench/bench_pipeline.py; on a 2-core box two one-thread generators do 1.5x the clips of
    one two-thread generator at `tiny` and 1.2x at `small_16k`)."""
    from .runner.plan import ClusterView

    return ClusterView.current().model_slots(memory)


def cpu_threads(share: int) -> int:
    """torch intra-op threads for a CPU model actor: the node's cores split between the
    `share` model actors that compute at the same time (a generator alone on a 2-core box
    gets both cores; an encoder and a generator get one each). Ray's default would be one
    thread per logical CPU reserved, leaving cores idle while the generator samples, and
    more threads than cores would make the actors fight over them."""
    return max(1, node_cores() // max(1, share))


def use_cpu_threads(device: str, share: int | None) -> None:
    """Apply `cpu_threads(share)` in a model actor on the CPU (nothing on GPUs or when
    `share` is None)."""
    if share is None or not str(device).startswith("cpu"):
        return
    import torch

    threads = cpu_threads(share)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.info("model actor: %d torch thread(s) on %d core(s)", threads, node_cores())
