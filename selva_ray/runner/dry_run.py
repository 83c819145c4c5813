"""`--dry-run`: read and check the input, plan the run and print the plan with an estimate of
the work, then stop. No model is built, the output folder is neither claimed nor created (an
existing one is only read: its settings are checked and its finished rows counted), and
nothing is written.

Which cluster is planned for:
- No address (no `--ray-address`, no `RAY_ADDRESS`): Ray is not started. The plan is made
  for the private cluster `runner.connect` would start: this process's cores as CPUs, this
  machine's GPUs, and Ray's default `memory` resource (70% of the available memory; Ray keeps
  30% for the object store).
- An address: the cluster is joined as a driver like a run does (its GCS probed first), its
  nodes and resources are read, and the driver disconnects; no task, actor or dataset starts.
- Ray already connected in this process (a notebook, a test): that cluster's view.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from .plan import ClusterView, GiB, assume_cluster

log = logging.getLogger(__name__)
RAY_MEMORY_SHARE = 0.7  # of the available memory: Ray's default `memory` resource of a node


@dataclass
class DryRun:
    """What a dry run prints: the plan and the estimate. Exit status 0."""

    job: str
    input: str
    output: str
    cluster: str
    plan: object | None = None  # runner.plan.Plan or TrainPlan
    estimate: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        lines = [
            f"dry run of {self.job}: nothing started, nothing written",
            f"input   {self.input}",
            f"output  {self.output}",
            f"cluster {self.cluster}",
        ]
        if self.plan is not None:
            lines.append(self.plan.summary())
        for key, value in self.estimate.items():
            if isinstance(value, str):
                shown = value
            else:
                shown = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
            lines.append(f"  {key}: {shown}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"planned in {self.wall_s:.1f} s")
        return lines

    def exit_code(self, fail_on_error: bool = False) -> int:
        return 0


def local_gpus() -> int:
    """GPUs a private Ray cluster of this machine would have (CUDA_VISIBLE_DEVICES honoured)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return 0
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable torch/CUDA: no GPUs to plan for
        return 0


def available_memory() -> int:
    """Bytes of MemAvailable (/proc/meminfo), else physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def local_view() -> ClusterView:
    """The view of the private cluster `runner.connect` would start here, without Ray."""
    from ..runtime import node_cores

    cores = node_cores()
    gpus = float(local_gpus())
    memory = float(int(available_memory() * RAY_MEMORY_SHARE))
    node = {"cpus": float(cores), "gpus": gpus, "memory": memory, "cores": cores}
    return ClusterView(float(cores), gpus, (node,))


def cluster_view(address: str | None) -> tuple[ClusterView, str]:
    """The cluster a dry run plans for (module doc), and how it was found."""
    from .connect import requested_address

    ray = sys.modules.get("ray")
    attached = ray is not None and ray.is_initialized()
    target = requested_address(address)
    if target is None and not attached:
        view = local_view()
        where = "this machine, as a private cluster (Ray not started)"
    else:
        from .connect import connect

        connect(address, progress=False)
        view = ClusterView.current()
        where = f"Ray cluster at {ray_address()} (read only)"
        if not attached:
            import ray as ray_module

            ray_module.shutdown()
    memory = sum(n.get("memory", 0.0) for n in view.nodes) / GiB
    return view, (
        f"{where}: {view.cpus:g} CPUs, {view.gpus:g} GPUs, {len(view.nodes)} node(s), "
        f"{memory:.0f} GiB actor memory"
    )


def ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def output_state(out) -> tuple[bool, dict]:
    """(whether the output folder exists, its committed rows by id), read only."""
    info = out.fs.get_file_info(out.root)
    if info.type == pafs.FileType.NotFound:
        return False, {}
    return True, out.finished()


def dry_run(job) -> DryRun:
    """A `ShardedJob` after its `check`: plan for the cluster view, check the folder's
    settings, and ask the job for its estimate (`ShardedJob.estimate`)."""
    from ..io.output_dir import OutputDir

    t0 = time.perf_counter()
    config = job.config
    out = OutputDir(config.output, kind=job.kind)
    exists, finished = output_state(out)
    view, where = cluster_view(config.ray_address)
    with assume_cluster(view):
        plan = job.plan()
        layout = job.layout(plan)
    out.check_settings(layout)
    estimate = job.estimate(finished, plan)
    state = (
        f"exists, {len(finished):,} committed row(s)"
        if exists
        else "does not exist (a run creates it)"
    )
    return DryRun(
        job=job.label,
        input=config.input,
        output=f"{config.output} ({state})",
        cluster=where,
        plan=plan,
        estimate=estimate,
        notes=list(getattr(job, "dry_run_notes", [])),
        wall_s=time.perf_counter() - t0,
    )
