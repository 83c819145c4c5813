"""Long videos in the generation job: windows through the pipeline, one joined track per video.

Design (Ray streaming kept end to end):

    window rows -> decode (CPU tasks, one window each) -> feature encoders (actors)   [catalog]
    window rows -> feature loader (CPU tasks reading extract's window rows)           [features]
      -> WindowAssembler (assemble.py; one light actor, no torch: holds each video's window
         features until its last window arrives, then emits the video as one row; rows stream
         through as they complete)
      -> LongAudioGenerator (generator actors: one call samples all windows of one video,
         `continue` in time order holding each window's overlap to the previous window's
         latent, `crossfade` as independent batches; decodes them and joins them into one
         track of exactly the video's length)
      -> the job's writers (audio, mux, one results row per video with per-window timings)

Windows of one video are decoded by separate tasks and encoded on any encoder actor, in any
batch; the assembler orders them by index. `continue` needs window k's final latent before
window k+1 can be sampled, so the windows of one video are sampled in order inside one
generator call (different videos run on different actors at once). A window's audio depends
only on its features, its seed `window_seed(clip seed, k)` and, in `continue` mode, the
previous window's latent; so the joined track is the same whichever actors and batches ran
the windows. Long videos run as a second Ray Data pipeline after the ordinary clips'
(`job.GenerateJob`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import torch

from ..io.catalog import CatalogProblem
from ..io.feature_schema import WINDOW_SCALARS
from ..io.output_dir import OutputDir
from ..io.rows import ROW_COLUMNS, batch_rows, error_result
from ..io.windows import DEFAULT_OVERLAP, DEFAULT_WINDOW, WindowSettings, expand
from ..stages.decode import WINDOW_COLUMNS
from .config import JOIN_MODES, GenerateInputError
from .stages import GEN_COLUMNS, NAN, STATUS_COLUMNS, AudioGenerator

log = logging.getLogger(__name__)

# plan columns of a window row besides the ordinary clip's
WINDOW_PLAN_COLUMNS = WINDOW_COLUMNS


def window_settings(config, layout) -> WindowSettings:
    """The run's windows: the flags for catalog input (default 8 s / 1 s), the folder's own for
    features input (its windows were cut by extract; other flags are refused)."""
    if layout is None:
        window = DEFAULT_WINDOW if config.window is None else config.window
        return WindowSettings.for_run(window, config.overlap, config.max_duration)
    have = WindowSettings(float(layout.window), float(layout.overlap))
    asked = (config.window, config.overlap)
    if (config.window is not None and abs(config.window - have.window) > 1e-6) or (
        config.overlap is not None and have.enabled and abs(config.overlap - have.overlap) > 1e-6
    ):
        raise GenerateInputError(
            f"features in {config.input} were cut into windows of {have.window:g} s with "
            f"{have.overlap:g} s overlap (0: none); --window/--overlap {asked} differ: drop "
            "them or extract again with the windows you want"
        )
    return have


def plan_long(
    rows: list[dict], done: set[str], config, spec, layout
) -> tuple[list[dict], list[dict], list[CatalogProblem]]:
    """(ordinary rows, window rows of long videos, problems). Window rows carry their parent's
    fields (its seed too: the assembler derives each window's) and the window columns;
    results are per video (`parent_id`)."""
    settings = window_settings(config, layout)
    if layout is not None:
        return _stored_windows(rows, config.input, done)
    rows, _ = expand([r for r in rows if r["id"] not in done], settings, spec)
    short = [r for r in rows if not r.get("parent_id")]
    long_rows = [r for r in rows if r.get("parent_id")]
    return short, long_rows, []


def _stored_windows(rows: list[dict], uri: str, done: set[str]):
    """Features input: attach the window columns of stored rows; a video whose stored windows
    are incomplete (a window failed in extract) becomes a problem naming the missing ones."""
    out_dir = OutputDir(uri)
    info: dict[tuple[str, int], dict] = {}
    for path in {r["feature_file"] for r in rows}:
        names = pq.read_schema(path, filesystem=out_dir.fs).names
        if "parent_id" not in names:
            continue
        table = pq.read_table(path, columns=["id", *WINDOW_SCALARS], filesystem=out_dir.fs)
        for k, item in enumerate(table.to_pylist()):
            if item["parent_id"] is not None:
                info[(path, k)] = item
    plain, by_parent = [], defaultdict(list)
    for r in rows:
        w = info.get((r["feature_file"], r["feature_row"]))
        if w is None:
            plain.append(r)
            continue
        r.update({k: w[k] for k in WINDOW_SCALARS})
        r["pad_to"] = round(r["window_end"] - r["window_start"], 6)
        by_parent[w["parent_id"]].append(r)
    problems, long_rows = [], []
    for parent, members in sorted(by_parent.items()):
        if parent in done:
            continue
        members.sort(key=lambda r: r["window_index"])
        count = int(members[0]["window_count"])
        have = [int(m["window_index"]) for m in members]
        if have != list(range(count)):
            missing = sorted(set(range(count)) - set(have))
            problems.append(
                CatalogProblem(
                    parent,
                    members[0]["source"],
                    -1,
                    f"features of {parent} hold {len(have)} of its {count} windows "
                    f"(missing {missing}: see the extract run's errors); cannot join",
                )
            )
            continue
        long_rows.extend(members)
    return [r for r in plain if r["id"] not in done], long_rows, problems


# ---- the generator ----------------------------------------------------------------------------


class LongAudioGenerator(AudioGenerator):
    """The generation actor (same models, adapters, seeds) for whole long videos: samples a
    video's windows (`continue`: in order, inpainting each window's overlap; `crossfade`:
    independent batches), decodes them and joins them into one track."""

    def __init__(self, *, join: str = "continue", **kwargs):
        if join not in JOIN_MODES:
            raise ValueError(f"join mode must be one of {JOIN_MODES}, got {join!r}")
        super().__init__(**kwargs)
        self.join = join

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = list(batch_rows(batch))
        out: dict[str, list] = defaultdict(list)
        for row in rows:
            made = None
            if row["status"] == "ok":
                try:
                    made = self._video(row)
                except Exception as exc:  # noqa: BLE001 - the video becomes an error row
                    row.update(error_result(row, "generate", exc))
            wav, extra = made if made is not None else (np.zeros(0, np.float32), {})
            keep = (
                *ROW_COLUMNS,
                "duration",
                "input_hash",
                *GEN_COLUMNS,
                *STATUS_COLUMNS,
                "decode_s",
                "features_s",
            )
            for k in keep:
                value = row.get(k)
                out[k].append(NAN if value is None and k.endswith("_s") else value)
            out["audio"].append(wav)
            out["sampling_s"].append(extra.get("sampling_s", NAN))
            out["vocoder_s"].append(extra.get("vocoder_s", NAN))
            out["batch_clips"].append(extra.get("batch_clips", 0))
            out["worker"].append(self.worker)
            out["windows"].append(extra.get("windows"))
            out["join"].append(self.join)
            out["window_timings"].append(extra.get("window_timings"))
            out["seam_worst"].append(extra.get("seam_worst", NAN))
            out["seam_inner_max"].append(extra.get("seam_inner_max", NAN))
        return dict(out)

    def _window_features(self, row: dict, k: int, duration: float):
        from selva_core.pipeline import Features

        sync = torch.from_numpy(np.array(row["sync_f"][k], dtype=np.float32))
        sync = sync[: int(row["sync_len"][k])]
        clip = None
        if self.spec.uses_clip_frames:
            clip = torch.from_numpy(np.array(row["clip_f"][k], dtype=np.float32))
            clip = clip[: int(row["clip_len"][k])]
        return Features(
            variant=self.spec.name,
            prompt=row["prompt"],
            duration=duration,
            sync_f=sync,
            text_f=torch.from_numpy(np.array(row["text_f"][k], dtype=np.float32)),
            clip_f=clip,
            source=row["source"],
        )

    def _video(self, row: dict) -> tuple[np.ndarray, dict]:
        from selva_core.long import (
            Window,
            continuation_prefix,
            join_windows,
            pipe_quantum,
            seam_report,
            seam_spans,
            track_samples,
        )

        info = json.loads(row["windows_json"])
        windows = [Window(int(w["index"]), float(w["start"]), float(w["end"])) for w in info]
        seeds = [int(w["seed"]) for w in info]
        lengths = [round(w.end - w.start, 6) for w in windows]  # float noise off the lengths
        feats = [self._window_features(row, k, lengths[k]) for k in range(len(windows))]
        negative = row["negative_prompt"]
        if self.pipe.clip is None and isinstance(negative, str):
            from selva_core.conditioning import load_clip

            cfg = self.pipe.config
            self.pipe.clip = load_clip(self.spec, self.store, dtype=cfg.dtype, device=cfg.device)
        steps, cfg_strength = int(row["steps"]), float(row["cfg"])
        quantum = pipe_quantum(self.pipe)
        latents: list[torch.Tensor] = []
        sample_t = [0.0] * len(windows)
        per_batch = 1
        if self.join == "continue":
            for k, (f, w) in enumerate(zip(feats, windows, strict=True)):
                known = None
                if k > 0:
                    known = continuation_prefix(latents[-1], windows[k - 1], w, quantum)
                t0 = time.perf_counter()
                lat = self.pipe.sample_latents(
                    [f],
                    negative_prompt=[negative],
                    seed=[seeds[k]],
                    steps=steps,
                    cfg=cfg_strength,
                    known_latents=[known],
                )[0]
                sample_t[k] = time.perf_counter() - t0
                latents.append(lat)
        else:
            per_batch = self.batch_size
            for a in range(0, len(windows), per_batch):
                idx = list(range(a, min(a + per_batch, len(windows))))
                t0 = time.perf_counter()
                lat = self.pipe.sample_latents(
                    [feats[k] for k in idx],
                    negative_prompt=[negative] * len(idx),
                    seed=[seeds[k] for k in idx],
                    steps=steps,
                    cfg=cfg_strength,
                )
                dt = (time.perf_counter() - t0) / len(idx)
                for j, k in enumerate(idx):
                    latents.append(lat[j])
                    sample_t[k] = dt
        wavs, vocode_t = [], []
        for lat, length in zip(latents, lengths, strict=True):
            t0 = time.perf_counter()
            wavs.append(self.pipe.decode_latents(lat[None], length)[0])
            vocode_t.append(time.perf_counter() - t0)
        sr = self.pipe.sampling_rate
        duration = float(row["duration"])
        track = join_windows(wavs, windows, sr, track_samples(duration, sr), mode=self.join).numpy()
        seam = None
        if len(windows) > 1:
            try:
                seam = seam_report(torch.from_numpy(track), sr, seam_spans(windows, self.join))
            except ValueError as exc:  # a track too short to measure: no metric, still audio
                log.info("%s: no seam metric (%s)", row["id"], exc)
        timings = [
            {**w, "t_sampling": sample_t[k], "t_vocoder": vocode_t[k]} for k, w in enumerate(info)
        ]
        return track.astype(np.float32), {
            "sampling_s": float(sum(sample_t)),
            "vocoder_s": float(sum(vocode_t)),
            "batch_clips": min(per_batch, len(windows)),
            "windows": len(windows),
            "window_timings": json.dumps(timings),
            "seam_worst": seam.worst if seam else NAN,
            "seam_inner_max": seam.inner_max if seam else NAN,
        }


__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_WINDOW",
    "JOIN_MODES",
    "LongAudioGenerator",
    "plan_long",
    "window_settings",
]
