"""The one planner of every job: where model actors run (GPU or CPU, one rule for `--device`
auto, cpu, cuda and cuda:N), how many, and what each reserves (GPUs, CPUs, memory, torch
threads), the CPU tasks beside them, and the Ray Train worker group with its data reader.

Rules:
- GPU when `--device` is auto, cuda or cuda:N and the cluster has GPUs; `cuda`/`cuda:N` on a
  cluster without GPUs is refused. Inside an actor the device is "cuda" (the GPU Ray gave it;
  `cuda:N` names a local GPU, which an actor does not choose). `SELVA_MODELS_ON_CPU=1` keeps
  the models on the CPU while planning GPUs (tests on machines without one).
- GPU: one actor per GPU per model role unless `--actors` says otherwise, each taking its
  role's GPU share.
- Never more model actors of a role than the job has units of work for it (batches, clips):
  an actor with nothing to do would only load a model. An explicit `--actors` is kept.
- CPU: model actors hold their CPUs for the whole run, so together they take at most the
  cluster's CPUs less `TASK_RESERVE_CPUS` for the decode/load/write tasks (else those tasks
  could never be scheduled); torch threads split the node's cores between the model actors
  that compute at once (`runtime.cpu_threads`).
- Training: workers x CPUs per worker plus the data reader's CPUs must fit the nodes; an
  explicit size that does not fit is refused before Ray Train starts, naming what fits.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

from ..errors import UsageError

log = logging.getLogger(__name__)
GiB = 1 << 30
TASK_RESERVE_CPUS = 1.0  # CPUs kept free of model actors for the CPU tasks
MIN_ACTOR_CPUS = 0.1
READER_CPUS = 0.5  # a Ray Train data-reader task (one part file at a time)
MODELS_ON_CPU_ENV = "SELVA_MODELS_ON_CPU"


@dataclass(frozen=True)
class ClusterView:
    """What the planner knows of the cluster: logical CPUs and GPUs, and per alive node its
    CPUs, GPUs and `memory` resource plus the cores a model actor may use there."""

    cpus: float
    gpus: float
    nodes: tuple[dict, ...] = ()

    @classmethod
    def current(cls) -> ClusterView:
        if _assumed is not None:  # a dry run plans without (or before) a Ray connection
            return _assumed
        import ray

        from ..runtime import node_cores

        here = ray.get_runtime_context().get_node_id()
        nodes = []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            res = node.get("Resources", {})
            cpus = float(res.get("CPU", 0.0))
            cores = min(node_cores(), int(cpus)) if node.get("NodeID") == here else int(cpus)
            nodes.append(
                {
                    "cpus": cpus,
                    "gpus": float(res.get("GPU", 0.0)),
                    "memory": float(res.get("memory", 0.0)),
                    "cores": max(0, cores),
                }
            )
        total = ray.cluster_resources()
        return cls(float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0)), tuple(nodes))

    def model_slots(self, memory: int) -> int:
        """One-thread model actors the CPU nodes run side by side: each node's cores, capped
        by its `memory` resource over `memory` bytes per actor."""
        slots = 0
        for node in self.nodes:
            fit = int(node["memory"] // max(1, memory)) if node["memory"] else node["cores"]
            slots += max(0, min(node["cores"], fit))
        return max(1, slots)


_assumed: ClusterView | None = None


@contextmanager
def assume_cluster(view: ClusterView):
    """Plan against `view` instead of the connected cluster (`runner.dry_run`)."""
    global _assumed
    _assumed, before = view, _assumed
    try:
        yield view
    finally:
        _assumed = before


@dataclass(frozen=True)
class ModelRole:
    """What a job asks of one model stage; the planner turns it into an `ActorPlan`."""

    role: str  # "encoder", "generator", "desync"
    memory_gb: float  # heap reserved per actor
    actors: int | None = None  # the user's --actors; None: the rule (one per GPU / cpu_actors)
    gpu_share: float = 1.0  # GPUs per actor on a GPU cluster
    gpus_per_actor: float | None = None  # the user's --gpus-per-actor (overrides the share)
    cpus: float = 1.0  # CPUs per actor asked for
    cpu_actors: int | str = 1  # actors on CPUs when `actors` is None: a count or "per-core"
    gpu_actors: int | None = None  # actors on GPUs when `actors` is None (None: one per GPU)
    threads: bool = False  # split the node's cores between such actors (runtime.cpu_threads)
    most: int | None = None  # the job's units of work for this stage: no more actors than that


@dataclass(frozen=True)
class ActorPlan:
    role: str
    actors: int
    num_gpus: float
    num_cpus: float
    memory: int
    device: str
    in_flight: int
    cpu_share: int | None  # model actors computing at once on a node (torch threads split)
    asked: bool = False  # the user gave the count (`--actors`): kept as given

    def map_kwargs(self) -> dict:
        """Resources of the stage's `map_batches` call."""
        return {"num_gpus": self.num_gpus, "num_cpus": self.num_cpus, "memory": self.memory}


@dataclass
class Plan:
    """A job's plan: printed at start and recorded in `_meta.json`'s run record."""

    use_gpu: bool
    device: str  # torch device of the model actors
    precision: str
    actors: dict[str, ActorPlan] = field(default_factory=dict)
    task_cpus: float = 1.0
    task_memory: int = GiB
    cluster: dict = field(default_factory=dict)

    def __getitem__(self, role: str) -> ActorPlan:
        return self.actors[role]

    def for_work(self, most: dict[str, int]) -> Plan:
        """This plan for one pipeline of a run whose pipelines run one after the other: no
        more actors of a role than the `most[role]` units of work that pipeline hands it (an
        idle actor would only load its model); a count the user gave stays as given. Torch
        threads are split between the actors left."""
        actors = {
            role: a
            if a.asked or role not in most
            else replace(a, actors=max(1, min(a.actors, most[role])))
            for role, a in self.actors.items()
        }
        threaded = sum(a.actors for a in actors.values() if a.cpu_share is not None)
        actors = {
            role: a if a.cpu_share is None else replace(a, cpu_share=threaded)
            for role, a in actors.items()
        }
        return replace(self, actors=actors)

    def describe(self) -> dict:
        return {
            "device": self.device,
            "precision": self.precision,
            "use_gpu": self.use_gpu,
            "actors": {k: asdict(v) for k, v in self.actors.items()},
            "task_cpus": self.task_cpus,
            "task_memory": self.task_memory,
            "cluster": self.cluster,
        }

    def summary(self) -> str:
        parts = [
            f"{a.actors} {a.role} actor(s) ({a.num_cpus:g} CPU"
            + (f", {a.num_gpus:g} GPU" if a.num_gpus else "")
            + f", {a.memory / GiB:.1f} GiB each)"
            for a in self.actors.values()
        ]
        where = f"on {self.device} in {self.precision}"
        cluster = (
            f"cluster {self.cluster.get('cpus', 0):g} CPUs, {self.cluster.get('gpus', 0):g} GPUs"
        )
        return f"plan: {', '.join(parts) or 'no model actors'} {where}; {cluster}"


def wants_gpu(device: str, view: ClusterView) -> bool:
    """One rule for every job: GPUs when the device allows them and the cluster has some."""
    if device.startswith("cuda"):
        if view.gpus <= 0:
            raise UsageError(
                f"--device {device}: the Ray cluster has no GPUs; use --device cpu or auto"
            )
        return True
    return device == "auto" and view.gpus > 0


def actor_device(device: str, use_gpu: bool) -> str:
    if use_gpu:
        return "cpu" if os.environ.get(MODELS_ON_CPU_ENV) == "1" else "cuda"
    return "cpu" if device == "auto" or device.startswith("cuda") else device


def resolve_precision(precision: str | None, use_gpu: bool) -> str:
    """The model actors' precision: a named one; "auto" bf16 on GPUs and on CPUs with native
    bf16 (`runtime.auto_precision`), else fp32, said in the log; None bf16 on GPUs, fp32 on
    CPUs (the official code's defaults)."""
    from ..runtime import DTYPES, PRECISIONS, auto_precision

    if precision == "auto":
        chosen, why = ("bf16", "GPU actors") if use_gpu else auto_precision("cpu")
        log.info("--precision auto: %s (%s)", chosen, why)
    elif precision is None:
        chosen = "bf16" if use_gpu else "fp32"
    else:
        chosen = precision
    if chosen not in DTYPES:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {chosen!r}")
    return chosen


def plan_models(
    roles: list[ModelRole],
    *,
    device: str,
    precision: str | None,
    task_memory_gb: float = 1.0,
    task_cpus: float = 1.0,
    view: ClusterView | None = None,
) -> Plan:
    """Plan the model stages of a Ray Data job (module doc)."""
    view = view or ClusterView.current()
    use_gpu = wants_gpu(device, view)
    counts = {}
    for r in roles:
        if r.actors is not None:
            counts[r.role] = r.actors
        elif use_gpu:
            counts[r.role] = r.gpu_actors or max(1, int(view.gpus))
        elif r.cpu_actors == "per-core":
            counts[r.role] = view.model_slots(int(r.memory_gb * GiB))
        else:
            counts[r.role] = int(r.cpu_actors)
        if r.actors is None and r.most is not None:  # an actor with no work only loads a model
            counts[r.role] = max(1, min(counts[r.role], r.most))
    pool = sum(counts.values())
    threaded = sum(counts[r.role] for r in roles if r.threads)
    free = view.cpus - TASK_RESERVE_CPUS
    task_memory = int(task_memory_gb * GiB)
    actors = {}
    for r in roles:
        cpus = r.cpus
        if view.cpus and pool * cpus > free:
            cpus = max(MIN_ACTOR_CPUS, math.floor(free / pool * 100) / 100)
        memory = int(r.memory_gb * GiB)
        gpus = (r.gpus_per_actor or r.gpu_share) if use_gpu else 0.0
        actors[r.role] = ActorPlan(
            role=r.role,
            actors=counts[r.role],
            num_gpus=gpus,
            num_cpus=cpus,
            memory=memory,
            device=actor_device(device, use_gpu),
            in_flight=2 if use_gpu else 1,
            cpu_share=threaded if (r.threads and not use_gpu) else None,
            asked=r.actors is not None,
        )
        if task_memory == memory:
            task_memory -= 1 << 20  # identical remote args would fuse the tasks into the actors
    return Plan(
        use_gpu=use_gpu,
        device=actor_device(device, use_gpu),
        precision=resolve_precision(precision, use_gpu),
        actors=actors,
        task_cpus=task_cpus,
        task_memory=task_memory,
        cluster={"cpus": view.cpus, "gpus": view.gpus, "nodes": len(view.nodes)},
    )


def plan_one_model(
    config, role: str, *, memory_gb: float, precision: str | None, most: int | None = None
) -> Plan:
    """The plan of a job with a single model stage, from the actor flags every such job has
    (`device`, `actors`, `gpus_per_actor`, `cpus_per_actor`, `actor_memory_gb` over the
    role's `memory_gb` default, `decode_cpus`, `decode_memory_gb`). `most`: the stage's
    batches in this run, once known (an actor beyond them would never get one)."""
    model = ModelRole(
        role,
        memory_gb=config.actor_memory_gb or memory_gb,
        actors=config.actors,
        gpus_per_actor=config.gpus_per_actor,
        cpus=config.cpus_per_actor,
        most=most,
    )
    return plan_models(
        [model],
        device=config.device,
        precision=precision,
        task_memory_gb=config.decode_memory_gb,
        task_cpus=config.decode_cpus,
    )


@dataclass(frozen=True)
class TrainPlan:
    workers: int
    cpus_per_worker: float
    use_gpu: bool
    reader_cpus: float

    def describe(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        gpu = ", 1 GPU" if self.use_gpu else ""
        return (
            f"plan: {self.workers} training worker(s) ({self.cpus_per_worker:g} CPU{gpu} each), "
            f"data reader {self.reader_cpus:g} CPU"
        )


def plan_training(
    workers: int,
    cpus_per_worker: float | None,
    *,
    use_gpu: bool,
    view: ClusterView | None = None,
) -> TrainPlan:
    """Fit the worker group and its data reader into the cluster, or refuse with what fits.
    `cpus_per_worker` None: an even share of what the reader leaves (at most 1 CPU)."""
    view = view or ClusterView.current()
    if use_gpu and workers > int(view.gpus):
        raise UsageError(
            f"--workers {workers} --use-gpu: the Ray cluster has {view.gpus:g} GPU(s); at most "
            f"{int(view.gpus)} GPU worker(s) fit"
        )
    nodes = sorted((n["cpus"] for n in view.nodes), reverse=True) or [view.cpus]
    if cpus_per_worker is None:
        share = (sum(nodes) - READER_CPUS) / workers
        cpus_per_worker = max(MIN_ACTOR_CPUS, min(1.0, math.floor(share * 100) / 100))
    # the reader goes on the largest node; workers pack into what is left on every node
    room = [nodes[0] - READER_CPUS, *nodes[1:]]
    fits = sum(int(max(0.0, r) // cpus_per_worker + 1e-9) for r in room)
    if fits < workers:
        raise UsageError(
            f"--workers {workers} x {cpus_per_worker:g} CPU does not fit the Ray cluster "
            f"({sum(nodes):g} CPUs on {len(nodes)} node(s), {READER_CPUS:g} kept for the data "
            f"reader): at most {fits} worker(s) of {cpus_per_worker:g} CPU fit; lower --workers "
            "or --cpus-per-worker, or add nodes"
        )
    return TrainPlan(workers, cpus_per_worker, use_gpu, READER_CPUS)
