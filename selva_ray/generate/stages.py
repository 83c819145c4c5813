"""The Ray Data stages of batch generation.

catalog input:  decode (CPU tasks, the extraction's) -> feature encoders (actors, the
                extraction's FeatureEncoder with fp32 output) -> generator actors -> writers
features input: feature loader (CPU tasks reading extract's Parquet) -> generator -> writers
then, unless DeSync is off: -> DeSync actors -> staging tasks (`qa_stage`)

Every stage passes a failed clip on as an error row (status, stage, error type, message), so
one bad clip never costs its neighbours. Per-clip timings travel with the rows (NaN for a stage
that did not run in this job) and end up in the results table, whose schema is the one shared
with the qa job (`selva_ray.io.results_schema`): the writers measure each written track there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import tempfile
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..io.catalog import plain_source
from ..io.feature_schema import FeatureLayout, from_storage
from ..io.names import file_stem
from ..io.output_dir import OutputDir
from ..io.results_schema import adapters_json
from ..io.rows import (
    OK_RESULT,
    batch_rows,
    error_result,
    finite_or_none,
    local_copy,
    plain,
    table_or_error_rows,
)
from ..stages.decode import CLIP_COLUMNS, decode_batch
from ..stages.encode import FeatureEncoder

log = logging.getLogger(__name__)

NAN = float("nan")
# Per-clip generation settings that ride along through the extraction stages.
GEN_COLUMNS = ("cfg", "steps", "name")  # name: the readable output name (io.names)
STATUS_COLUMNS = ("status", "stage", "error_type", "message")
# what a results row takes from the pipeline row as it is, and the timings it renames
RESULT_FIELDS = (
    "id", "source", "row", "prompt", "negative_prompt", "seed", "cfg", "steps", "duration",
    "shard", "worker", "input_hash",
)  # fmt: skip
TIMINGS = {
    "decode_s": "t_decode",
    "features_s": "t_features",
    "sampling_s": "t_sampling",
    "vocoder_s": "t_vocoder",
}
# Video codecs an MP4 file holds (the muxed video is MP4 unless the source is .mov / .mkv).
MP4_VIDEO_CODECS = {"h264", "hevc", "mpeg4", "av1", "vp9", "mpeg2video", "mjpeg"}


def sequence_key(spec, duration: float, steps: int, cfg: float) -> tuple:
    """Clips with equal keys can share a generator batch: same sequence lengths (the model has
    no attention mask, so padding would change the audio) and the same sampler settings."""
    seq = spec.sequence(duration)
    return (seq.latent_seq_len, seq.clip_seq_len, seq.sync_seq_len, int(steps), float(cfg))


def clip_samples(duration: float, sample_rate: int) -> int:
    """Samples of a clip's track: exactly its duration at the model's rate."""
    from selva_core.seqconfig import track_samples

    return track_samples(duration, sample_rate)


# ---- catalog input: decode and encode ---------------------------------------------------------


def decode_stage(batch: dict[str, np.ndarray], **kwargs) -> dict[str, list]:
    """The extraction's decode, carrying the generation settings and the decode time."""
    t0 = time.perf_counter()
    out = decode_batch(batch, carry=GEN_COLUMNS, **kwargs)
    n = len(out["id"])
    out["decode_s"] = [(time.perf_counter() - t0) / max(n, 1)] * n
    return out


class TimedFeatureEncoder(FeatureEncoder):
    """The extraction's encoder actor (fp32 output, nothing written), timing each batch.

    `components_factory(device, dtype, "encoder")` builds the models by hand instead of loading
    published weights (benchmarks at real sizes with random weights)."""

    def __init__(self, *, components_factory=None, cpu_share: int | None = None, **kwargs):
        from ..runtime import resolve_device, use_cpu_threads

        use_cpu_threads(resolve_device(kwargs.get("device", "auto")), cpu_share)
        kwargs.setdefault("carry", (*GEN_COLUMNS, "decode_s"))
        if components_factory is None:
            super().__init__(**kwargs)
            return
        from selva_core.pipeline import Pipeline, PipelineConfig

        from ..runtime import resolve_device, resolve_dtype

        self.layout = kwargs["layout"]
        self.carry = tuple(kwargs["carry"])
        device = resolve_device(kwargs.get("device", "auto"))
        dtype = resolve_dtype(kwargs.get("precision"), device)
        config = PipelineConfig(
            variant=self.layout.variant, dtype=dtype, device=device, generation=False
        )
        self.pipe = Pipeline(config, components=components_factory(device, dtype, "encoder"))
        self.checksum = "custom"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        t0 = time.perf_counter()
        out = super().__call__(batch)
        n = len(out["id"])
        out["features_s"] = [(time.perf_counter() - t0) / max(n, 1)] * n
        return out


# ---- features input: read extract's Parquet ---------------------------------------------------


def load_features(
    batch: dict[str, np.ndarray], *, layout: FeatureLayout, filesystem_uri: str
) -> dict[str, list]:
    """Plan rows (feature file + row index) -> the stored tensors as float32, per clip.

    Each file is read once per call, and only the row groups that hold the wanted rows."""
    out_dir = OutputDir(filesystem_uri)
    rows = list(batch_rows(batch))
    tensors = ["sync_f", "text_f", *(["clip_f"] if layout.clip_len else [])]
    lengths = ["sync_len", *(["clip_len"] if layout.clip_len else [])]
    loaded: dict[int, dict] = {}
    by_file: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_file[row["feature_file"]].append(i)
    for path, idx in by_file.items():
        try:
            wanted = [rows[i]["feature_row"] for i in idx]
            table = _read_rows(out_dir, path, wanted, [*tensors, *lengths])
            for j, i in enumerate(idx):
                if table["id"][j].as_py() != rows[i]["id"]:
                    raise ValueError(f"{path}: row {rows[i]['feature_row']} is not {rows[i]['id']}")
                one = table.slice(j, 1)
                loaded[i] = {n: _stored(one, n)[0] for n in tensors}
                loaded[i].update({n: one[n][0].as_py() for n in lengths})
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            for i in idx:
                rows[i].update(error_result(rows[i], "features", exc))
    out: dict[str, list] = defaultdict(list)
    shapes = layout.tensor_shapes()
    for i, row in enumerate(rows):
        for key in (*CLIP_COLUMNS, *GEN_COLUMNS, "duration"):
            out[key].append(row.get(key))
        for key, value in (OK_RESULT | {k: row[k] for k in STATUS_COLUMNS if k in row}).items():
            out[key].append(value)
        got = loaded.get(i)
        for name in tensors:
            out[name].append(got[name] if got else np.zeros(shapes[name], np.float32))
        for name in lengths:
            out[name].append(got[name] if got else 0)
        out["decode_s"].append(NAN)
        out["features_s"].append(NAN)
    return dict(out)


def _read_rows(out_dir: OutputDir, path: str, wanted: list[int], columns: list[str]) -> pa.Table:
    """Rows `wanted` (indices in the file) of a feature file, reading only their row groups."""
    pf = pq.ParquetFile(path, filesystem=out_dir.fs)
    starts = [0]
    for g in range(pf.metadata.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
    group_of = {
        w: next(g for g in range(len(starts) - 1) if starts[g] <= w < starts[g + 1]) for w in wanted
    }
    groups = sorted(set(group_of.values()))
    table = pf.read_row_groups(groups, columns=["id", *columns])
    offset, at = {}, 0
    for g in groups:
        offset[g] = at
        at += starts[g + 1] - starts[g]
    local = [offset[group_of[w]] + w - starts[group_of[w]] for w in wanted]
    return table.take(pa.array(local, pa.int64()))


def _stored(table: pa.Table, column: str) -> np.ndarray:
    from ..io.feature_schema import DTYPE_KEY

    field = table.schema.field(column)
    dtype = (field.metadata or {}).get(DTYPE_KEY, b"float32").decode()
    array = table.column(column).combine_chunks().to_numpy_ndarray()
    return from_storage(array, dtype).numpy()


# ---- generation -------------------------------------------------------------------------------


class AudioGenerator:
    """Callable-class actor: generator + VAE decoder + vocoder loaded once, adapters merged
    once; each call groups its clips by sequence key and samples each group in batches of at
    most `batch_size` clips (CFG's two passes as one batched forward)."""

    def __init__(
        self,
        *,
        variant: str,
        batch_size: int,
        device: str = "auto",
        precision: str | None = None,
        weights_dir: str | None = None,
        allow_download: bool | None = None,
        adapters: list[dict] | tuple = (),
        components_factory=None,
        cpu_share: int | None = None,
    ):
        from selva_core import build
        from selva_core.pipeline import Components, Pipeline, PipelineConfig
        from selva_core.variants import get_spec
        from selva_core.weights import WeightStore

        from ..runtime import resolve_device, resolve_dtype, use_cpu_threads

        t0 = time.perf_counter()
        self.spec = get_spec(variant)
        self.batch_size = int(batch_size)
        device = resolve_device(device)
        use_cpu_threads(device, cpu_share)  # before building: the models' init uses them too
        dtype = resolve_dtype(precision, device)
        self.store = WeightStore(weights_dir, allow_download=allow_download)
        if components_factory is not None:
            parts = components_factory(device, dtype, "generator")
        else:
            kw = {"dtype": dtype, "device": device}
            parts = Components(
                generator=build.load_generator(self.spec, self.store, **kw),
                sync_encoder=None,
                clip=None,  # loaded on first use: only negative prompts given as text need it
                t5=None,
                vae=build.load_vae(self.spec, self.store, **kw),
                vocoder=build.load_vocoder(self.spec, self.store, **kw),
                mel=None,
            )
        self.pipe = Pipeline(
            PipelineConfig(variant=self.spec.name, dtype=dtype, device=device),
            components=parts,
        )
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # which actor made a clip
        self.adapters = list(adapters)
        if self.adapters:
            merge_adapters(self.pipe.generator, self.adapters)
        log.info("generator actor ready in %.1f s on %s", time.perf_counter() - t0, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = list(batch_rows(batch))
        groups: dict[tuple, list[tuple[int, object]]] = defaultdict(list)
        for i, row in enumerate(rows):
            if row["status"] != "ok":
                continue
            try:
                feats = self._features(row)
                key = sequence_key(self.spec, feats.duration, row["steps"], row["cfg"])
            except Exception as exc:  # noqa: BLE001
                row.update(error_result(row, "generate", exc))
                continue
            groups[key].append((i, feats))
        made: dict[int, tuple] = {}
        for key in sorted(groups):
            members = groups[key]
            for k in range(0, len(members), self.batch_size):
                made.update(self._run(rows, members[k : k + self.batch_size], key))
        return self._output(rows, made)

    def _features(self, row: dict):
        from selva_core.pipeline import Features

        sync = torch.from_numpy(np.array(row["sync_f"], dtype=np.float32))[: row["sync_len"]]
        clip = None
        if self.spec.uses_clip_frames:
            clip = torch.from_numpy(np.array(row["clip_f"], dtype=np.float32))[: row["clip_len"]]
        return Features(
            variant=self.spec.name,
            prompt=row["prompt"],
            duration=float(row["duration"]),
            sync_f=sync,
            text_f=torch.from_numpy(np.array(row["text_f"], dtype=np.float32)),
            clip_f=clip,
            source=row["source"],
            start=row["start"] or 0.0,
        )

    def _run(self, rows: list[dict], members: list, key: tuple) -> dict[int, tuple]:
        """One batch; if it fails, clip by clip so only the bad ones become error rows."""
        try:
            return self._generate(rows, members, key)
        except Exception as exc:  # noqa: BLE001
            if len(members) == 1:
                i = members[0][0]
                rows[i].update(error_result(rows[i], "generate", exc))
                return {}
        made = {}
        for member in members:
            made.update(self._run(rows, [member], key))
        return made

    def _generate(self, rows: list[dict], members: list, key: tuple) -> dict[int, tuple]:
        feats = [f for _, f in members]
        negs = [rows[i]["negative_prompt"] for i, _ in members]
        if self.pipe.clip is None and any(isinstance(n, str) for n in negs):
            from selva_core.conditioning import load_clip

            cfg = self.pipe.config
            self.pipe.clip = load_clip(self.spec, self.store, dtype=cfg.dtype, device=cfg.device)
        # Equal sequence lengths, possibly different durations: sample at one of them (the
        # model sees only lengths), then trim each track to its own duration.
        same = [dataclasses.replace(f, duration=feats[0].duration) for f in feats]
        t0 = time.perf_counter()
        latents = self.pipe.sample_latents(
            same,
            negative_prompt=negs,
            seed=[int(rows[i]["seed"]) for i, _ in members],
            steps=key[3],
            cfg=key[4],
        )
        t1 = time.perf_counter()
        wavs = self.pipe.decode_latents(latents, max(f.duration for f in feats))
        t2 = time.perf_counter()
        n = len(members)
        made = {}
        for j, (i, f) in enumerate(members):
            keep = min(wavs.shape[-1], clip_samples(f.duration, self.pipe.sampling_rate))
            wav = wavs[j, :keep].numpy().astype(np.float32)
            made[i] = (wav, (t1 - t0) / n, (t2 - t1) / n, n)
        return made

    def _output(self, rows: list[dict], made: dict[int, tuple]) -> dict[str, list]:
        out: dict[str, list] = defaultdict(list)
        keep = (*CLIP_COLUMNS, *GEN_COLUMNS, *STATUS_COLUMNS, "duration", "decode_s", "features_s")
        for i, row in enumerate(rows):
            wav, sampling_s, vocoder_s, n = made.get(i, (np.zeros(0, np.float32), NAN, NAN, 0))
            if row["status"] == "ok" and i not in made:  # cannot happen; never lose a clip
                row.update(error_result(row, "generate", RuntimeError("no audio produced")))
            for k in keep:
                value = row.get(k)
                out[k].append(NAN if value is None and k.endswith("_s") else value)
            out["audio"].append(wav)
            out["sampling_s"].append(sampling_s)
            out["vocoder_s"].append(vocoder_s)
            out["batch_clips"].append(n)
            out["worker"].append(self.worker)
        return dict(out)


def merge_adapters(generator: torch.nn.Module, adapters: list[dict]) -> None:
    """Load each adapter file at its strength, stacked, then fold them all into the weights."""
    from selva_core.lora.adapter_file import load_adapter
    from selva_core.lora.apply import merge_lora

    for k, a in enumerate(adapters):
        with local_copy(a["path"]) as path:
            load_adapter(generator, path, adapter=f"adapter{k}", strength=float(a["strength"]))
    merge_lora(generator, keep_copy=False)


# ---- writing ----------------------------------------------------------------------------------


def mux_container(source: str) -> tuple[str, str]:
    """(PyAV format, extension) of the dubbed video: the source's own container when it holds
    the copied video and an AAC track (.mp4 .mov .mkv), else MP4, or Matroska for codecs
    MP4 cannot hold."""
    import av

    name = plain_source(source).rsplit("/", 1)[-1]  # an endpoint query is no extension
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in ("mp4", "m4v"):
        return "mp4", "mp4"
    if ext == "mov":
        return "mov", "mov"
    if ext == "mkv":
        return "matroska", "mkv"
    with local_copy(source) as path, av.open(path) as c:
        codec = c.streams.video[0].codec_context.name if c.streams.video else ""
    return ("mp4", "mp4") if codec in MP4_VIDEO_CODECS else ("matroska", "mkv")


@dataclasses.dataclass(frozen=True)
class TrackSettings:
    """How the writers write a generated track: its rate, file format and sample depth, its
    level (LUFS target, dBTP ceiling), and whether (and how) it is muxed into a dubbed video."""

    sample_rate: int
    audio_format: str = "flac"
    bits: int = 24
    loudness: float | None = None
    peak: float | None = None
    mux: bool = False
    mix_original: float | None = None


def write_outputs(
    batch: dict[str, np.ndarray],
    *,
    output: str,
    settings_hash: str,
    variant: str,
    track: TrackSettings,
    adapters: list[dict],
    thresholds: dict | None = None,
    desync: bool = False,
) -> pa.Table:
    """Write each clip's audio (and dubbed video), measure the written track (QA metrics and
    flags against `thresholds`) and build its results row (`selva_ray.io.results_schema`).
    Without `desync`, stage the shard's result and error rows and report (shard, id, status,
    stage, batch_clips, flags) to the driver; with it, hand the rows and their DeSync inputs
    on to the DeSync actors, which stage them after scoring (`qa_stage.add_qa_stages`)."""
    from selva_core.qa import QAThresholds

    from ..stages.results import DESYNC_STAGE_SCHEMA, STAGE_SCHEMA, write_batch
    from .qa_stage import REPORT_COLUMNS, add_desync_inputs, track_qa

    limits = QAThresholds(**(thresholds or {}))
    schema = DESYNC_STAGE_SCHEMA if desync else STAGE_SCHEMA
    out_dir = OutputDir(output, kind="results")
    adapters_cell = adapters_json(  # what describes each adapter (Adapter.describe)
        [{**{k: v for k, v in a.items() if k != "path"}, "strength": float(a["strength"])}
         for a in adapters]
    )  # fmt: skip
    records = []
    for row in batch_rows(batch):
        values = {name: None for name in schema.names}
        values.update({k: row.get(k) for k in RESULT_FIELDS})
        values.update(long_result_fields(row))
        values.update(
            variant=variant,
            adapters=adapters_cell,
            start=row.get("start") or 0.0,
            batch_clips=int(row.get("batch_clips") or 0),
            qa_flags=[],
            settings_hash=settings_hash,
            **{name: _time(row.get(key)) for key, name in TIMINGS.items()},
        )
        wav = None
        if row["status"] == "ok":
            try:
                written = _write_clip(out_dir, row, track)
                wav = written.pop("wav")
                values.update(written, sample_rate=track.sample_rate, bits=track.bits)
                values.update(track_qa(wav, track.sample_rate, limits))
            except Exception as exc:  # noqa: BLE001
                row.update(error_result(row, "write", exc))
        values.update({k: row[k] for k in STATUS_COLUMNS})
        if desync:
            add_desync_inputs(row, values, wav, track.sample_rate)
        records.append(values)

    def build(chosen: list[int]) -> pa.Table:
        return pa.Table.from_pylist([records[i] for i in chosen], schema=schema)

    def unstorable(i: int, exc: Exception) -> None:
        # A value that does not fit the results schema (e.g. a seed beyond int64): an error
        # row that keeps only what identifies the clip, and no file without its row.
        values = records[i]
        for rel in (values.get("audio_path"), values.get("video_path")):
            if rel:
                with contextlib.suppress(FileNotFoundError):
                    out_dir.fs.delete_file(out_dir.path(rel))
        keep = {"id", "source", "shard", "row", "input_hash"}
        records[i] = {k: (v if k in keep else None) for k, v in values.items()}
        records[i].update(error_result(values, "write", exc), qa_flags=[])

    everything = list(range(len(records)))
    table = table_or_error_rows(build, everything, unstorable)
    if table is None or table.num_rows < len(records):
        table = build(everything)  # the unstorable rows, now error rows, fit
    if desync:
        return table
    return write_batch(table, output=output, settings_hash=settings_hash, report=REPORT_COLUMNS)


def _write_clip(out_dir: OutputDir, row: dict, track: TrackSettings) -> dict:
    from selva_core.video.write import mux_audio

    from .audio import mix_under, normalise, source_track, write_audio

    sample_rate, audio_format = track.sample_rate, track.audio_format
    t0 = time.perf_counter()
    wav = torch.from_numpy(np.array(row["audio"], dtype=np.float32))
    if wav.numel() != clip_samples(row["duration"], sample_rate):
        raise ValueError(
            f"track has {wav.numel()} samples, expected "
            f"{clip_samples(row['duration'], sample_rate)} for {row['duration']:.3f} s"
        )
    wav, gain = normalise(wav, sample_rate, target_lufs=track.loudness, ceiling_dbtp=track.peak)
    wav = wav.clamp(-1.0, 1.0)
    name = file_stem(row["id"], row.get("name"))
    audio_rel = f"audio/{name}.{audio_format}"
    video_rel = None
    local = out_dir.fs.type_name == "local"
    with tempfile.TemporaryDirectory(prefix="selva-gen-") as tmp:
        audio_path = out_dir.path(audio_rel) if local else f"{tmp}/a.{audio_format}"
        write_audio(audio_path, wav, sample_rate, audio_format, track.bits)
        if not local:
            out_dir.put_file(audio_path, audio_rel)
        if track.mux:
            container, ext = mux_container(row["source"])
            video_rel = f"video/{name}.{ext}"
            video_path = out_dir.path(video_rel) if local else f"{tmp}/v.{ext}"
            start = row["start"] or 0.0
            with local_copy(row["source"]) as source:
                dub = wav
                if track.mix_original is not None:
                    original = source_track(source, start, sample_rate, wav.numel())
                    dub = mix_under(wav, original, track.mix_original)
                mux_audio(
                    source,
                    dub,
                    sample_rate,
                    video_path,
                    start=start,
                    duration=row["duration"],
                    container=container,
                )
            if not local:
                out_dir.put_file(video_path, video_rel)
    return {
        "audio_path": audio_rel,
        "video_path": video_rel,
        "samples": int(wav.numel()),
        "gain_db": gain,
        "t_write": time.perf_counter() - t0,
        "wav": wav,
    }


# per-video columns of the results table (selva_ray.io.results_schema), long videos only
LONG_RESULT_COLUMNS = ("windows", "join", "window_timings", "seam_worst", "seam_inner_max")


def long_result_fields(row: dict) -> dict:
    """The per-video columns of a results row (null for an ordinary clip)."""
    windows = row.get("windows")
    if windows is None or (isinstance(windows, float) and windows != windows):
        return dict.fromkeys(LONG_RESULT_COLUMNS)
    return {
        "windows": int(windows),
        "join": row.get("join"),
        "window_timings": row.get("window_timings"),
        "seam_worst": finite_or_none(row.get("seam_worst")),
        "seam_inner_max": finite_or_none(row.get("seam_inner_max")),
    }


def _time(value) -> float | None:
    value = plain(value)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
