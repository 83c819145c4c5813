"""The run skeleton of every resumable Ray Data job:

    check (driver only: settings, catalog, weights; nothing written, no Ray)
    [--dry-run: plan for the cluster view, print the estimate, stop (`runner.dry_run`)]
    -> connect -> plan -> lease -> claim -> recover -> finished -> run -> problems -> record

A job supplies its settings and stages through the `ShardedJob` hooks; the skeleton owns the
order, the output folder's ledger, the catalog problems' error rows, the counts and the run
record in `_meta.json` (with the plan and the cluster it ran on)."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

from ..io.catalog import absolute
from ..io.output_dir import OutputDir
from .connect import connect
from .drive import Tally, drive
from .plan import Plan

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    """A dataset whose last stage reports status rows, and how many rows each shard expects."""

    ds: object
    expected: Counter
    batch_size: int = 0  # generator batch size, for the batch fill (0: not a generator)


@dataclass
class Selection:
    """What a run does: rows to compute (job-shaped), catalog problems to record as error
    rows, and anything else the job's `pipelines` needs."""

    todo: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def new_run_id() -> str:
    return time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:6]


class ShardedJob:
    """A job as the skeleton runs it. Subclasses set `label` and `kind` (the output folder's
    main table) and implement the hooks; `config` has output, ray_address, progress and
    retry_errors."""

    label = "job"
    kind = "results"
    sweep: tuple[str, ...] = ()  # output subfolders whose hidden partial files are removed
    layout_needs_plan = False

    def __init__(self, config):
        self.config = config

    # ---- hooks ----------------------------------------------------------------------------

    def check(self) -> None:
        """Driver-side checks and input reading; raise UsageError, write nothing."""

    def plan(self) -> Plan | None:
        """The actor plan, once connected (None: no model actors)."""
        return None

    def layout(self, plan: Plan | None) -> dict:
        """What `_meta.json` records and a rerun must match: kind, settings, settings_hash."""
        raise NotImplementedError

    def select(self, out: OutputDir, summary) -> Selection:
        """After recovery: what to do; fills the summary's catalog/skipped counts."""
        raise NotImplementedError

    def pipelines(self, selection: Selection, plan: Plan | None, run: str) -> list[Pipeline]:
        raise NotImplementedError

    def new_summary(self):
        raise NotImplementedError

    def finish(self, summary, tally: Tally, pipelines: list[Pipeline]) -> None:
        """Job-specific counts from the tally (flags, batch fill)."""

    def estimate(self, finished: dict, plan: Plan | None) -> dict:
        """`--dry-run`: the work a run would do, as printed lines (name -> number), given
        the output folder's committed rows (`OutputDir.finished`). Reads, never writes."""
        return {}

    # ---- the skeleton -----------------------------------------------------------------------

    def run(self):
        t0 = time.perf_counter()
        # workers resolve paths in their own working folder: hand them absolute ones
        self.config = config = replace(
            self.config, input=absolute(self.config.input), output=absolute(self.config.output)
        )
        self.check()
        if getattr(config, "dry_run", False):
            from .dry_run import dry_run

            report = dry_run(self)
            report.wall_s = time.perf_counter() - t0
            return report
        out = OutputDir(config.output, kind=self.kind)
        layout = None if self.layout_needs_plan else self.layout(None)
        if layout is not None:
            out.check_settings(layout)
        out.finished()  # a corrupt part file is named now, before the folder is claimed
        connection = connect(config.ray_address, progress=config.progress)
        plan = self.plan()
        if plan is not None:
            log.info("%s %s", self.label, plan.summary())
        if layout is None:
            layout = self.layout(plan)
            out.check_settings(layout)
        self.settings_hash = layout["settings_hash"]  # what the stages stamp on their rows
        with out.acquire_lease():
            out.claim(layout)
            out.recover()
            if self.sweep:
                out.sweep_partial_files(*self.sweep)
            if config.retry_errors:
                log.info("retrying failed clips: removed %d error file(s)", out.clear_errors())
            summary = self.new_summary()
            run = new_run_id()
            selection = self.select(out, summary)
            if selection.problems:
                out.record_catalog_problems(
                    f"{run}-catalog", selection.problems, layout["settings_hash"]
                )
                summary.failed += len(selection.problems)
                summary.errors_by_stage["catalog"] = len(selection.problems)
            tally = Tally()
            pipes: list[Pipeline] = []
            if selection.todo:
                pipes = self.pipelines(selection, plan, run)
                for pipe in pipes:
                    tally.add(drive(pipe.ds, out, pipe.expected, label=self.label))
            summary.ok += tally.ok
            summary.failed += sum(tally.failed.values())
            for stage, n in tally.failed.items():
                summary.errors_by_stage[stage] = summary.errors_by_stage.get(stage, 0) + n
            self.finish(summary, tally, pipes)
            summary.wall_s = time.perf_counter() - t0
            summary.has_errors_folder = bool(out.part_files(errors=True))
            final = getattr(self, "final_plan", None) or plan  # a job may replan for its todo
            out.record_run(self.record(run, summary, final, connection.describe()))
        return summary

    def record(self, run: str, summary, plan: Plan | None, connection: dict) -> dict:
        from ..config_file import config_record

        return {
            "run": run,
            "finished_at": time.time(),
            "config": config_record(self.config),
            "plan": plan.describe() if plan is not None else None,
            "ray": connection,
            **asdict(summary),
            "clips_per_s": summary.clips_per_s,
        }
