"""The two Ray Data stages of the QA job: measure (CPU tasks: decode a clip's audio track at
its own rate and compute the QA metrics) and write (CPU tasks staging results/errors
fragments). A clip that fails becomes an error row; its neighbours carry on."""

from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa

from selva_core.qa import QAThresholds, clip_metrics, qa_flags

from ..io.output_dir import OutputDir
from ..io.results_schema import RESULTS_SCHEMA, results_table
from ..io.rows import OK_RESULT, batch_rows, error_result, error_table, local_copy

STATUS_FIELDS = [
    pa.field("shard", pa.string()),
    pa.field("row", pa.int64()),
    pa.field("stage", pa.string()),
    pa.field("error_type", pa.string()),
    pa.field("message", pa.string()),
]
# what flows from measure to write: the results columns plus where the clip goes and how it went
STAGE_SCHEMA = pa.schema([*RESULTS_SCHEMA, *STATUS_FIELDS])


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
) -> pa.Table:
    """Catalog rows -> one results row each (metrics and flags), or an error row."""
    limits = QAThresholds(**thresholds)
    out: dict[str, list] = defaultdict(list)
    for row in batch_rows(batch):
        result = dict(OK_RESULT)
        values = {name: None for name in STAGE_SCHEMA.names}
        values.update(
            {
                k: row.get(k)
                for k in ("id", "source", "prompt", "negative_prompt", "seed", "cfg", "steps")
            }
        )
        values.update(audio_path="", video_path=row["source"], settings_hash=settings_hash)
        values.update(shard=row["shard"], row=row.get("row"), qa_flags=[])
        stage = "decode"
        try:
            t0 = time.perf_counter()
            with local_copy(row["source"]) as path:
                audio, rate = read_source_audio(
                    path, row.get("start") or 0.0, row.get("duration") or max_duration
                )
            t1 = time.perf_counter()
            stage = "qa"
            metrics = clip_metrics(audio, rate)
            values.update(metrics.as_dict())
            values.update(
                duration=audio.shape[0] / rate,
                sample_rate=rate,
                qa_flags=qa_flags(metrics, limits),
                t_decode=t1 - t0,
                t_qa=time.perf_counter() - t1,
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            result = error_result(row, stage, exc)
        values.update(result)
        for name in STAGE_SCHEMA.names:
            out[name].append(values[name])
    return pa.table(dict(out), schema=STAGE_SCHEMA)


def write_batch(batch: pa.Table, *, output: str, settings_hash: str) -> pa.Table:
    """Stage each shard's results and errors as fragments; report (shard, id, status, stage,
    flags joined by commas) to the driver."""
    out_dir = OutputDir(output, kind="results")
    rows = batch.to_pylist()
    by_shard: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_shard[row["shard"]].append(row)
    names = set(RESULTS_SCHEMA.names)
    for shard, items in by_shard.items():
        ok = [{k: v for k, v in r.items() if k in names} for r in items if r["status"] == "ok"]
        bad = [r for r in items if r["status"] != "ok"]
        if ok:
            out_dir.stage(shard, "results", results_table(ok))
        if bad:
            out_dir.stage(shard, "errors", error_table(bad, settings_hash))
    flags = pa.array([",".join(r["qa_flags"] or []) for r in rows], pa.string())
    return batch.select(["shard", "id", "status", "stage"]).append_column("flags", flags)
