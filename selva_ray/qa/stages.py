"""The QA job's own stage: measure (CPU tasks: decode a clip's audio track at its own rate,
compute the QA metrics, and decode the DeSync inputs). DeSync and the results writer are the
shared stages of `selva_ray.stages`. A clip that fails becomes an error row; its neighbours
carry on."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pyarrow as pa

from selva_core.qa import QAThresholds, clip_metrics, qa_flags

from ..io.rows import (
    OK_RESULT,
    batch_rows,
    error_result,
    local_copy,
)
from ..stages.decode import read_source_audio
from ..stages.desync import encode_inputs, prepare_desync_inputs
from ..stages.results import DESYNC_STAGE_SCHEMA, STAGE_SCHEMA


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
                for k in (
                    "id",
                    "source",
                    "prompt",
                    "negative_prompt",
                    "seed",
                    "cfg",
                    "steps",
                    "input_hash",
                )  # fmt: skip
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
