"""Feature extraction of a video catalog on Ray Data, into a resumable Parquet dataset.

catalog -> skip finished ids -> shards -> decode (CPU tasks) -> encode (model actors)
-> write (fragments) -> the driver commits each shard once all of its clips are accounted for.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

from selva_core.variants import get_spec

from .. import validate
from ..io.catalog import CatalogProblem, check_not_empty, read_catalog, split_problems
from ..io.feature_schema import FeatureLayout
from ..io.identity import plan_redo
from ..io.output_dir import OutputDir
from ..io.windows import (
    WindowSettings,
    check_long_settings,
    clip_extents,
    plan_rows,
    stale_windows,
    window_id,
)
from ..runner.plan import Plan, plan_one_model
from ..runner.skeleton import Pipeline, Selection, ShardedJob
from ..runner.stages import Stage, apply
from ..stages.decode import decode_args, decode_batch
from ..stages.encode import FeatureEncoder
from ..summary import ClipCounts
from .config import ExtractConfig, check_weights
from .stages import write_batch

log = logging.getLogger(__name__)


@dataclass
class ExtractSummary(ClipCounts):
    warnings: int = 0  # catalog problems that are not clips (prompts.txt lines, symlink loops)

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_stage.items()))
        first = (
            f"catalog {self.catalog} clips: {self.ok} ok, {self.failed} failed"
            + (f" ({stages})" if stages else "")
            + f", {self.skipped} skipped (already done)"
        )
        if self.failed_before:
            first += f", {self.failed_before} failed before (--retry-errors redoes them)"
        if self.redone:
            first += f"; {self.redone} redone (input changed)"
        if self.warnings:
            first += f"; {self.warnings} catalog warning(s)"
        where = f"features in {self.output}"
        if self.has_errors_folder:
            where += f", errors in {self.folder_text('errors')}"
        return [first, f"wall time {self.wall_s:.1f} s, {self.clips_per_s:.2f} clips/s", where]


def check_config(config: ExtractConfig) -> None:
    """Every setting that can be checked without the catalog, the cluster or a model."""
    if not 0 < config.max_duration <= validate.MAX_CLIP_SECONDS:
        raise validate.UsageError(
            f"--max-duration must be in (0, {validate.MAX_CLIP_SECONDS:g}], got "
            f"{config.max_duration}"
        )
    for name in ("batch_size", "shard_size"):
        if int(getattr(config, name)) < 1:
            raise validate.UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if config.actors is not None and config.actors < 1:
        raise validate.UsageError("--actors must be >= 1")
    validate.check_variant(config.variant)
    check_long_settings(config)
    validate.check_device(config.device, local=validate.local_cluster(config.ray_address))
    validate.check_output_writable(config.output)
    check_weights(config)


class ExtractJob(ShardedJob):
    """decode (CPU tasks) -> encode (model actors) -> write (CPU tasks)."""

    label = "extract"
    kind = "features"

    def check(self) -> None:
        config = self.config
        check_config(config)
        self.records, self.problems = read_catalog(
            config.input,
            max_duration=config.max_duration,
            allow_roots=config.allow_roots,
            require_prompt=validate.prompt_required(config.variant),
        )
        check_not_empty(config.input, self.records, self.problems)
        self.spec = get_spec(config.variant)
        self.windows = WindowSettings.for_run(config.window, config.overlap, config.max_duration)
        self.features = FeatureLayout.for_run(
            self.spec,
            max_duration=config.max_duration,
            storage_dtype=config.storage_dtype,
            with_audio_latents=config.with_audio_latents,
            frame_rule=config.frame_rule,
            ignore_rotation=config.ignore_rotation,
            window=self.windows.window,
            overlap=self.windows.overlap,
        )

    def layout(self, plan: Plan | None) -> dict:
        return self.features.describe()

    def plan(self, batches: int | None = None) -> Plan:
        """Encoder actors; `batches`: this run's encoder batches, which cap them."""
        memory = 1.5 if self.spec.is_tiny else 10.0
        return plan_one_model(
            self.config, "encoder", memory_gb=memory, precision=self.config.precision, most=batches
        )

    def estimate(self, finished: dict, plan: Plan | None) -> dict:
        config = self.config
        extents = clip_extents(self.records, self.windows, self.spec, config.max_duration)
        rows = clips = long_clips = 0
        seconds = 0.0
        for r, (span, windows) in zip(self.records, extents, strict=True):
            ids = [window_id(r.id, k) for k in range(windows)] if windows else [r.id]
            left = [i for i in ids if i not in finished]
            if not left:
                continue
            clips += 1
            long_clips += bool(windows)
            rows += len(left)
            seconds += span * len(left) / len(ids)
        return {
            "catalog clips": len(self.records),
            "catalog problems (error rows)": len(split_problems(self.problems)[0]),
            "clips to do": clips,
            "long videos cut into windows": long_clips,
            "feature rows to compute (clips + windows)": rows,
            "encoder batches": math.ceil(rows / config.batch_size),
            "shards": math.ceil(rows / config.shard_size),
            "video seconds to decode and encode": seconds,
        }

    def new_summary(self) -> ExtractSummary:
        return ExtractSummary(output=self.config.output)

    def select(self, out: OutputDir, summary: ExtractSummary) -> Selection:
        items = plan_rows(self.records, self.config, self.windows, self.spec)
        todo, new_problems = _plan(out, items, self.problems, summary)
        return Selection(todo, new_problems)

    def pipelines(self, selection: Selection, plan: Plan | None, run: str) -> list[Pipeline]:
        import ray

        config, spec = self.config, self.spec
        rows = _shards(selection.todo, config.shard_size, run)
        expected = Counter(r["shard"] for r in rows)
        batches = math.ceil(len(rows) / config.batch_size)
        plan = self.final_plan = self.plan(batches)
        log.info(
            "%d clips in %d shard(s), %d encoder batch(es) of up to %d on %d actor(s)",
            len(rows),
            len(expected),
            batches,
            config.batch_size,
            plan["encoder"].actors,
        )
        audio_rate = spec.sampling_rate if config.with_audio_latents else None
        stages = [
            Stage(
                "decode",
                decode_batch,
                batch_size=1,
                kwargs=decode_args(
                    spec, config, audio_rate=audio_rate, ignore_rotation=config.ignore_rotation
                ),
                num_cpus=plan.task_cpus,
                memory=plan.task_memory,
            ),
            Stage(
                "encode",
                FeatureEncoder,
                batch_size=config.batch_size,
                kwargs={
                    "layout": self.features,
                    "device": plan["encoder"].device,
                    "precision": plan.precision,
                    "weights_dir": config.weights_dir,
                    "allow_download": False if config.offline else None,
                    "components_factory": config.components_factory,
                },
                actors=plan["encoder"],
            ),
            Stage(
                "write",
                write_batch,
                batch_size=config.shard_size,
                kwargs={"output": config.output, "layout": self.features},
            ),
        ]
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 1000))
        return [Pipeline(apply(ds, stages), expected)]


def run_extract(config: ExtractConfig) -> ExtractSummary:
    """Run the job. Unusable input or settings raise `validate.UsageError` (a one-line
    message) before anything is written or any cluster or model starts."""
    return ExtractJob(config).run()


def _plan(
    out: OutputDir,
    records: list[dict],
    problems: list[CatalogProblem],
    summary: ExtractSummary,
) -> tuple[list[dict], list[CatalogProblem]]:
    """What to compute: new clips, and clips whose committed row came from another catalog row
    (their old rows are deleted first, so no reader ever sees two rows for one id)."""
    finished = out.finished()
    clip_problems, summary.warnings = split_problems(problems)
    summary.catalog = len({r.get("parent_id") or r["id"] for r in records}) + len(clip_problems)
    items = [(r, r["id"], r["input_hash"]) for r in records]
    items += [(p, p.id, p.input_hash or None) for p in clip_problems]
    redo = plan_redo(finished, {cid: digest for _, cid, digest in items}, "features")
    summary.skipped = sum(cid in redo.done for _, cid, _ in items)
    summary.failed_before = sum(cid in redo.failed for _, cid, _ in items)
    skip = redo.done | redo.failed
    left = [item for item, cid, _ in items if cid not in skip]
    todo = [item for item in left if isinstance(item, dict)]
    new_problems = [item for item in left if not isinstance(item, dict)]
    stale = set(redo.stale)
    stale |= stale_windows(finished, records, stale)
    if stale:
        removed = out.remove_ids(stale, finished)
        summary.redone = len(stale)
        log.info("%d clip(s) changed in the catalog: removed %d old row(s)", len(stale), removed)
    log.info(
        "%d clips in catalog, %d to do, %d already done, %d failed before",
        summary.catalog,
        len(todo) + len(new_problems),
        summary.skipped,
        summary.failed_before,
    )
    return todo, new_problems


def _shards(todo: list[dict], size: int, run: str) -> list[dict]:
    rows = []
    for i, item in enumerate(todo):
        row = dict(item)
        row.pop("catalog_duration", None)
        row["shard"] = f"{run}-{i // size:05d}"
        rows.append(row)
    return rows
