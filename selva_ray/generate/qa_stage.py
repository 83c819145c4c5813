"""Per-clip QA of the generated tracks, in the generation job's own streaming pipeline.

    generator actors -> writers (write the files; measure the written track: levels, clipping,
                        silence, flatness, flags; decode the clip's DeSync inputs)
                     -> DeSync actors (`selva_ray.stages.desync.DesyncActor`, shared with qa)
                     -> staging tasks (`selva_ray.qa.stages.write_batch`, the qa job's)

The level metrics need only the waveform the writer already holds, so they are computed
there, on the exact samples written (after normalisation). DeSync needs a model loaded once,
so it runs on its own actors right after the writers, as in `selva-ray qa`; the result rows
are staged only after it, so a committed row always carries its score. Without DeSync
(`--no-desync`, or no clip long enough to be scored) the writers stage their rows
themselves and no DeSync actor starts.

DeSync model: `tiny` (seeded random weights) for tiny variants, the published
`synchformer_state_dict.pth` for every real variant; resolved on the driver before Ray starts
(a missing file is one line naming it and the fetch command).
"""

from __future__ import annotations

import logging
import time

from selva_core.model.desync import DesyncConfig
from selva_core.qa import QAThresholds, clip_metrics, qa_flags
from selva_core.qa.metrics import CLIP_LEVEL, SILENCE_DBFS, TRUE_PEAK_OVERSAMPLING

from ..io.rows import error_result, local_copy
from ..stages.desync import (
    DESYNC_AUDIO_RATE,
    DesyncSettings,
    encode_inputs,
    prepare_desync_inputs,
)

log = logging.getLogger(__name__)
GiB = 1 << 30
# GPU share of all DeSync actors together on a GPU cluster: the generator and encoder shares
# are scaled by (1 - DESYNC_GPU_SHARE) and the DeSync actors split that slack, so every actor
# fits whichever GPU Ray places it on, in any start order (a full 0.1 each could take the
# room a generator needs on a GPU and leave it unplaced). The shares are logical: the actors
# run at full speed wherever they are.
DESYNC_GPU_SHARE = 0.1
DESYNC_BATCH_SIZE = 4  # clips per DeSync actor call
# the columns the generation job's driver reads besides shard, id, status, stage and flags
REPORT_COLUMNS = ("batch_clips",)


def min_desync_seconds() -> float:
    """Shortest clip the Synchformer scores: 14 windows of frames and of 16 kHz audio (4.8 s)."""
    cfg = DesyncConfig.tiny()  # the window geometry is the same at every size
    frames = (cfg.window_segments - 1) * cfg.video.window_stride + cfg.video.num_frames
    samples = (cfg.window_segments - 1) * cfg.audio_hop + cfg.audio_window
    return max(frames / cfg.fps, samples / DESYNC_AUDIO_RATE)


def desync_settings(config) -> DesyncSettings | None:
    """The DeSync model of a generation job (None with `--no-desync`)."""
    if not config.desync:
        return None
    return DesyncSettings(config.variant, weights_dir=config.weights_dir, offline=config.offline)


def qa_settings(config) -> dict:
    """The job settings its QA columns depend on (merged into `_meta.json`'s settings, so a
    folder is only continued with the same thresholds and DeSync model). Resolves the DeSync
    weights: a WeightsError here stops the job before Ray starts."""
    from selva_core.weights import WeightsError

    desync = desync_settings(config)
    try:
        described = desync.describe() if desync is not None else None
    except WeightsError as exc:
        raise type(exc)(
            f"{exc} (DeSync of the generated tracks needs it; --no-desync skips DeSync)"
        ) from None
    return {
        "thresholds": config.thresholds.describe(),
        "clip_level": CLIP_LEVEL,
        "silence_dbfs": SILENCE_DBFS,
        "true_peak_oversampling": TRUE_PEAK_OVERSAMPLING,
        "desync": described,
    }


def track_qa(wav, sample_rate: int, thresholds: QAThresholds) -> dict:
    """QA columns of one written track: levels, clipped and silent shares, spectral flatness,
    flags (DeSync, if any, is added by its actor) and the seconds it took."""
    t0 = time.perf_counter()
    metrics = clip_metrics(wav, sample_rate)
    values = metrics.as_dict()
    values.pop("desync_s")
    values["qa_flags"] = qa_flags(metrics, thresholds)
    values["t_qa"] = time.perf_counter() - t0
    return values


def desync_cells(row: dict, wav, sample_rate: int) -> dict:
    """The clip's DeSync inputs as Arrow cells: the source's frames over the first 8 s of its
    window and the written track at 16 kHz (empty under 4.8 s: nothing is decoded then)."""
    if (row.get("duration") or 0.0) < min_desync_seconds():
        return encode_inputs(None)
    start = row.get("start") or 0.0
    with local_copy(row["source"]) as path:
        inputs = prepare_desync_inputs(path, start, row["duration"], wav, sample_rate)
    return encode_inputs(inputs)


def add_desync_inputs(row: dict, values: dict, wav, sample_rate: int) -> None:
    """Fill `values` with the clip's DeSync cells; a clip whose video cannot be decoded for
    them fails with stage "desync" (as in the qa job)."""
    values.update(encode_inputs(None))
    if values.get("status") != "ok":
        return
    t0 = time.perf_counter()
    try:
        values.update(desync_cells(row, wav, sample_rate))
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
        values.update(error_result(row, "desync", exc))
    values["t_qa"] = (values.get("t_qa") or 0.0) + time.perf_counter() - t0
