"""The Ray Data stages of the QA job: measure (CPU tasks: decode a clip's audio track at its
own rate, compute the QA metrics, and decode the DeSync inputs), DeSync (model actors,
`desync_stage.DesyncActor`) and write (CPU tasks staging results/errors fragments). A clip
that fails becomes an error row; its neighbours carry on."""

from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa

from selva_core.qa import QAThresholds, clip_metrics, qa_flags

from ..io.output_dir import OutputDir
from ..io.results_schema import RESULTS_SCHEMA, results_table
from ..io.rows import (
    OK_RESULT,
    batch_rows,
    error_result,
    error_table,
    local_copy,
    table_or_error_rows,
)
from .desync_stage import DESYNC_INPUT_FIELDS, encode_inputs, prepare_desync_inputs

STATUS_FIELDS = [
    pa.field("shard", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("error_type", pa.string()),
    pa.field("message", pa.string()),
]
# what flows from measure to write: the results columns plus where the clip goes and how it went
# (the generation job's writer hands its rows to DeSync and `write_batch` in the same shape)
STAGE_SCHEMA = pa.schema([*RESULTS_SCHEMA, *STATUS_FIELDS])
# ... plus the DeSync inputs when a DeSync stage follows
DESYNC_STAGE_SCHEMA = pa.schema([*STAGE_SCHEMA, *DESYNC_INPUT_FIELDS])


class NoAudioError(ValueError):
    """The source has no audio track (or none inside the clip's window)."""


def read_source_audio(path: str, start: float, max_duration: float) -> tuple[np.ndarray, int]:
    """Mono float32 samples of a media file's audio track at its own rate, from `start` for at
    most `max_duration` seconds (the track's real samples only, no padding)."""
    from selva_core.video.audio_track import select_audio_stream
    from selva_core.video.decode import open_media, read_audio

    with open_media(path) as container:
        stream = select_audio_stream(container)
        if stream is None:
            raise NoAudioError(f"{path} has no audio track")
        rate = int(stream.codec_context.sample_rate or 0)
        if stream.duration is not None and stream.time_base is not None:
            length = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            length = container.duration / 1_000_000
        else:
            length = max_duration + start
    if rate <= 0:
        raise NoAudioError(f"{path}: the audio track reports no sample rate")
    # a little past the reported end: trailing padding is trimmed by valid_samples below
    seconds = min(max_duration, max(length - start, 0.0) + 0.5)
    track = read_audio(path, sample_rate=rate, num_samples=math.ceil(seconds * rate), start=start)
    if track is None:
        raise NoAudioError(f"{path} has no audio track")
    samples = track.samples[: track.valid_samples].numpy()
    if samples.size == 0:
        raise NoAudioError(f"{path}: the audio track has no samples after {start:.3f} s")
    return samples, rate


def measure_batch(
    batch: dict[str, np.ndarray],
    *,
    max_duration: float,
    thresholds: dict,
    settings_hash: str,
    desync: bool = False,
) -> pa.Table:
    """Catalog rows -> one results row each (metrics and flags), or an error row. With
    `desync`, also the clip's DeSync inputs (first 8 s of 25 fps frames and 16 kHz audio;
    empty when shorter than 4.8 s) for the DeSync actors; failing to get them is stage
    "desync"."""
    limits = QAThresholds(**thresholds)
    schema = DESYNC_STAGE_SCHEMA if desync else STAGE_SCHEMA
    out: dict[str, list] = defaultdict(list)
    for row in batch_rows(batch):
        result = dict(OK_RESULT)
        values = {name: None for name in schema.names}
        values.update(
            {
                k: row.get(k)
                for k in ("id", "source", "prompt", "negative_prompt", "seed", "cfg", "steps")
            }
        )
        values.update(audio_path="", video_path=row["source"], settings_hash=settings_hash)
        values.update(shard=row["shard"], row=row.get("row"), qa_flags=[])
        if desync:
            values.update(encode_inputs(None))
        stage = "decode"
        try:
            t0 = time.perf_counter()
            start, duration = row.get("start") or 0.0, row.get("duration") or max_duration
            with local_copy(row["source"]) as path:
                audio, rate = read_source_audio(path, start, duration)
                t1 = time.perf_counter()
                stage = "qa"
                metrics = clip_metrics(audio, rate)
                values.update(metrics.as_dict())
                values.update(
                    duration=audio.shape[0] / rate,
                    sample_rate=rate,
                    qa_flags=qa_flags(metrics, limits),
                    t_qa=time.perf_counter() - t1,
                )
                t_decode = t1 - t0
                if desync:
                    stage = "desync"
                    t2 = time.perf_counter()
                    inputs = prepare_desync_inputs(path, start, duration, audio, rate)
                    values.update(encode_inputs(inputs))
                    t_decode += time.perf_counter() - t2
                values["t_decode"] = t_decode
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            result = error_result(row, stage, exc)
            if desync:
                values.update(encode_inputs(None))
        values.update(result)
        for name in schema.names:
            out[name].append(values[name])
    return pa.table(dict(out), schema=schema)


def write_batch(
    batch: pa.Table, *, output: str, settings_hash: str, report: tuple[str, ...] = ()
) -> pa.Table:
    """Stage each shard's results and errors as fragments; report (shard, id, status, stage,
    the `report` columns, flags joined by commas) to the driver. A row that does not fit the
    results schema becomes an error row (stage "write"); the block's other rows are kept."""
    out_dir = OutputDir(output, kind="results")
    rows = batch.to_pylist()
    names = set(RESULTS_SCHEMA.names)

    def build(chosen: list[int]) -> pa.Table:
        return results_table([{k: v for k, v in rows[i].items() if k in names} for i in chosen])

    def unstorable(i: int, exc: Exception) -> None:
        rows[i].update(error_result(rows[i], "write", exc))

    by_shard: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_shard[row["shard"]].append(i)
    for shard, idx in by_shard.items():
        ok = [i for i in idx if rows[i]["status"] == "ok"]
        if ok:
            table = table_or_error_rows(build, ok, unstorable)
            if table is not None:
                out_dir.stage(shard, "results", table)
        bad = [rows[i] for i in idx if rows[i]["status"] != "ok"]
        if bad:
            out_dir.stage(shard, "errors", error_table(bad, settings_hash))
    columns = {name: pa.string() for name in ("shard", "id", "status", "stage")}
    columns.update({name: batch.schema.field(name).type for name in report})
    out = {name: pa.array([r[name] for r in rows], kind) for name, kind in columns.items()}
    out["flags"] = pa.array(
        [",".join(r["qa_flags"] or []) if r["status"] == "ok" else "" for r in rows], pa.string()
    )
    return pa.table(out)
