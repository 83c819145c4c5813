"""Process-level setup shared by jobs: device and precision choice, Ray connection."""

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


def init_ray(
    address: str | None = None, *, progress: bool = True, num_cpus: int | None = None
) -> None:
    """Connect to `address` (or $RAY_ADDRESS, or a new local cluster of `num_cpus` logical
    CPUs) unless already connected, and set the Ray Data options every job wants."""
    import ray

    from .logs import quiet_ray_logs

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        local = address in (None, "", "local")
        quiet_ray_logs(local_cluster=local)
        extra = {}
        if local and num_cpus:  # a new cluster of our own, never one found on the machine
            address, extra = "local", {"num_cpus": num_cpus, "include_dashboard": False}
        ray.init(address=address, log_to_driver=True, **extra)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    # Fail a stuck job instead of hanging a cluster forever (the default is 30 min).
    ctx.execution_no_progress_timeout_s = 3600


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))
