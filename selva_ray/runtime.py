"""Process-level setup shared by jobs: device and precision choice, CPU cores and threads,
and the actor pools of model stages (the Ray connection is `runner.connect`)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# What `--precision` accepts: a named dtype, or "auto" (see `resolve_dtype`).
PRECISIONS = (*DTYPES, "auto")
# CPU flags whose bf16 matmuls run natively (AMX tiles, AVX-512 BF16 dot products); without
# them oneDNN emulates bf16 through fp32 and gains little or nothing over fp32.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def native_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The native-bf16 ISA flags this CPU has, from /proc/cpuinfo and torch's own CPU probe
    (`torch.cpu.get_capabilities`, where the build has it: it also works off Linux)."""
    found = set(_cpuinfo_flags(cpuinfo)) & set(NATIVE_BF16_FLAGS)
    try:
        import torch

        caps = torch.cpu.get_capabilities()
        found |= {f for f in NATIVE_BF16_FLAGS if caps.get(f)}
    except (AttributeError, RuntimeError):
        pass
    return [f for f in NATIVE_BF16_FLAGS if f in found]


def bf16_kernel_family(cpuinfo: str = "/proc/cpuinfo") -> str:
    """Which family of bf16 kernels oneDNN runs on this CPU: "amx_bf16" (AMX tiles),
    "avx512_bf16" (AVX-512 BF16 dot products, no AMX) or "emulated" (neither). The same bf16
    network gives results that differ in their last bits from one family to another, so
    anything compared bit for bit with bf16 outputs is made per family."""
    flags = native_bf16_flags(cpuinfo)
    return flags[0] if flags else "emulated"


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True where bf16 matmuls run in hardware here (AMX or AVX-512 BF16) and torch's oneDNN
    can use them: there bf16 inference is about 3x fp32 (docs/benchmarks.md)."""
    if not native_bf16_flags(cpuinfo):
        return False
    import torch

    mkldnn = torch.backends.mkldnn
    if not mkldnn.is_available():
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else True


def resolve_dtype(precision: str | None, device: str):
    """Named precision; "auto": bf16 on a GPU and on a CPU with native bf16
    (`cpu_has_native_bf16`), fp32 on other CPUs, logged with the reason; None (the
    default): bf16 on GPU (as the official demo), fp32 on CPU."""
    import torch

    if precision == "auto":
        precision, why = auto_precision(device)
        log.info("--precision auto: %s (%s)", precision, why)
    if precision is None:
        precision = "fp32" if device == "cpu" else "bf16"
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return getattr(torch, DTYPES[precision])


def auto_precision(device: str) -> tuple[str, str]:
    """What `--precision auto` picks on `device`, and why (one short phrase)."""
    if not str(device).startswith("cpu"):
        return "bf16", f"device {device}"
    flags = native_bf16_flags()
    if flags and cpu_has_native_bf16():
        return "bf16", f"CPU with native bf16 ({', '.join(flags)})"
    if flags:
        return "fp32", f"CPU has {', '.join(flags)} but torch has no oneDNN bf16"
    return "fp32", "CPU without native bf16 (no amx_bf16 / avx512_bf16)"


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
