"""Feature extraction of a video catalog on Ray Data, into a resumable Parquet dataset.

catalog -> skip finished ids -> shards -> decode (CPU tasks) -> encode (model actors)
-> write (fragments) -> the driver commits each shard once all of its clips are accounted for.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from selva_core.variants import get_spec

from .. import validate
from ..config_file import config_record
from ..io.catalog import CatalogProblem, check_not_empty, read_catalog, split_problems
from ..io.feature_schema import FeatureLayout
from ..io.output_dir import OutputDir
from ..runtime import model_pool
from ..summary import ClipCounts
from .windows import WindowSettings, check_long_settings, plan_rows, stale_windows

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
    allow_roots: list[str] | None = None  # manifest rows may point here; None: its folder
    # Benchmarks only: build the encoders by hand (real sizes, random weights),
    # `factory(device, dtype, "encoder") -> Components`.
    components_factory: Callable | None = None
    check_weights: bool = True  # look for every weight file in the driver before starting
    ignore_rotation: bool = False  # decode frames as stored (the official reader's behaviour)
    flags: dict | None = None  # the command line's settings (`--print-config`), to _meta.json
    window: float = 8.0  # videos longer than this become overlapping windows (0: cut at max)
    overlap: float = 1.0  # seconds shared by consecutive windows
    mask_strength: float = 1.0  # how far a `mask` column greys the background (0: not at all)
    mask_paths: tuple[str, ...] = ("clip", "sync")  # streams the mask applies to


@dataclass
class ExtractSummary(ClipCounts):
    output: str
    catalog: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # finished before (features present, same input)
    failed_before: int = 0  # failed before, same input: skipped unless --retry-errors
    redone: int = 0  # had a row computed from a different catalog row: computed again
    warnings: int = 0  # catalog problems that are not clips (prompts.txt lines, symlink loops)
    wall_s: float = 0.0
    errors_by_stage: dict = field(default_factory=dict)
    has_errors_folder: bool = False

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
            first += f"; {self.redone} redone (catalog row changed)"
        if self.warnings:
            first += f"; {self.warnings} catalog warning(s)"
        where = f"features in {self.output}"
        if self.has_errors_folder:
            where += f", errors in {self.output.rstrip('/')}/errors/"
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
    local = not (config.ray_address or os.environ.get("RAY_ADDRESS"))
    validate.check_device(config.device, local=local)
    validate.check_output_writable(config.output)
    if config.check_weights:
        validate.check_weights(config.variant, config.weights_dir, offline=config.offline)


def run_extract(config: ExtractConfig) -> ExtractSummary:
    """Run the job. Unusable input or settings raise `validate.UsageError` (a one-line
    message) before anything is written or any cluster or model starts."""
    t0 = time.perf_counter()
    check_config(config)
    records, problems = read_catalog(
        config.input,
        max_duration=config.max_duration,
        allow_roots=config.allow_roots,
        require_prompt=validate.prompt_required(config.variant),
    )
    check_not_empty(config.input, records, problems)
    spec = get_spec(config.variant)
    windows = WindowSettings.for_run(config.window, config.overlap, config.max_duration)
    layout = FeatureLayout.for_run(
        spec,
        max_duration=config.max_duration,
        storage_dtype=config.storage_dtype,
        with_audio_latents=config.with_audio_latents,
        frame_rule=config.frame_rule,
        ignore_rotation=config.ignore_rotation,
        window=windows.window,
        overlap=windows.overlap,
    )
    out = OutputDir(config.output)
    out.check_settings(layout.describe())
    out.finished()  # a corrupt part file is named now, before the folder is claimed

    with out.acquire_lease():
        out.claim(layout.describe())
        out.recover()
        if config.retry_errors:
            log.info("retrying failed clips: removed %d error file(s)", out.clear_errors())
        summary = ExtractSummary(output=config.output)
        run = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:6]
        items = plan_rows(records, config, windows, spec)
        todo, new_problems = _plan(out, items, problems, summary)
        if new_problems:
            out.record_catalog_problems(f"{run}-catalog", new_problems, layout.settings_hash)
            summary.failed += len(new_problems)
            summary.errors_by_stage["catalog"] = len(new_problems)
        if todo:
            ok, failed = _run_pipeline(config, layout, out, todo, run)
            summary.ok += ok
            summary.failed += sum(failed.values())
            for stage, n in failed.items():
                summary.errors_by_stage[stage] = summary.errors_by_stage.get(stage, 0) + n
        summary.wall_s = time.perf_counter() - t0
        summary.has_errors_folder = bool(out.part_files(errors=True))
        record = {"run": run, "finished_at": time.time(), "config": config_record(config)}
        out.record_run({**record, **asdict(summary)})
    return summary


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
    todo, new_problems, stale = [], [], set()
    items = [(r, r["id"], r["input_hash"]) for r in records]
    items += [(p, p.id, p.input_hash or None) for p in clip_problems]
    for item, cid, digest in items:
        done = finished.get(cid)
        if done is not None and (done.input_hash is None or done.input_hash == digest):
            if done.kind == "features":
                summary.skipped += 1
            else:
                summary.failed_before += 1
            continue
        if done is not None:
            stale.add(cid)
        (todo if isinstance(item, dict) else new_problems).append(item)
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


def _shards(todo: list[dict], size: int, run: str, max_duration: float) -> list[dict]:
    rows = []
    for i, item in enumerate(todo):
        row = dict(item)
        row.pop("catalog_duration", None)
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
    todo: list[dict],
    run: str,
) -> tuple[int, Counter]:
    import ray

    from ..runtime import init_ray
    from .stages import FeatureEncoder, decode_args, decode_batch, write_batch

    init_ray(config.ray_address, progress=config.progress)
    spec = get_spec(config.variant)
    plan = _actor_plan(config, spec.is_tiny)
    if config.device.startswith("cuda") and plan["num_gpus"] == 0:
        raise validate.UsageError(
            f"--device {config.device}: the Ray cluster has no GPUs; use --device cpu or auto"
        )
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
        fn_kwargs=decode_args(
            spec,
            config,
            audio_rate=spec.sampling_rate if config.with_audio_latents else None,
            ignore_rotation=config.ignore_rotation,
        ),
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
            "components_factory": config.components_factory,
        },
        batch_size=config.batch_size,
        compute=model_pool(plan["actors"]),
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
