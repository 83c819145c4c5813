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
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field

from selva_core.qa import QAThresholds
from selva_core.qa.metrics import CLIP_LEVEL, SILENCE_DBFS, TRUE_PEAK_OVERSAMPLING

from .. import validate
from ..config_file import config_record
from ..io.output_dir import OutputDir, ShardTracker
from ..io.results_schema import RESULTS_VERSION
from ..runtime import model_pool
from ..summary import ClipCounts
from ..validate import read_input_catalog
from .desync_stage import DesyncActor, DesyncSettings, actor_kwargs
from .stages import measure_batch, write_batch

log = logging.getLogger(__name__)
GiB = 1 << 30
PROGRESS_EVERY_S = 10.0


@dataclass
class QAConfig:
    input: str
    output: str
    thresholds: QAThresholds = field(default_factory=QAThresholds)
    max_duration: float = 600.0  # seconds measured per clip from its start (catalog wins)
    shard_size: int = 64
    decode_cpus: float = 1.0
    decode_memory_gb: float = 1.0
    # DeSync: None skips it (desync_s stays null); "synchformer" (published weights) or "tiny"
    desync_variant: str | None = "synchformer"
    desync_precision: str = "fp32"
    device: str = "auto"  # DeSync actors: auto (cuda when the cluster has GPUs), cpu, cuda
    actors: int | None = None  # DeSync actors; None: one per GPU (per gpus_per_actor), else 1
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    actor_memory_gb: float | None = None  # heap reserved per actor; None: by model size
    desync_batch_size: int = 4  # clips per actor call
    weights_dir: str | None = None
    offline: bool = False
    retry_errors: bool = False
    fail_on_error: bool = False
    ray_address: str | None = None
    allow_roots: list[str] | None = None  # manifest rows may point here; None: its folder
    progress: bool = True
    flags: dict | None = None  # the command line's settings (`--print-config`), to _meta.json

    def desync_settings(self) -> DesyncSettings | None:
        if self.desync_variant is None:
            return None
        return DesyncSettings(
            self.desync_variant,
            precision=self.desync_precision,
            weights_dir=self.weights_dir,
            offline=self.offline,
        )

    def settings(self) -> dict:
        """What the stored numbers depend on; a folder made with other values is refused.
        Resolves the DeSync weights (MissingWeightsError when they cannot be had)."""
        desync = self.desync_settings()
        return {
            "job": "qa",
            "max_duration": self.max_duration,
            "thresholds": self.thresholds.describe(),
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
    output: str
    catalog: int = 0
    ok: int = 0
    failed: int = 0
    flagged: int = 0
    skipped: int = 0
    failed_before: int = 0  # failed in an earlier run: skipped unless --retry-errors
    wall_s: float = 0.0
    errors_by_stage: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)
    has_errors_folder: bool = False

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
            self.where_text(f"results in {self.output.rstrip('/')}/results/")
            + f"; `selva-ray report {self.output}` for a page",
        ]


def run_qa(config: QAConfig, *, catalog: tuple | None = None) -> QASummary:
    """Run the job. `catalog`: (records, problems) the caller already read from
    `config.input` (the command does, before importing this module)."""
    t0 = time.perf_counter()
    # The catalog is read before the weights are resolved and the output folder is claimed.
    records, problems = catalog or read_input_catalog(
        config.input,
        max_duration=config.max_duration,
        allow_roots=config.allow_roots,
        default_prompt="",  # QA measures tracks: a manifest needs no prompt column
    )
    settings = config.settings()
    validate.check_output_writable(config.output)
    out = OutputDir(config.output, kind="results")
    with out.acquire_lease():
        return _run_qa(config, out, settings, t0, records, problems)


def _run_qa(
    config: QAConfig, out: OutputDir, settings: dict, t0: float, records: list, problems: list
) -> QASummary:
    digest = settings_hash(settings)
    out.claim({"kind": "qa", "settings": settings, "settings_hash": digest})
    out.recover()
    if config.retry_errors:
        log.info("retrying failed clips: removed %d error file(s)", out.clear_errors())

    finished = out.finished()
    todo = [r for r in records if r.id not in finished]
    new_problems = [p for p in problems if p.id not in finished]
    ids = [r.id for r in records] + [p.id for p in problems]
    summary = QASummary(
        output=config.output,
        catalog=len(records) + len(problems),
        skipped=sum(i in finished and finished[i].kind != "errors" for i in ids),
        failed_before=sum(i in finished and finished[i].kind == "errors" for i in ids),
    )
    run = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:6]
    log.info(
        "%d clips in catalog, %d to do, %d already done",
        summary.catalog,
        len(todo),
        summary.skipped,
    )
    if new_problems:
        out.record_catalog_problems(f"{run}-catalog", new_problems, digest)
        summary.failed += len(new_problems)
        summary.errors_by_stage["catalog"] = len(new_problems)
    if todo:
        tracker, flags = _run_pipeline(config, out, todo, run, digest)
        summary.ok += tracker.ok
        summary.failed += sum(tracker.failed.values())
        for stage, n in tracker.failed.items():
            summary.errors_by_stage[stage] = summary.errors_by_stage.get(stage, 0) + n
        summary.flagged = flags.pop("", 0)
        summary.flags = dict(flags)
    summary.wall_s = time.perf_counter() - t0
    summary.has_errors_folder = bool(out.part_files(errors=True))
    out.record_run(
        {
            "run": run,
            "finished_at": time.time(),
            "config": config_record(config),
            **asdict(summary),
            "clips_per_s": summary.clips_per_s,
        }
    )
    return summary


def _actor_plan(config: QAConfig) -> dict:
    """DeSync actors: one per GPU when the cluster has GPUs (and the device allows), else
    `actors` (default 1) on CPUs."""
    from ..runtime import cluster_gpus

    gpus = cluster_gpus() if config.device in ("auto", "cuda") else 0.0
    use_gpu = gpus > 0 and not config.device.startswith("cpu")
    if config.actors is not None:
        actors = config.actors
    elif use_gpu:
        actors = max(1, int(gpus // config.gpus_per_actor))
    else:
        actors = 1
    memory = config.actor_memory_gb
    if memory is None:
        memory = 1.5 if config.desync_settings().variant == "tiny" else 4.0
    actor_memory = int(memory * GiB)
    decode_memory = int(config.decode_memory_gb * GiB)
    if decode_memory == actor_memory and not use_gpu:
        # identical remote args would let Ray fuse the measure tasks into the actors; decoding
        # must stay on its own CPU tasks so it scales apart from the model
        decode_memory -= 1 << 20
    return {
        "actors": actors,
        "num_gpus": config.gpus_per_actor if use_gpu else 0,
        "device": "cuda" if use_gpu else "cpu",
        "memory": actor_memory,
        "decode_memory": decode_memory,
    }


def _run_pipeline(
    config: QAConfig, out: OutputDir, todo: list, run: str, digest: str
) -> tuple[ShardTracker, Counter]:
    import ray

    from ..runtime import init_ray

    init_ray(config.ray_address, progress=config.progress)
    rows = []
    for i, record in enumerate(todo):
        row = record.to_row()
        row["shard"] = f"{run}-{i // config.shard_size:05d}"
        rows.append(row)
    expected = Counter(r["shard"] for r in rows)
    log.info("%d clips in %d shard(s)", len(rows), len(expected))

    desync = config.desync_settings()
    plan = _actor_plan(config) if desync is not None else None
    if plan is not None:
        log.info("DeSync (%s): %d actor(s) on %s", desync.variant, plan["actors"], plan["device"])

    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 1000))
    ds = ds.map_batches(
        measure_batch,
        fn_kwargs={
            "max_duration": config.max_duration,
            "thresholds": config.thresholds.describe(),
            "settings_hash": digest,
            "desync": desync is not None,
        },
        batch_size=1,
        num_cpus=config.decode_cpus,
        memory=plan["decode_memory"] if plan else int(config.decode_memory_gb * GiB),
    )
    if desync is not None:
        ds = ds.map_batches(
            DesyncActor,
            fn_constructor_kwargs=actor_kwargs(
                desync,
                device=plan["device"] if config.device == "auto" else config.device,
                thresholds=config.thresholds.describe(),
            ),
            batch_size=config.desync_batch_size,
            batch_format="pyarrow",
            compute=model_pool(plan["actors"]),
            num_gpus=plan["num_gpus"],
            num_cpus=config.cpus_per_actor,
            memory=plan["memory"],
        )
    ds = ds.map_batches(
        write_batch,
        fn_kwargs={"output": config.output, "settings_hash": digest},
        batch_size=config.shard_size,
        batch_format="pyarrow",
        num_cpus=1,
    )

    tracker = ShardTracker(out, expected)
    flags: Counter = Counter()
    t_start = last = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for shard, status, stage, clip_flags in zip(
            batch["shard"].to_pylist(),
            batch["status"].to_pylist(),
            batch["stage"].to_pylist(),
            batch["flags"].to_pylist(),
            strict=True,
        ):
            tracker.add(shard, status, stage)
            if status == "ok" and clip_flags:
                flags[""] += 1
                flags.update(clip_flags.split(","))
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S:
            last = now
            rate = tracker.done / (now - t_start)
            left = len(rows) - tracker.done
            log.info(
                "qa: %d done, %d failed, %d left, %.2f clips/s, ETA %.0f s",
                tracker.ok,
                sum(tracker.failed.values()),
                left,
                rate,
                left / rate if rate > 0 else float("nan"),
            )
    tracker.finish()
    return tracker, flags
