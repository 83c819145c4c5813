"""Batch generation and dubbing on Ray Data: an audio track (and a dubbed video) per clip.

catalog  -> decode (CPU tasks) -> feature encoders (actors) -+
features -> feature loader (CPU tasks) ----------------------+-> generator actors -> writers
    (files + QA metrics) -> DeSync actors -> staging tasks (`qa_stage`; not with --no-desync)

The driver plans the work: clips that already have a committed result row and file are
skipped, the rest are sorted by sequence key (duration -> sequence lengths, steps, cfg) so
that clips which can share a generator batch travel together, and cut into shards; it commits
each shard once all of its clips are accounted for, and prints progress every few seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from selva_core.qa import QAThresholds
from selva_core.sampling import SamplerConfig
from selva_core.variants import get_spec

from .. import validate
from ..config_file import config_record
from ..extract.stages import decode_args
from ..extract.windows import check_long_settings, parent_of
from ..io.catalog import CatalogProblem, ClipRecord, resolve
from ..io.feature_schema import FeatureLayout
from ..io.output_dir import OutputDir
from ..io.results_schema import COLUMN_NAMES
from ..io.rows import local_copy
from ..runtime import model_pool
from ..summary import ClipCounts
from .qa_stage import add_qa_stages, desync_plan, qa_settings
from .stages import (
    AudioGenerator,
    TimedFeatureEncoder,
    decode_stage,
    load_features,
    sequence_key,
    write_outputs,
)
from .windows import JOIN_MODES, plan_long, run_long

log = logging.getLogger(__name__)
GiB = 1 << 30
# A generator call takes up to this many batches' worth of clips and regroups them by key,
# so clips that arrive interleaved still fill whole batches.
GROUP_WINDOW = 2
DEFAULT_BATCH = 8  # clips per generator batch when --batch-size is not given
AUDIO_FORMATS = ("flac", "wav")


class GenerateInputError(ValueError):
    """Unusable settings or inputs (bad flag values, adapter files, features folder)."""


@dataclass
class GenerateConfig:
    input: str  # catalog (folder or manifest) or a features folder written by `extract`
    output: str
    variant: str = "small_16k"
    max_duration: float = 8.0  # catalog input; a features folder has its own
    prompt: str | None = None  # for clips whose catalog row has no prompt
    negative_prompt: str | None = None  # None: the model's stored empty-prompt features
    seed: int = 42
    cfg: float = 4.5
    steps: int = 25
    audio_format: str = "flac"
    bits: int = 24  # sample depth of the written tracks: 16 or 24
    loudness: float | None = None  # LUFS target; None: the model's level
    peak: float | None = None  # dBTP ceiling; None: -1 when normalising loudness, else none
    mux: bool = False
    mix_original: float | None = None  # dB gain of the source's own track in the video
    adapters: list[str] = field(default_factory=list)  # FILE[@STRENGTH], stacked in order
    precision: str | None = None  # None: bf16 on GPU, fp32 on CPU
    device: str = "auto"
    batch_size: int | None = None  # clips per generator batch; None: _batch_size
    actors: int | None = None  # generator actors; None: one per GPU, else one per core
    gpus_per_actor: float | None = None  # None: 1 (features input) or 0.5 (encoders share)
    encoder_actors: int | None = None  # catalog input; None: one per GPU, else 1
    encoder_gpus: float = 0.5
    cpus_per_actor: float = 1.0
    actor_memory_gb: float | None = None  # None: by model size
    decode_cpus: float = 1.0
    decode_memory_gb: float = 1.0
    shard_size: int = 64
    fail_on_error: bool = False
    retry_errors: bool = False
    weights_dir: str | None = None
    offline: bool = False
    ray_address: str | None = None
    allow_roots: list[str] | None = None  # manifest rows may point here; None: its folder
    frame_rule: str = "official"
    progress: bool = True  # Ray Data's own progress output
    progress_interval_s: float = 10.0
    # per-clip QA of the written tracks (qa_stage): flag thresholds; DeSync on its own actors
    thresholds: QAThresholds = field(default_factory=QAThresholds)
    desync: bool = True  # False: desync_s null, no model (no synchformer_state_dict.pth needed)
    desync_actors: int | None = None  # None: one per GPU, else 1
    # Long videos (selva_ray.generate.windows): catalog videos longer than `window` seconds
    # (None: 8; 0: never, cut at max_duration) are generated window by window and joined;
    # features input uses the folder's own windows.
    window: float | None = None
    overlap: float | None = None  # None: 1 s (catalog input) or the folder's
    join: str = "continue"  # continue | crossfade
    mask_strength: float = 1.0  # how far a catalog `mask` greys the background
    mask_paths: tuple[str, ...] = ("clip", "sync")  # streams the mask applies to
    # Benchmarks only: build the models by hand (e.g. random weights at real sizes),
    # `factory(device, dtype, role) -> Components`, role "encoder" or "generator".
    components_factory: Callable | None = None
    flags: dict | None = None  # the command line's settings (`--print-config`), to _meta.json


@dataclass
class GenerateSummary(ClipCounts):
    output: str
    input_kind: str = "catalog"
    catalog: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    failed_before: int = 0  # failed in an earlier run: skipped unless --retry-errors
    wall_s: float = 0.0
    batch_fill: float = 0.0  # clips per generator batch / batch size, averaged over batches
    batches: int = 0
    errors_by_stage: dict = field(default_factory=dict)
    has_errors_folder: bool = False

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_stage.items()))
        return [
            f"{self.input_kind} {self.catalog} clips: {self.ok} ok, {self.failed} failed"
            + (f" ({stages})" if stages else "")
            + f", {self.skipped} skipped (already done)"
            + self.failed_before_text(),
            f"wall time {self.wall_s:.1f} s, {self.clips_per_s:.2f} clips/s, "
            f"{self.batches} generator batches, average batch fill {self.batch_fill:.2f}",
            self.where_text(f"results in {self.output.rstrip('/')}/results/"),
        ]


@dataclass(frozen=True)
class Adapter:
    path: str
    strength: float
    name: str
    sha256: str

    def describe(self) -> dict:
        return {"name": self.name, "strength": self.strength, "sha256": self.sha256}


def parse_adapter(text: str) -> tuple[str, float]:
    """`FILE[@STRENGTH]` -> (file, strength); a file name may itself contain '@'."""
    path, sep, tail = text.rpartition("@")
    if sep:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return text, 1.0


def resolve_adapters(specs: list[str]) -> list[Adapter]:
    """Read every adapter once on the driver (a bad file stops the job before any work) and
    fingerprint it; the actors load the same files."""
    from selva_core.lora.adapter_file import AdapterFormatError, read_adapter

    adapters = []
    for text in specs:
        path, strength = parse_adapter(text)
        if not math.isfinite(strength):
            raise GenerateInputError(f"adapter {text!r}: strength must be a finite number")
        try:
            with local_copy(path) as local:
                with open(local, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                meta = read_adapter(local).meta
        except (AdapterFormatError, OSError, ValueError) as exc:
            raise GenerateInputError(f"adapter {path}: {exc}") from exc
        name = path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        log.info("adapter %s at strength %g (rank %d, %s)", name, strength, meta.rank, meta.init)
        adapters.append(Adapter(path, strength, name, digest))
    return adapters


# ---- input ----------------------------------------------------------------------------------


def features_layout(uri: str) -> FeatureLayout | None:
    """The layout of an `extract` output folder, or None if `uri` is not one."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    meta = OutputDir(uri).read_meta()
    if not meta or "tensors" not in meta or "settings" not in meta:
        return None
    try:
        return FeatureLayout(**meta["settings"])
    except TypeError as exc:
        raise GenerateInputError(f"{uri}: unreadable feature settings in _meta.json") from exc


def _feature_rows(uri: str) -> list[dict]:
    """One plan row per stored clip: its scalars and where its tensors are."""
    out = OutputDir(uri)
    rows = []
    columns = ["id", "source", "prompt", "negative_prompt", "seed", "start", "duration"]
    for path in out.part_files():
        table = pq.read_table(path, columns=columns, filesystem=out.fs)
        for k, item in enumerate(table.to_pylist()):
            rows.append({**item, "feature_file": path, "feature_row": k, "row": None})
    return rows


def _probe_duration(record: ClipRecord, max_duration: float) -> float:
    """Expected clip duration, for grouping only: the manifest's, or a look at the container
    header of a local file (the decoder's exact value is used for generation)."""
    if record.duration is not None:
        return record.duration
    fs, path = resolve(record.source)
    if fs.type_name != "local":
        return max_duration
    try:
        import av

        with av.open(path) as c:
            stream = c.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                total = float(stream.duration * stream.time_base)
            else:
                total = c.duration / av.time_base
    except Exception:  # noqa: BLE001 - the decode stage reports it properly
        return max_duration
    return min(max_duration, max(total - record.start, 16 / 25))


# ---- the job --------------------------------------------------------------------------------


def run_generate(config: GenerateConfig, *, catalog: tuple | None = None) -> GenerateSummary:
    """Run the job. `catalog`: (records, problems) the caller already read from
    `config.input` (the command does, before importing this module). The output folder is
    held by this run's lease (`OutputDir.acquire_lease`) from the end of the input checks to
    the end of the run."""
    with ExitStack() as lease:
        return _run_generate(config, lease, catalog)


def _run_generate(
    config: GenerateConfig, lease: ExitStack, catalog: tuple | None
) -> GenerateSummary:
    t0 = time.perf_counter()
    _check_config(config)
    spec = get_spec(config.variant)
    adapters = resolve_adapters(config.adapters)
    layout = features_layout(config.input)
    if layout is not None and layout.variant != spec.name:
        raise GenerateInputError(
            f"features in {config.input} were made for variant {layout.variant!r}, not "
            f"{spec.name!r}; pass --variant {layout.variant}"
        )
    kind = "features" if layout is not None else "catalog"
    qa = qa_settings(config)  # resolves the DeSync weights before Ray starts
    # The input is read before Ray starts and before the output folder is claimed.
    if layout is None:
        records, problems = catalog or _read_catalog(config)
        rows = [_catalog_row(r, config) for r in records]
        if rows:
            with ThreadPoolExecutor(8) as pool:
                planned = pool.map(lambda r: _probe_duration(r, config.max_duration), records)
                for row, d in zip(rows, planned, strict=True):
                    row["planned"] = d
    else:
        rows, problems = _feature_rows(config.input), []
        for row in rows:
            row.update(_defaults(row, config))
            row["planned"] = row["duration"]

    validate.check_output_writable(config.output)
    out = OutputDir(config.output, kind="results")
    lease.enter_context(out.acquire_lease())  # a second run into the folder exits 2 here

    from ..runtime import init_ray

    init_ray(config.ray_address, progress=config.progress)
    plan = _actor_plan(config, spec.name, catalog_input=layout is None)
    settings = {**_settings(config, spec, adapters, plan), **qa}
    settings_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    out.claim(
        {
            "kind": "generate",
            "settings": settings,
            "settings_hash": settings_hash,
            "results_columns": COLUMN_NAMES,
        }
    )
    out.recover()
    out.sweep_partial_files("audio", "video")
    if config.retry_errors:
        log.info("retrying failed clips: removed %d error file(s)", out.clear_errors())

    bad = _bad_settings(rows)
    bad_ids = {p.id for p in bad}
    rows = [r for r in rows if r["id"] not in bad_ids]
    problems = problems + bad

    done, failed_before = _finished(out, config.mux)
    finished = done | failed_before
    todo = [r for r in rows if r["id"] not in finished]
    new_problems = [p for p in problems if p.id not in finished]
    # long videos: window rows, one result per video (`parent_id`)
    todo, long_rows, long_problems = plan_long(todo, finished, config, spec, layout)
    new_problems += long_problems
    ids = sorted({parent_of(r["id"]) for r in rows}) + [p.id for p in problems]
    summary = GenerateSummary(
        output=config.output,
        input_kind=kind,
        catalog=len(ids),
        skipped=sum(i in done for i in ids),
        failed_before=sum(i in failed_before and i not in done for i in ids),
    )
    run = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:6]
    log.info(
        "%d clips in %s, %d to do, %d already done",
        summary.catalog,
        kind,
        len(todo),
        summary.skipped,
    )
    if new_problems:
        out.record_catalog_problems(f"{run}-catalog", new_problems, settings_hash)
        summary.failed += len(new_problems)
        summary.errors_by_stage["catalog"] = len(new_problems)
    if todo:
        ok, failed, fill = _run_pipeline(
            config, spec, layout, out, todo, run, plan, adapters, settings_hash
        )
        summary.ok += ok
        summary.failed += sum(failed.values())
        summary.batch_fill, summary.batches = fill
        for stage, n in failed.items():
            summary.errors_by_stage[stage] = summary.errors_by_stage.get(stage, 0) + n
    if long_rows:
        ok, failed, (fill, batches) = run_long(
            config, spec, layout, out, long_rows, run, plan, adapters, settings_hash
        )
        summary.ok += ok
        summary.failed += sum(failed.values())
        summary.batches += batches
        summary.batch_fill = max(summary.batch_fill, fill)
        for stage, n in failed.items():
            summary.errors_by_stage[stage] = summary.errors_by_stage.get(stage, 0) + n
    summary.wall_s = time.perf_counter() - t0
    summary.has_errors_folder = bool(out.part_files(errors=True))
    record = {"run": run, "finished_at": time.time(), "config": config_record(config)}
    out.record_run({**record, **asdict(summary)})
    return summary


def _read_catalog(config: GenerateConfig) -> tuple[list, list]:
    from ..validate import read_input_catalog

    return read_input_catalog(
        config.input,
        max_duration=config.max_duration,
        allow_roots=config.allow_roots,
        default_prompt=config.prompt,
        prompt_flag="--prompt",
        variant=config.variant,
    )


def _check_config(config: GenerateConfig) -> None:
    if config.audio_format not in AUDIO_FORMATS:
        raise GenerateInputError(f"--format must be one of {AUDIO_FORMATS}")
    if config.bits not in (16, 24):
        raise GenerateInputError("--bits must be 16 or 24")
    if (config.batch_size is not None and config.batch_size < 1) or config.shard_size < 1:
        raise GenerateInputError("--batch-size and --shard-size must be >= 1")
    if config.join not in JOIN_MODES:
        raise GenerateInputError(f"--join must be one of {', '.join(JOIN_MODES)}")
    check_long_settings(config)
    if config.mix_original is not None and not config.mux:
        raise GenerateInputError("--mix-original needs --mux (it mixes into the dubbed video)")
    for name in ("loudness", "peak", "mix_original"):
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value <= 0):
            raise GenerateInputError(f"--{name.replace('_', '-')} must be a level <= 0 dB")
    try:
        SamplerConfig(num_steps=config.steps, cfg_strength=config.cfg)
    except ValueError as exc:
        raise GenerateInputError(str(exc)) from exc


def effective_peak(config: GenerateConfig) -> float | None:
    if config.peak is not None:
        return config.peak
    return -1.0 if config.loudness is not None else None


def _settings(config: GenerateConfig, spec, adapters: list[Adapter], plan: dict) -> dict:
    """What decides the output; a folder is only continued with the same values."""
    return {
        "variant": spec.name,
        "precision": plan["precision"],
        "max_duration": config.max_duration,
        "frame_rule": config.frame_rule,
        "prompt": config.prompt,
        "negative_prompt": config.negative_prompt,
        "seed": config.seed,
        "cfg": config.cfg,
        "steps": config.steps,
        "format": config.audio_format,
        "bits": config.bits,
        "sample_rate": spec.sampling_rate,
        "loudness": config.loudness,
        "peak": effective_peak(config),
        "mux": config.mux,
        "mix_original": config.mix_original,
        "adapters": [a.describe() for a in adapters],
        "window": config.window,
        "overlap": config.overlap,
        "join": config.join,
        "mask_strength": config.mask_strength,
        "mask_paths": list(config.mask_paths),
    }


def _defaults(row: dict, config: GenerateConfig) -> dict:
    """Per-clip values from the catalog (or stored features), else the job's flags."""
    return {
        "prompt": row.get("prompt") or config.prompt or "",
        "negative_prompt": row.get("negative_prompt")
        if row.get("negative_prompt") is not None
        else config.negative_prompt,
        "seed": int(row["seed"]) if row.get("seed") is not None else config.seed,
        "cfg": float(row["cfg"]) if row.get("cfg") is not None else config.cfg,
        "steps": int(row["steps"]) if row.get("steps") is not None else config.steps,
    }


def _catalog_row(record: ClipRecord, config: GenerateConfig) -> dict:
    row = record.to_row()
    row.update(_defaults(row, config))
    row["duration"] = record.duration or config.max_duration
    row["catalog_duration"] = record.duration  # None: to the video's end (maybe windows)
    return row


def _bad_settings(rows: list[dict]) -> list[CatalogProblem]:
    problems = []
    for r in rows:
        try:
            SamplerConfig(num_steps=r["steps"], cfg_strength=r["cfg"])
        except ValueError as exc:
            row = r["row"] if r.get("row") is not None else -1
            problems.append(CatalogProblem(r["id"], r["source"], row, str(exc)))
    return problems


def _finished(out: OutputDir, mux: bool) -> tuple[set[str], set[str]]:
    """(ids with a committed result row whose files exist, ids with an error row). Result
    rows whose file is gone are dropped, so those clips are done again (exactly once)."""
    listed = {}
    for folder in ("audio", "video"):
        try:
            infos = out.fs.get_file_info(pafs.FileSelector(out.path(folder)))
            listed[folder] = {f"{folder}/{i.base_name}" for i in infos}
        except FileNotFoundError:
            listed[folder] = set()
    done, stale = set(), set()
    for path in out.part_files(kind="results"):
        table = pq.read_table(path, columns=["id", "audio_path", "video_path"], filesystem=out.fs)
        for item in table.to_pylist():
            whole = item["audio_path"] in listed["audio"] and (
                not mux or (item["video_path"] or "") in listed["video"]
            )
            (done if whole else stale).add(item["id"])
    stale -= done
    if stale:
        log.info("%d result row(s) without their file: doing those clips again", len(stale))
        out.drop_rows("results", stale)
    failed = set()
    for path in out.part_files(errors=True):
        failed.update(pq.read_table(path, columns=["id"], filesystem=out.fs)["id"].to_pylist())
    return done, failed - done


def _actor_plan(config: GenerateConfig, variant: str, *, catalog_input: bool) -> dict:
    import ray

    from ..runtime import DTYPES, cluster_gpus, cpu_model_slots

    tiny = variant == "tiny"

    gpus = cluster_gpus() if config.device in ("auto", "cuda") else 0.0
    use_gpu = gpus > 0 or config.device.startswith("cuda")
    per_gpu = config.gpus_per_actor or (0.5 if catalog_input else 1.0)
    memory = config.actor_memory_gb or _actor_memory_gb(variant, use_gpu)
    encoder_memory = config.actor_memory_gb or (1.5 if tiny else 10.0)
    if use_gpu:
        actors = config.actors or max(1, int(gpus))
    else:  # one-thread generators side by side, as many as the cores (runtime.cpu_model_slots)
        actors = config.actors or cpu_model_slots(int(memory * GiB))
    encoders = config.encoder_actors or (max(1, int(gpus)) if use_gpu else 1)
    decode_memory = int(config.decode_memory_gb * GiB)
    if decode_memory == int(encoder_memory * GiB):
        decode_memory -= 1 << 20  # identical remote args would fuse decode into the encoders
    # Model actors hold their CPUs for the whole run; on a small cluster leave one CPU to the
    # decode / load / write tasks or they could never be scheduled.
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    pool = actors + (encoders if catalog_input else 0)
    cpus_per_actor = config.cpus_per_actor
    if cpus and pool * cpus_per_actor > cpus - 1:
        cpus_per_actor = max(0.1, (cpus - 1) / pool)
        log.info("%g CPUs in the cluster: %.2f CPU per model actor", cpus, cpus_per_actor)
    precision = config.precision or ("bf16" if use_gpu else "fp32")
    if precision not in DTYPES:
        raise GenerateInputError(f"precision must be one of {sorted(DTYPES)}")
    return {
        "actors": actors,
        "encoders": encoders,
        "num_gpus": per_gpu if use_gpu else 0,
        "encoder_gpus": config.encoder_gpus if use_gpu else 0,
        "device": ("cuda" if use_gpu else "cpu") if config.device == "auto" else config.device,
        "precision": precision,
        "cpus_per_actor": cpus_per_actor,
        "batch_size": config.batch_size or DEFAULT_BATCH,  # for these clips: _batch_size
        "memory": int(memory * GiB),
        "encoder_memory": int(encoder_memory * GiB),
        "decode_memory": decode_memory,
        # CPU model actors computing at once; they split the node's cores (runtime.cpu_threads)
        "cpu_share": None if use_gpu else pool,
        # on CPUs an actor computes one call at a time: queue no second bundle on a busy actor
        # while another one is idle (or still starting)
        "in_flight": 2 if use_gpu else 1,
    }


def _batch_size(config: GenerateConfig, plan: dict, clips: int) -> int:
    """Clips per generator batch: `--batch-size` when given, else DEFAULT_BATCH, but on CPUs
    no more than gives every generator actor two batches, so the actors share the clips and
    the first batch does not wait for the encoders to fill a large one (on a CPU a smaller
    batch costs no speed: tiny batch 4 beat batch 8 by 1.26x in bench). A clip's audio does
    not depend on its batch."""
    if config.batch_size is not None:
        return config.batch_size
    if plan["num_gpus"] or not str(plan["device"]).startswith("cpu"):
        return DEFAULT_BATCH
    return max(1, min(DEFAULT_BATCH, math.ceil(clips / (2 * plan["actors"]))))


def _actor_memory_gb(variant: str, use_gpu: bool) -> float:
    """Heap reserved per generator actor (Ray's `memory` resource, which also caps how many
    CPU actors a node runs): a CPU actor holds the generator, VAE and vocoder in host memory
    (small_16k measured 2.9 GiB peak RSS at batch 4), rounded up by model size."""
    if variant == "tiny":
        return 1.5
    if use_gpu:
        return 10.0
    return {"small": 4.0, "medium": 8.0}.get(variant.split("_")[0], 12.0)


def _order(rows: list[dict], spec, batch_size: int, shard_size: int, run: str) -> list[list]:
    """Rows sorted by sequence key and cut into planned batches (full ones first), each
    labelled with its shard. Returns the batches."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = sequence_key(spec, r["planned"], r["steps"], r["cfg"])
        groups.setdefault(key, []).append(r)
    full, tails = [], []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda r: (r.get("feature_file") or "", r["id"]))
        for k in range(0, len(members), batch_size):
            chunk = members[k : k + batch_size]
            (full if len(chunk) == batch_size else tails).append(chunk)
    batches = full + tails
    i = 0
    for chunk in batches:
        for r in chunk:
            r["shard"] = f"{run}-{i // shard_size:05d}"
            i += 1
    return batches


PLAN_FIELDS = [
    ("id", pa.string()),
    ("shard", pa.string()),
    ("row", pa.int64()),
    ("source", pa.string()),
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("seed", pa.int64()),
    ("start", pa.float64()),
    ("duration", pa.float64()),
    ("cfg", pa.float64()),
    ("steps", pa.int64()),
    ("mask", pa.string()),
]


def _run_pipeline(
    config: GenerateConfig,
    spec,
    layout: FeatureLayout | None,
    out: OutputDir,
    todo: list[dict],
    run: str,
    plan: dict,
    adapters: list[Adapter],
    settings_hash: str,
) -> tuple[int, Counter, tuple[float, int]]:
    import ray

    plan, desync = desync_plan(config, plan, todo, catalog_input=layout is None)
    batch_size = _batch_size(config, plan, len(todo))
    plan = {**plan, "batch_size": batch_size}
    batches = _order(todo, spec, batch_size, config.shard_size, run)
    expected = Counter(r["shard"] for chunk in batches for r in chunk)
    allow_download = False if config.offline else None
    log.info(
        "%d clips in %d shard(s), %d planned batch(es) of up to %d; %d generator actor(s) on %s",
        len(todo),
        len(expected),
        len(batches),
        batch_size,
        plan["actors"],
        plan["device"],
    )
    if layout is None:
        rows = [r for chunk in batches for r in chunk]
        ds = decode_and_encode(rows, PLAN_FIELDS, config, spec, plan, allow_download)
    else:
        schema = pa.schema(
            [*PLAN_FIELDS, ("feature_file", pa.string()), ("feature_row", pa.int64())]
        )
        tables = [
            pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in chunk], schema)
            for chunk in batches
        ]
        ds = ray.data.from_arrow(tables)
        ds = ds.map_batches(
            load_features,
            fn_kwargs={"layout": layout, "filesystem_uri": config.input},
            batch_size=None,
            num_cpus=1,
            memory=plan["decode_memory"],
        )
    window = batch_size * GROUP_WINDOW
    ds = ds.map_batches(
        AudioGenerator,
        fn_constructor_kwargs={
            "variant": spec.name,
            "batch_size": batch_size,
            "device": plan["device"],
            "precision": plan["precision"],
            "weights_dir": config.weights_dir,
            "allow_download": allow_download,
            "adapters": [{"path": a.path, **a.describe()} for a in adapters],
            "components_factory": config.components_factory,
            "cpu_share": plan["cpu_share"],
        },
        batch_size=window,
        compute=model_pool(plan["actors"], plan["in_flight"]),
        num_gpus=plan["num_gpus"],
        num_cpus=plan["cpus_per_actor"],
        memory=plan["memory"],
    )
    ds = ds.map_batches(
        write_outputs,
        fn_kwargs={
            "output": config.output,
            "settings_hash": settings_hash,
            "variant": spec.name,
            "sample_rate": spec.sampling_rate,
            "audio_format": config.audio_format,
            "bits": config.bits,
            "loudness": config.loudness,
            "peak": effective_peak(config),
            "mux": config.mux,
            "mix_original": config.mix_original,
            "adapters": [{"path": a.path, **a.describe()} for a in adapters],
            "thresholds": config.thresholds.describe(),
            "desync": desync is not None,
        },
        batch_size=window,
        num_cpus=1,
    )
    ds = add_qa_stages(
        ds, desync, output=config.output, settings_hash=settings_hash, batch_size=window
    )
    return _drive(ds, out, expected, config, batch_size)


def decode_and_encode(
    rows: list[dict], fields, config: GenerateConfig, spec, plan: dict, allow_download
):
    """The catalog-input head of a generation pipeline (ordinary clips and long-video windows
    alike): one decode task per row, then the feature-encoder actors."""
    import ray

    items = [{name: r.get(name) for name, _ in fields} for r in rows]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 1000))
    ds = ds.map_batches(
        decode_stage,
        fn_kwargs=decode_args(spec, config, audio_rate=None),
        batch_size=1,
        num_cpus=config.decode_cpus,
        memory=plan["decode_memory"],
    )
    encode_layout = FeatureLayout.for_run(
        spec,
        max_duration=config.max_duration,
        storage_dtype="float32",
        frame_rule=config.frame_rule,
    )
    ds = ds.map_batches(
        TimedFeatureEncoder,
        fn_constructor_kwargs={
            "layout": encode_layout,
            "device": plan["device"],
            "precision": plan["precision"],
            "weights_dir": config.weights_dir,
            "allow_download": allow_download,
            "components_factory": config.components_factory,
            "cpu_share": plan["cpu_share"],
        },
        batch_size=plan["batch_size"],
        compute=model_pool(plan["encoders"]),
        num_gpus=plan["encoder_gpus"],
        num_cpus=plan["cpus_per_actor"],
        memory=plan["encoder_memory"],
    )
    return ds


def _drive(ds, out: OutputDir, expected: Counter, config: GenerateConfig, batch_size: int):
    """Consume the writers' reports: commit whole shards, count, print progress; the batch
    fill is measured against `batch_size`."""
    total = sum(expected.values())
    state = {"ok": 0, "failed": 0}
    t0 = time.perf_counter()
    stop = threading.Event()

    def progress() -> None:
        elapsed = time.perf_counter() - t0
        done = state["ok"] + state["failed"]
        rate = done / elapsed if elapsed > 0 else 0.0
        left = total - done
        eta = f"{left / rate:.0f} s" if rate > 0 else "unknown"
        log.info(
            "generate: %d done, %d failed, %d left; %.2f clips/s, ETA %s",
            state["ok"],
            state["failed"],
            left,
            rate,
            eta,
        )

    def ticker() -> None:
        while not stop.wait(config.progress_interval_s):
            progress()

    thread = threading.Thread(target=ticker, name="generate-progress", daemon=True)
    thread.start()
    seen: Counter = Counter()
    failed: Counter = Counter()
    committed: set[str] = set()
    fill_rows, fill_batches = 0, 0.0
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for shard, status, stage, n in zip(
                batch["shard"].to_pylist(),
                batch["status"].to_pylist(),
                batch["stage"].to_pylist(),
                batch["batch_clips"].to_pylist(),
                strict=True,
            ):
                seen[shard] += 1
                if status == "ok":
                    state["ok"] += 1
                else:
                    state["failed"] += 1
                    failed[stage] += 1
                if n:
                    fill_rows += 1
                    fill_batches += 1.0 / n
                if seen[shard] == expected[shard] and shard not in committed:
                    commit = out.commit(shard)
                    committed.add(shard)
                    log.info(
                        "committed shard %s: %d ok, %d failed", shard, commit.ok, commit.failed
                    )
    finally:
        stop.set()
        thread.join()
    progress()
    for shard in set(expected) - committed:  # rows lost upstream would leave a shard open
        log.warning(
            "shard %s saw %d/%d clips; committing what was written",
            shard,
            seen[shard],
            expected[shard],
        )
        out.commit(shard)
    out.recover()
    batches = round(fill_batches)
    fill = fill_rows / (fill_batches * batch_size) if fill_batches else 0.0
    return state["ok"], failed, (fill, batches)
