"""QA of an existing catalog on Ray Data: measure every clip's own audio track and write the
same results table a generation run writes (so `report` and `inspect` work on both).

catalog -> skip finished ids -> shards -> measure (CPU tasks: decode + metrics + DeSync
inputs) -> DeSync (Synchformer actors, one per GPU by default) -> write (fragments) -> the
driver commits each shard once all of its clips are accounted for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

from selva_core.qa.metrics import CLIP_LEVEL, SILENCE_DBFS, TRUE_PEAK_OVERSAMPLING

from .. import validate
from ..io.identity import QA_FIELDS, plan_redo, stamp_rows
from ..io.output_dir import OutputDir
from ..io.results_schema import RESULTS_VERSION
from ..runner.plan import Plan, plan_one_model
from ..runner.skeleton import Pipeline, Selection, ShardedJob
from ..runner.stages import Stage, apply
from ..stages.desync import DesyncActor, actor_kwargs
from ..stages.results import write_batch
from ..summary import ClipCounts
from ..validate import read_input_catalog
from .config import QAConfig
from .stages import measure_batch

log = logging.getLogger(__name__)
GiB = 1 << 30


def qa_settings(config: QAConfig) -> dict:
    """What the stored numbers depend on; a folder made with other values is refused.
    Resolves the DeSync weights (MissingWeightsError when they cannot be had)."""
    desync = config.desync_settings()
    return {
        "job": "qa",
        "max_duration": config.max_duration,
        "thresholds": config.thresholds.describe(),
        "clip_level": CLIP_LEVEL,
        "silence_dbfs": SILENCE_DBFS,
        "true_peak_oversampling": TRUE_PEAK_OVERSAMPLING,
        "results_version": RESULTS_VERSION,
        "desync": desync.describe() if desync is not None else None,
    }


def settings_hash(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class QASummary(ClipCounts):
    flagged: int = 0
    flags: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_stage.items()))
        flags = ", ".join(f"{k}: {v}" for k, v in sorted(self.flags.items()))
        return [
            f"catalog {self.catalog} clips: {self.ok} ok ({self.flagged} flagged"
            + (f": {flags}" if flags else "")
            + f"), {self.failed} failed"
            + (f" ({stages})" if stages else "")
            + f", {self.skipped} skipped (already done)"
            + self.failed_before_text(),
            f"wall time {self.wall_s:.1f} s, {self.clips_per_s:.2f} clips/s",
            self.where_text(f"results in {self.folder_text('results')}")
            + f"; `selva-ray report {self.output}` for a page",
        ]


class QAJob(ShardedJob):
    """measure (CPU tasks) -> DeSync (model actors; not with --no-desync) -> write."""

    label = "qa"
    kind = "results"

    def __init__(self, config: QAConfig, catalog: tuple | None = None):
        super().__init__(config)
        self.catalog = catalog

    def check(self) -> None:
        config = self.config
        # The catalog is read before the weights are resolved and the folder is claimed.
        self.records, self.problems = self.catalog or read_input_catalog(
            config.input,
            max_duration=config.max_duration,
            allow_roots=config.allow_roots,
            default_prompt="",  # QA measures tracks: a manifest needs no prompt column
        )
        if config.check_weights and config.desync_variant is not None:
            validate.check_weights(  # a missing Synchformer named at once, with its fetch
                "tiny",
                config.weights_dir,
                offline=config.offline,
                keys=validate.desync_weight_keys(config.desync_variant, config.desync),
            )
        self.rows = stamp_rows([r.to_row() for r in self.records], QA_FIELDS)
        self.settings = qa_settings(config)
        validate.check_output_writable(config.output)

    def layout(self, plan: Plan | None) -> dict:
        return {
            "kind": "qa",
            "settings": self.settings,
            "settings_hash": settings_hash(self.settings),
        }

    def plan(self, batches: int | None = None) -> Plan | None:
        """DeSync actors (none without DeSync); `batches`: this run's DeSync batches, which
        cap them."""
        config = self.config
        desync = config.desync_settings()
        if desync is None:
            return None
        memory = 1.5 if desync.variant == "tiny" else 4.0
        return plan_one_model(
            config, "desync", memory_gb=memory, precision=config.desync_precision, most=batches
        )

    def estimate(self, finished: dict, plan: Plan | None) -> dict:
        config = self.config
        todo = sum(r.id not in finished for r in self.records)
        desync = config.desync_settings() is not None
        return {
            "catalog clips": len(self.records),
            "catalog problems (error rows)": len(self.problems),
            "clips to measure": todo,
            "DeSync batches": math.ceil(todo / config.desync_batch_size) if desync else 0,
            "shards": math.ceil(todo / config.shard_size),
        }

    def new_summary(self) -> QASummary:
        return QASummary(output=self.config.output)

    def select(self, out: OutputDir, summary: QASummary) -> Selection:
        finished = out.finished()
        wanted = {r["id"]: r["input_hash"] for r in self.rows}
        wanted.update({p.id: p.input_hash or None for p in self.problems})
        redo = plan_redo(finished, wanted, "results")
        summary.catalog = len(wanted)
        summary.skipped, summary.failed_before = len(redo.done), len(redo.failed)
        if redo.stale:
            summary.redone = len(redo.stale)
            out.remove_ids(redo.stale, finished)
            log.info("%d clip(s) changed since they were measured: measured again", len(redo.stale))
        skip = redo.done | redo.failed
        todo = [r for r in self.rows if r["id"] not in skip]
        log.info(
            "%d clips in catalog, %d to do, %d already done", len(wanted), len(todo), len(redo.done)
        )
        return Selection(todo, [p for p in self.problems if p.id not in skip])

    def pipelines(self, selection: Selection, plan: Plan | None, run: str) -> list[Pipeline]:
        import ray

        config = self.config
        digest = self.settings_hash
        rows = []
        for i, item in enumerate(selection.todo):
            row = dict(item)
            row["shard"] = f"{run}-{i // config.shard_size:05d}"
            rows.append(row)
        expected = Counter(r["shard"] for r in rows)
        log.info("%d clips in %d shard(s)", len(rows), len(expected))
        desync = config.desync_settings()
        if desync is not None:
            batches = math.ceil(len(rows) / config.desync_batch_size)
            plan = self.final_plan = self.plan(batches)
            log.info(
                "%d DeSync batch(es) of up to %d on %d actor(s)",
                batches,
                config.desync_batch_size,
                plan["desync"].actors,
            )
        stages = [
            Stage(
                "measure",
                measure_batch,
                batch_size=1,
                kwargs={
                    "max_duration": config.max_duration,
                    "thresholds": config.thresholds.describe(),
                    "settings_hash": digest,
                    "desync": desync is not None,
                },
                num_cpus=config.decode_cpus,
                memory=plan.task_memory if plan else int(config.decode_memory_gb * GiB),
            )
        ]
        if desync is not None:
            stages.append(
                Stage(
                    "desync",
                    DesyncActor,
                    batch_size=config.desync_batch_size,
                    kwargs=actor_kwargs(
                        desync,
                        device=plan["desync"].device,
                        thresholds=config.thresholds.describe(),
                    ),
                    actors=plan["desync"],
                    batch_format="pyarrow",
                )
            )
        stages.append(
            Stage(
                "write",
                write_batch,
                batch_size=config.shard_size,
                kwargs={"output": config.output, "settings_hash": digest},
                batch_format="pyarrow",
            )
        )
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 1000))
        return [Pipeline(apply(ds, stages), expected)]

    def finish(self, summary: QASummary, tally, pipelines) -> None:
        flags = Counter(tally.flags)
        summary.flagged = flags.pop("", 0)
        summary.flags = dict(flags)


def run_qa(config: QAConfig, *, catalog: tuple | None = None) -> QASummary:
    """Run the job. `catalog`: (records, problems) the caller already read from
    `config.input` (the command does, before importing this module)."""
    return QAJob(config, catalog).run()
