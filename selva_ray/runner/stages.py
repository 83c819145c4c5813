"""Stages declared, not wired by hand: a job lists its stages (function or callable class,
resources, batch size, arguments) and `apply` turns each into one `map_batches` call, as in
Ray's batch-inference examples. A callable class is a model stage run by a fixed pool of
actors (`runtime.model_pool`: Ray Data's autoscaler would retire actors that wait for an
upstream stage); a function is a CPU task stage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .plan import ActorPlan


@dataclass(frozen=True)
class Stage:
    """One `map_batches` step. `kwargs` are the function's keyword arguments, or the class's
    constructor arguments. `actors`: the planned model actors of a callable class; `pool`:
    the size of a light actor pool (no model). `reads`/`writes`: the columns the stage needs
    and adds, for readers of the job (and checked nowhere at run time)."""

    name: str
    fn: Callable
    batch_size: int | None
    kwargs: dict = field(default_factory=dict)
    actors: ActorPlan | None = None
    pool: int | None = None
    num_cpus: float = 1.0
    memory: int | None = None
    batch_format: str | None = None
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    def map_args(self) -> dict:
        from ..runtime import model_pool

        args: dict = {"batch_size": self.batch_size}
        if self.batch_format:
            args["batch_format"] = self.batch_format
        if isinstance(self.fn, type):
            args["fn_constructor_kwargs"] = self.kwargs
            if self.actors is not None:
                args["compute"] = model_pool(self.actors.actors, self.actors.in_flight)
                args.update(self.actors.map_kwargs())
                return args
            args["compute"] = model_pool(self.pool or 1)
        else:
            args["fn_kwargs"] = self.kwargs
        args["num_cpus"] = self.num_cpus
        if self.memory is not None:
            args["memory"] = self.memory
        return args


def apply(ds, stages: list[Stage]):
    """The dataset after every stage, in order."""
    for stage in stages:
        ds = ds.map_batches(stage.fn, **stage.map_args())
    return ds
