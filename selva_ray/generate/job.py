"""Batch generation and dubbing on Ray Data: an audio track (and a dubbed video) per clip.

catalog  -> decode (CPU tasks) -> feature encoders (actors) -+
features -> feature loader (CPU tasks) ----------------------+-> generator actors -> writers
    (files + QA metrics) -> DeSync actors -> staging tasks (not with --no-desync)

Long videos (`windows`) run the same head, then a window assembler and the long-video
generator, then the same tail, as a second pipeline after the ordinary clips'.

The driver plans the work: clips that already have a committed result row and file are
skipped, the rest are sorted by sequence key (duration -> sequence lengths, steps, cfg) so
that clips which can share a generator batch travel together, and cut into shards; the
runner commits each shard once all of its clips are accounted for.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import replace

import pyarrow as pa

from selva_core.defaults import DEFAULT_VARIANT
from selva_core.variants import get_spec

from .. import validate
from ..io.feature_schema import FeatureLayout
from ..io.output_dir import OutputDir
from ..io.results_schema import COLUMN_NAMES
from ..io.windows import clip_extents, parent_of
from ..runner.plan import ModelRole, Plan, plan_models
from ..runner.skeleton import Pipeline, Selection, ShardedJob
from ..runner.stages import Stage, apply
from ..stages.decode import decode_args
from ..stages.desync import DesyncActor, actor_kwargs
from ..stages.results import write_batch
from .adapters import resolve_adapters
from .assemble import WindowAssembler
from .batching import (
    PLAN_FIELDS,
    batch_size_for,
    bucket_sizes,
    generator_memory_gb,
    order_batches,
)
from .config import (
    DEFAULT_BATCH,
    GROUP_WINDOW,
    GenerateConfig,
    GenerateInputError,
    GenerateSummary,
    check_config,
    effective_peak,
    output_settings,
    settings_digest,
)
from .inputs import (
    bad_settings,
    catalog_row,
    claim_names,
    defaults,
    feature_rows,
    features_layout,
    finished_clips,
    hash_rows,
    planned_durations,
    read_catalog,
)
from .qa_stage import (
    DESYNC_BATCH_SIZE,
    DESYNC_GPU_SHARE,
    REPORT_COLUMNS,
    desync_settings,
    min_desync_seconds,
    qa_settings,
)
from .stages import (
    AudioGenerator,
    TimedFeatureEncoder,
    TrackSettings,
    decode_stage,
    load_features,
    write_outputs,
)
from .windows import WINDOW_PLAN_COLUMNS, LongAudioGenerator, plan_long, window_settings

log = logging.getLogger(__name__)
GiB = 1 << 30


class GenerateJob(ShardedJob):
    label = "generate"
    kind = "results"
    sweep = ("audio", "video")
    layout_needs_plan = True  # the settings record the precision the plan picked

    def __init__(self, config: GenerateConfig, catalog: tuple | None = None):
        super().__init__(config)
        self.catalog = catalog

    # ---- before Ray -------------------------------------------------------------------------

    def check(self) -> None:
        config = self.config
        check_config(config)
        self.features = features_layout(config.input)
        if config.variant is None:  # a features folder supplies its variant
            made_for = self.features.variant if self.features is not None else None
            self.config = config = replace(config, variant=made_for or DEFAULT_VARIANT)
        self.spec = get_spec(config.variant)
        self.adapters = resolve_adapters(
            config.adapters, config.variant, allow_base_mismatch=config.allow_base_mismatch
        )
        if self.features is not None and self.features.variant != self.spec.name:
            raise GenerateInputError(
                f"features in {config.input} were made for variant {self.features.variant!r}, "
                f"not {self.spec.name!r}; pass --variant {self.features.variant}"
            )
        if config.check_weights:  # every missing file named at once, before DeSync's
            validate.check_generate_weights(
                config.variant,
                config.weights_dir,
                offline=config.offline,
                from_features=self.features is not None,
                negative_text=config.negative_prompt is not None,
                desync=config.desync,
            )
        self.qa = qa_settings(config)  # resolves the DeSync weights before Ray starts
        # The input is read before Ray starts and before the output folder is claimed.
        if self.features is None:
            records, problems = self.catalog or read_catalog(config)
            self.records = records
            rows = [] if config.dry_run else [catalog_row(r, config) for r in records]
            if rows:
                planned = planned_durations(records, config.max_duration)
                for row, d in zip(rows, planned, strict=True):
                    row["planned"] = d
        else:
            rows, problems = feature_rows(config.input), []
            for row in rows:
                row.update(defaults(row, config))
                row["planned"] = row["duration"]
        hash_rows(rows, config, self.features is not None)
        self.rows, self.problems = rows, problems
        validate.check_output_writable(config.output)

    # ---- plan and settings --------------------------------------------------------------------

    def roles(self, desync: bool, units: dict[str, int] | None = None) -> list[ModelRole]:
        """Generators (one per core on CPUs), feature encoders for catalog input, and DeSync
        actors when some clip is long enough to score. On GPUs the DeSync actors together take
        `DESYNC_GPU_SHARE` of a GPU and the others are scaled to leave it. `units`: each
        role's units of work (`work_units`), which cap its actors."""
        config, catalog = self.config, self.features is None
        units = units or {}
        scale = 1.0 - DESYNC_GPU_SHARE if desync else 1.0
        tiny = self.spec.name == "tiny"
        roles = [
            ModelRole(
                "generator",
                memory_gb=config.actor_memory_gb or generator_memory_gb(self.spec.name, False),
                actors=config.actors,
                gpu_share=(config.gpus_per_actor or (0.5 if catalog else 1.0)) * scale,
                cpus=config.cpus_per_actor,
                cpu_actors="per-core",
                threads=True,
                most=units.get("generator"),
            )
        ]
        if catalog:
            roles.append(
                ModelRole(
                    "encoder",
                    memory_gb=config.actor_memory_gb or (1.5 if tiny else 10.0),
                    actors=config.encoder_actors,
                    gpu_share=config.encoder_gpus * scale,
                    cpus=config.cpus_per_actor,
                    threads=True,
                    most=units.get("encoder"),
                )
            )
        if desync:
            n = config.desync_actors
            roles.append(
                ModelRole(
                    "desync",
                    memory_gb=config.actor_memory_gb
                    or (1.5 if desync_settings(config).variant == "tiny" else 4.0),
                    actors=n,
                    # Ray counts GPU shares in 1e-4 units: round down so they sum to <= 0.1
                    gpu_share=math.floor(DESYNC_GPU_SHARE / (n or 1) * 1e4) / 1e4,
                    cpus=config.cpus_per_actor,
                    most=units.get("desync"),
                )
            )
        return roles

    def make_plan(self, desync: bool, units: dict[str, int] | None = None) -> Plan:
        config = self.config
        plan = plan_models(
            self.roles(desync, units),
            device=config.device,
            precision=config.precision,
            task_memory_gb=config.decode_memory_gb,
            task_cpus=config.decode_cpus,
        )
        if plan.use_gpu and config.actor_memory_gb is None:  # a GPU actor holds less in RAM
            gen = plan["generator"]
            memory = int(generator_memory_gb(self.spec.name, True) * GiB)
            plan.actors["generator"] = type(gen)(**{**gen.__dict__, "memory": memory})
        if desync and plan.use_gpu and config.desync_actors is None:
            d = plan["desync"]
            share = math.floor(DESYNC_GPU_SHARE / d.actors * 1e4) / 1e4
            plan.actors["desync"] = type(d)(**{**d.__dict__, "num_gpus": share})
        return plan

    def plan(self) -> Plan:
        return self.make_plan(desync=False)

    def work_units(
        self, short: list[dict], long_rows: list[dict], batch: int
    ) -> tuple[dict[str, int], dict[str, int]]:
        """What each model role can be handed by each pipeline, in the bundles its stage takes
        (Ray Data gives an actor at least `batch_size` rows a call, so an actor beyond them
        would only load its models). The short clips': generator calls of `batch` x
        GROUP_WINDOW clips, encoder batches of `batch`, DeSync batches; the long videos': one
        generator call per video, encoder batches of the long pipeline's batch of windows,
        DeSync batches of videos."""
        videos = len({r["parent_id"] for r in long_rows})
        long_batch = self.config.batch_size or DEFAULT_BATCH
        short_units = {
            "generator": math.ceil(len(short) / (batch * GROUP_WINDOW)),
            "encoder": math.ceil(len(short) / batch),
            "desync": math.ceil(len(short) / DESYNC_BATCH_SIZE),
        }
        long_units = {
            "generator": videos,
            "encoder": math.ceil(len(long_rows) / long_batch),
            "desync": math.ceil(videos / DESYNC_BATCH_SIZE),
        }
        return short_units, long_units

    def layout(self, plan: Plan | None) -> dict:
        settings = {
            **output_settings(self.config, self.spec, self.adapters, plan.precision),
            **self.qa,
        }
        return {
            "kind": "generate",
            "settings": settings,
            "settings_hash": settings_digest(settings),
            "results_columns": COLUMN_NAMES,
        }

    def estimate(self, finished: dict, plan: Plan | None) -> dict:
        """Clips to do, their sequence-length buckets and generator batches, from the
        records (catalog input: no plan rows are built) or the stored features' rows."""
        config, spec = self.config, self.spec
        if self.features is None:
            todo = [r for r in self.records if r.id not in finished]
            settings = window_settings(config, None)
            extents = clip_extents(todo, settings, spec, config.max_duration)
            short = [r for r, (_, w) in zip(todo, extents, strict=True) if not w]
            planned = planned_durations(short, config.max_duration)
            steps = [config.steps if r.steps is None else r.steps for r in short]
            cfgs = [config.cfg if r.cfg is None else r.cfg for r in short]
            windows = [w for _, w in extents if w]
            seconds = sum(planned) + sum(s for s, w in extents if w)
        else:
            rows = [r for r in self.rows if r["id"] not in finished]
            planned = [r["planned"] for r in rows]
            steps, cfgs, windows = [r["steps"] for r in rows], [r["cfg"] for r in rows], []
            seconds = sum(planned)
        buckets = bucket_sizes(spec, planned, steps, cfgs)
        batch_size = batch_size_for(config, plan["generator"], len(planned))
        batches = {key: math.ceil(n / batch_size) for key, n in buckets.items()}
        largest = max(buckets, key=buckets.get, default=None)
        return {
            "catalog clips": len(self.records) if self.features is None else len(self.rows),
            "catalog problems (error rows)": len(self.problems),
            "clips to do": len(planned) + len(windows),
            "long videos (windows)": f"{len(windows):,} ({sum(windows):,} windows)",
            "sequence-length buckets": f"{len(buckets)}"
            + (f" (largest: {buckets[largest]:,} clips, key {largest})" if largest else ""),
            "generator batch size": batch_size,
            "generator batches (short clips)": sum(batches.values()),
            "sampler steps (batches x steps)": sum(b * key[3] for key, b in batches.items()),
            "shards": math.ceil(len(planned) / config.shard_size)
            + math.ceil(len(windows) / config.shard_size),
            "audio seconds to generate": seconds,
        }

    # ---- after the claim ----------------------------------------------------------------------

    def new_summary(self) -> GenerateSummary:
        kind = "features" if self.features is not None else "catalog"
        return GenerateSummary(output=self.config.output, input_kind=kind)

    def select(self, out: OutputDir, summary: GenerateSummary) -> Selection:
        config = self.config
        bad = bad_settings(self.rows)
        bad_ids = {p.id for p in bad}
        rows = [r for r in self.rows if r["id"] not in bad_ids]
        problems = self.problems + bad
        wanted = {parent_of(r["id"]): r["input_hash"] for r in rows}
        wanted.update({p.id: p.input_hash or None for p in problems})
        redo, owners = finished_clips(out, config.mux, wanted)
        done, failed_before = redo.done, redo.failed
        summary.redone = len(redo.stale)
        finished = done | failed_before
        todo = [r for r in rows if parent_of(r["id"]) not in finished]
        claim_names(todo, owners)
        new_problems = [p for p in problems if p.id not in finished]
        # long videos: window rows, one result per video (`parent_id`)
        todo, long_rows, long_problems = plan_long(todo, finished, config, self.spec, self.features)
        new_problems += long_problems
        ids = sorted({parent_of(r["id"]) for r in rows}) + [p.id for p in problems]
        summary.catalog = len(ids)
        summary.skipped = sum(i in done for i in ids)
        summary.failed_before = sum(i in failed_before and i not in done for i in ids)
        log.info(
            "%d clips in %s, %d to do, %d already done",
            summary.catalog,
            summary.input_kind,
            len(todo) + len({r["parent_id"] for r in long_rows}),
            summary.skipped,
        )
        return Selection(todo + long_rows, new_problems, {"short": todo, "long": long_rows})

    def pipelines(self, selection: Selection, plan: Plan | None, run: str) -> list[Pipeline]:
        short, long_rows = selection.extra["short"], selection.extra["long"]
        shortest = min_desync_seconds()
        planned = [r.get("planned") or 0.0 for r in short]
        planned += [r.get("parent_duration") or 0.0 for r in long_rows]
        desync = desync_settings(self.config) is not None and any(d >= shortest for d in planned)
        if desync_settings(self.config) is not None and not desync:
            log.info("no clip reaches %.1f s: DeSync is not run (desync_s null)", shortest)
        # on CPUs the batch is cut for the generators a run of this size gets (one per clip at
        # most); the final plan has no more actors than the stages can hand work to
        first = self.make_plan(desync, {"generator": max(len(short), 1)})
        self.short_batch = batch_size_for(self.config, first["generator"], len(short))
        # The two pipelines run one after the other: the plan holds the larger need of each
        # role, and each pipeline starts only the actors its own work needs.
        short_units, long_units = self.work_units(short, long_rows, self.short_batch)
        units = {role: max(n, long_units[role]) for role, n in short_units.items()}
        plan = self.make_plan(desync, units)
        self.final_plan = plan
        log.info("generate %s", plan.summary())
        pipes = []
        if short:
            pipes.append(self.short_pipeline(short, plan.for_work(short_units), run, desync))
        if long_rows:
            pipes.append(self.long_pipeline(long_rows, plan.for_work(long_units), run, desync))
        return pipes

    def finish(self, summary: GenerateSummary, tally, pipelines) -> None:
        fills = [p.batch_size for p in pipelines if p.batch_size]
        summary.batch_fill, summary.batches = tally.batch_fill(max(fills) if fills else 1)

    # ---- stages -------------------------------------------------------------------------------

    def head(self, rows: list[dict], fields, plan: Plan, batch_size: int, *, tables=None):
        """Catalog input: one decode task per row, then the feature-encoder actors; features
        input: the feature loader tasks. Returns the dataset."""
        import ray

        config, spec = self.config, self.spec
        allow_download = False if config.offline else None
        if self.features is not None:
            if tables is None:
                names = [n for n, _ in fields] + ["feature_file", "feature_row"]
                table = pa.Table.from_pylist([{n: r.get(n) for n in names} for r in rows])
                ds = ray.data.from_arrow(table).repartition(max(1, min(len(rows), 200)))
                loader_batch = batch_size
            else:
                ds, loader_batch = ray.data.from_arrow(tables), None
            return apply(
                ds,
                [
                    Stage(
                        "load",
                        load_features,
                        batch_size=loader_batch,
                        kwargs={"layout": self.features, "filesystem_uri": config.input},
                        memory=plan.task_memory,
                    )
                ],
            )
        items = [{name: r.get(name) for name, _ in fields} for r in rows]
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), 1000))
        encode_layout = FeatureLayout.for_run(
            spec,
            max_duration=config.max_duration,
            storage_dtype="float32",
            frame_rule=config.frame_rule,
        )
        return apply(
            ds,
            [
                Stage(
                    "decode",
                    decode_stage,
                    batch_size=1,
                    kwargs=decode_args(spec, config, audio_rate=None),
                    num_cpus=plan.task_cpus,
                    memory=plan.task_memory,
                ),
                Stage(
                    "encode",
                    TimedFeatureEncoder,
                    batch_size=batch_size,
                    kwargs={
                        "layout": encode_layout,
                        "device": plan["encoder"].device,
                        "precision": plan.precision,
                        "weights_dir": config.weights_dir,
                        "allow_download": allow_download,
                        "components_factory": config.components_factory,
                        "cpu_share": plan["encoder"].cpu_share,
                    },
                    actors=plan["encoder"],
                ),
            ],
        )

    def generator_kwargs(self, plan: Plan, batch_size: int) -> dict:
        config = self.config
        return {
            "variant": self.spec.name,
            "batch_size": batch_size,
            "device": plan["generator"].device,
            "precision": plan.precision,
            "weights_dir": config.weights_dir,
            "allow_download": False if config.offline else None,
            "adapters": [{"path": a.path, **a.describe()} for a in self.adapters],
            "components_factory": config.components_factory,
            "cpu_share": plan["generator"].cpu_share,
        }

    def tail(self, plan: Plan, desync: bool, write_batch_size: int, stage_batch: int) -> list:
        """Writers (files and QA metrics), then DeSync actors and the staging tasks."""
        config, spec = self.config, self.spec
        digest = self.settings_hash
        stages = [
            Stage(
                "write",
                write_outputs,
                batch_size=write_batch_size,
                kwargs={
                    "output": config.output,
                    "settings_hash": digest,
                    "variant": spec.name,
                    "track": TrackSettings(
                        spec.sampling_rate,
                        config.audio_format,
                        config.bits,
                        config.loudness,
                        effective_peak(config),
                        config.mux,
                        config.mix_original,
                    ),
                    "adapters": [{"path": a.path, **a.describe()} for a in self.adapters],
                    "thresholds": config.thresholds.describe(),
                    "desync": desync,
                },
            )
        ]
        if desync:
            stages += [
                Stage(
                    "desync",
                    DesyncActor,
                    batch_size=DESYNC_BATCH_SIZE,
                    kwargs=actor_kwargs(
                        desync_settings(config),
                        device=plan["desync"].device,
                        thresholds=config.thresholds.describe(),
                    ),
                    actors=plan["desync"],
                    batch_format="pyarrow",
                ),
                Stage(
                    "stage",
                    write_batch,
                    batch_size=stage_batch,
                    kwargs={
                        "output": config.output,
                        "settings_hash": digest,
                        "report": REPORT_COLUMNS,
                    },
                    batch_format="pyarrow",
                ),
            ]
        return stages

    def short_pipeline(self, todo: list[dict], plan: Plan, run: str, desync: bool) -> Pipeline:
        config = self.config
        batch_size = self.short_batch
        batches = order_batches(todo, self.spec, batch_size, config.shard_size, run)
        expected = Counter(r["shard"] for chunk in batches for r in chunk)
        log.info(
            "%d clips in %d shard(s), %d planned batch(es) of up to %d; "
            "%d generator actor(s) on %s",
            len(todo),
            len(expected),
            len(batches),
            batch_size,
            plan["generator"].actors,
            plan["generator"].device,
        )
        tables = None
        if self.features is not None:
            schema = pa.schema(
                [*PLAN_FIELDS, ("feature_file", pa.string()), ("feature_row", pa.int64())]
            )
            tables = [
                pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in chunk], schema)
                for chunk in batches
            ]
        rows = [r for chunk in batches for r in chunk]
        ds = self.head(rows, PLAN_FIELDS, plan, batch_size, tables=tables)
        window = batch_size * GROUP_WINDOW
        stages = [
            Stage(
                "generate",
                AudioGenerator,
                batch_size=window,
                kwargs=self.generator_kwargs(plan, batch_size),
                actors=plan["generator"],
            ),
            *self.tail(plan, desync, window, window),
        ]
        return Pipeline(apply(ds, stages), expected, batch_size)

    def long_pipeline(self, rows: list[dict], plan: Plan, run: str, desync: bool) -> Pipeline:
        """Long videos: window rows through the head, assembled per video, generated and
        joined by the long-video generator, then the same tail (`windows` module doc)."""
        config, spec = self.config, self.spec
        batch_size = config.batch_size or DEFAULT_BATCH  # windows are generated per video
        parents = sorted({r["parent_id"] for r in rows})
        shard_of = {p: f"{run}-long-{i // config.shard_size:05d}" for i, p in enumerate(parents)}
        rows = sorted(rows, key=lambda r: (r["parent_id"], int(r["window_index"])))
        for r in rows:
            r["shard"] = shard_of[r["parent_id"]]
        log.info(
            "%d long video(s): %d windows, join %s, on %d generator actor(s)",
            len(parents),
            len(rows),
            config.join,
            plan["generator"].actors,
        )
        fields = [*PLAN_FIELDS, *((c, None) for c in WINDOW_PLAN_COLUMNS if c != "mask")]
        ds = self.head(rows, fields, plan, batch_size)
        clip_f = spec.uses_clip_frames if self.features is None else bool(self.features.clip_len)
        tensors = ("sync_f", "text_f", *(["clip_f"] if clip_f else []))
        lengths = ("sync_len", *(["clip_len"] if clip_f else []))
        stages = [
            Stage(
                "assemble",
                WindowAssembler,
                batch_size=None,
                kwargs={"tensors": tensors, "lengths": lengths},
                pool=1,
                num_cpus=0,  # light; must not take the CPU the model actors leave to the tasks
            ),
            Stage(
                "generate",
                LongAudioGenerator,
                batch_size=1,
                kwargs={"join": config.join, **self.generator_kwargs(plan, batch_size)},
                actors=plan["generator"],
            ),
            *self.tail(plan, desync, batch_size * GROUP_WINDOW, batch_size),
        ]
        return Pipeline(apply(ds, stages), Counter(shard_of.values()), batch_size)


def run_generate(config: GenerateConfig, *, catalog: tuple | None = None) -> GenerateSummary:
    """Run the job. `catalog`: (records, problems) the caller already read from
    `config.input` (the command does, before importing this module). The output folder is
    held by this run's lease (`OutputDir.acquire_lease`) from the end of the input checks to
    the end of the run."""
    return GenerateJob(config, catalog).run()
