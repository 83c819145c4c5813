"""Feature extraction of a video catalog on Ray Data, into a resumable Parquet dataset.

catalog -> skip finished ids -> shards -> decode (CPU tasks) -> encode (model actors)
-> write (fragments) -> the driver commits each shard once all of its clips are accounted for.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field

from selva_core.variants import get_spec

from ..io.catalog import CatalogProblem, ClipRecord, read_catalog
from ..io.feature_schema import FeatureLayout
from ..io.output_dir import OutputDir
from ..io.rows import error_table
from .stages import FeatureEncoder, decode_batch, write_batch

log = logging.getLogger(__name__)
GiB = 1 << 30


@dataclass
class ExtractConfig:
    input: str
    output: str
    variant: str = "small_16k"
    with_audio_latents: bool = False
    max_duration: float = 8.0
    storage_dtype: str = "float16"
    precision: str | None = None  # model precision; None: bf16 on GPU, fp32 on CPU
    device: str = "auto"
    batch_size: int = 8  # clips per encoder call
    actors: int | None = None  # encoder actors; None: one per GPU (per gpus_per_actor), else 1
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    actor_memory_gb: float | None = None  # heap reserved per actor; None: by model size
    decode_cpus: float = 1.0
    decode_memory_gb: float = 1.0
    shard_size: int = 64
    fail_on_error: bool = False
    retry_errors: bool = False
    weights_dir: str | None = None
    offline: bool = False
    ray_address: str | None = None
    frame_rule: str = "official"
    progress: bool = True


@dataclass
class ExtractSummary:
    output: str
    catalog: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    errors_by_stage: dict = field(default_factory=dict)

    @property
    def attempted(self) -> int:
        return self.ok + self.failed

    @property
    def clips_per_s(self) -> float:
        return self.attempted / self.wall_s if self.wall_s > 0 else 0.0

    def exit_code(self, fail_on_error: bool) -> int:
        """1 when asked to fail on any error, or when every attempted clip failed."""
        if self.failed and (fail_on_error or self.ok == 0):
            return 1
        return 0

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_stage.items()))
        return [
            f"catalog {self.catalog} clips: {self.ok} ok, {self.failed} failed"
            + (f" ({stages})" if stages else "")
            + f", {self.skipped} skipped (already done)",
            f"wall time {self.wall_s:.1f} s, {self.clips_per_s:.2f} clips/s",
            f"features in {self.output}, errors in {self.output.rstrip('/')}/errors/",
        ]


def run_extract(config: ExtractConfig) -> ExtractSummary:
    t0 = time.perf_counter()
    spec = get_spec(config.variant)
    layout = FeatureLayout.for_run(
        spec,
        max_duration=config.max_duration,
        storage_dtype=config.storage_dtype,
        with_audio_latents=config.with_audio_latents,
        frame_rule=config.frame_rule,
    )
    out = OutputDir(config.output)
    out.claim(layout.describe())
    out.recover()
    if config.retry_errors:
        log.info("retrying failed clips: removed %d error file(s)", out.clear_errors())

    records, problems = read_catalog(config.input, max_duration=config.max_duration)
    done = out.finished_ids()
    todo = [r for r in records if r.id not in done]
    new_problems = [p for p in problems if p.id not in done]
    summary = ExtractSummary(
        output=config.output,
        catalog=len(records) + len(problems),
        skipped=len(records) - len(todo) + len(problems) - len(new_problems),
    )
    run = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:6]
    log.info(
        "%d clips in catalog, %d to do, %d already done",
        summary.catalog,
        len(todo),
        summary.skipped,
    )
    if new_problems:
        _record_catalog_problems(out, f"{run}-catalog", new_problems, layout)
        summary.failed += len(new_problems)
        summary.errors_by_stage["catalog"] = len(new_problems)
    if todo:
        ok, failed = _run_pipeline(config, layout, out, todo, run)
        summary.ok += ok
        summary.failed += sum(failed.values())
        for stage, n in failed.items():
            summary.errors_by_stage[stage] = summary.errors_by_stage.get(stage, 0) + n
    summary.wall_s = time.perf_counter() - t0
    out.record_run(
        {"run": run, "finished_at": time.time(), "settings": asdict(config), **asdict(summary)}
    )
    return summary


def _record_catalog_problems(
    out: OutputDir, shard: str, problems: list[CatalogProblem], layout: FeatureLayout
) -> None:
    rows = [
        {
            "id": p.id,
            "source": p.source,
            "row": p.row,
            "stage": "catalog",
            "error_type": "CatalogError",
            "message": p.message,
        }
        for p in problems
    ]
    for p in problems:
        log.warning("catalog row %d (%s): %s", p.row, p.source or p.id, p.message)
    out.stage(shard, "errors", error_table(rows, layout.settings_hash))
    out.commit(shard)


def _shards(todo: list[ClipRecord], size: int, run: str, max_duration: float) -> list[dict]:
    rows = []
    for i, record in enumerate(todo):
        row = record.to_row()
        row["duration"] = record.duration or max_duration
        row["shard"] = f"{run}-{i // size:05d}"
        rows.append(row)
    return rows


def _actor_plan(config: ExtractConfig, spec_is_tiny: bool) -> dict:
    from ..runtime import cluster_gpus

    gpus = cluster_gpus() if config.device in ("auto", "cuda") else 0.0
    use_gpu = gpus > 0
    if config.actors is not None:
        actors = config.actors
    elif use_gpu:
        actors = max(1, int(gpus // config.gpus_per_actor))
    else:
        actors = 1
    memory = config.actor_memory_gb
    if memory is None:
        memory = 1.5 if spec_is_tiny else 10.0
    actor_memory = int(memory * GiB)
    decode_memory = int(config.decode_memory_gb * GiB)
    if decode_memory == actor_memory and not use_gpu:
        # Identical remote args let Ray fuse the decode tasks into the encoder actors; decode
        # must stay on its own CPU tasks so it can scale apart from the models.
        decode_memory -= 1 << 20
    return {
        "actors": actors,
        "num_gpus": config.gpus_per_actor if use_gpu else 0,
        "device": "cuda" if use_gpu else "cpu",
        "memory": actor_memory,
        "decode_memory": decode_memory,
    }


def _run_pipeline(
    config: ExtractConfig,
    layout: FeatureLayout,
    out: OutputDir,
    todo: list[ClipRecord],
    run: str,
) -> tuple[int, Counter]:
    import ray

    from ..runtime import init_ray

    init_ray(config.ray_address, progress=config.progress)
    spec = get_spec(config.variant)
    plan = _actor_plan(config, spec.is_tiny)
    rows = _shards(todo, config.shard_size, run, config.max_duration)
    expected = Counter(r["shard"] for r in rows)
    log.info(
        "%d clips in %d shard(s); %d encoder actor(s) on %s",
        len(rows),
        len(expected),
        plan["actors"],
        plan["device"],
    )

    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 1000))
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={
            "variant": spec.name,
            "max_duration": config.max_duration,
            "frame_rule": config.frame_rule,
            "audio_rate": spec.sampling_rate if config.with_audio_latents else None,
        },
        batch_size=1,
        num_cpus=config.decode_cpus,
        memory=plan["decode_memory"],
    )
    ds = ds.map_batches(
        FeatureEncoder,
        fn_constructor_kwargs={
            "layout": layout,
            "device": plan["device"] if config.device == "auto" else config.device,
            "precision": config.precision,
            "weights_dir": config.weights_dir,
            "allow_download": False if config.offline else None,
        },
        batch_size=config.batch_size,
        compute=ray.data.ActorPoolStrategy(
            min_size=1,
            max_size=plan["actors"],
            initial_size=plan["actors"],
            max_tasks_in_flight_per_actor=2,
        ),
        num_gpus=plan["num_gpus"],
        num_cpus=config.cpus_per_actor,
        memory=plan["memory"],
    )
    ds = ds.map_batches(
        write_batch,
        fn_kwargs={"output": config.output, "layout": layout},
        batch_size=config.shard_size,
        num_cpus=1,
    )

    seen: Counter = Counter()
    ok, failed = 0, Counter()
    committed = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for shard, status, stage in zip(
            batch["shard"].to_pylist(),
            batch["status"].to_pylist(),
            batch["stage"].to_pylist(),
            strict=True,
        ):
            seen[shard] += 1
            if status == "ok":
                ok += 1
            else:
                failed[stage] += 1
            if seen[shard] == expected[shard] and shard not in committed:
                commit = out.commit(shard)
                committed.add(shard)
                log.info("committed shard %s: %d ok, %d failed", shard, commit.ok, commit.failed)
    for shard in set(expected) - committed:  # rows lost upstream would leave a shard open
        log.warning(
            "shard %s saw %d/%d clips; committing what was written",
            shard,
            seen[shard],
            expected[shard],
        )
        out.commit(shard)
    out.recover()  # nothing should be left; also removes the empty staging folder
    return ok, failed
