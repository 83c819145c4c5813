"""Decode stages shared by every job: catalog rows -> frames (and audio) at the model's rates
(`decode_batch`, CPU tasks), and a clip's own audio track at its own rate (`read_source_audio`,
for QA and the report). A clip that fails becomes an error row; its neighbours carry on."""

from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np

from selva_core.pipeline import clip_duration

from ..io.feature_schema import WINDOW_SCALARS
from ..io.rows import OK_RESULT, ROW_COLUMNS, batch_rows, error_result, local_copy

log = logging.getLogger(__name__)

# a long video's window and the clip's object mask (selva_ray.io.windows)
WINDOW_COLUMNS = (*WINDOW_SCALARS, "pad_to", "mask")
CLIP_COLUMNS = (*ROW_COLUMNS, "input_hash", *WINDOW_COLUMNS)
EMPTY_FRAMES = np.zeros((0, 3, 1, 1), dtype=np.uint8)
EMPTY_AUDIO = np.zeros((0,), dtype=np.float32)


def decode_args(spec, config, *, audio_rate: int | None, ignore_rotation: bool = False) -> dict:
    """`decode_batch`'s settings from a job's config (extract's or generate's), so that both
    jobs decode a clip alike."""
    return {
        "variant": spec.name,
        "max_duration": config.max_duration,
        "frame_rule": config.frame_rule,
        "ignore_rotation": ignore_rotation,
        "audio_rate": audio_rate,
        "mask_strength": config.mask_strength,
        "mask_paths": tuple(config.mask_paths),
    }


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    variant: str,
    max_duration: float,
    frame_rule: str,
    audio_rate: int | None,
    carry: tuple[str, ...] = (),
    ignore_rotation: bool = False,
    mask_strength: float = 1.0,
    mask_paths: tuple[str, ...] = ("clip", "sync"),
) -> dict[str, list]:
    """Catalog rows -> uint8 frames (and mono audio) at the model's rates.

    `carry` names extra input columns passed through unchanged (other jobs' per-clip settings).
    A row with `pad_to` (a window of a long video) is padded to that length; a row with a
    `mask` has its background greyed by it (`mask_strength`, `mask_paths`); a mask that does
    not fit the video fails the clip with a message naming both files.
    """
    from selva_core.pipeline import decode_config_for
    from selva_core.variants import get_spec

    config = decode_config_for(get_spec(variant), frame_rule, ignore_rotation)
    out: dict[str, list] = defaultdict(list)
    for row in batch_rows(batch):
        result = dict(OK_RESULT)
        frames = clip_frames = EMPTY_FRAMES
        audio, duration, fps, has_audio, padded = EMPTY_AUDIO, 0.0, 0.0, False, False
        rotation, digest = 0, None
        try:
            with local_copy(row["source"]) as path:
                clip = _decode_row(row, path, max_duration, audio_rate, config)
            if row.get("mask"):
                clip = _apply_mask(clip, row["mask"], mask_strength, mask_paths, config)
                digest = clip.mask_digest
            frames, clip_frames = clip.sync_frames.numpy(), clip.clip_frames.numpy()
            if clip.audio is not None:
                audio = clip.audio.numpy()
            # the clip's exact duration (its track's), not what the frames cover
            duration, fps = clip_duration(clip), clip.source_fps
            has_audio, padded = clip.has_audio, clip.padded
            rotation = clip.rotation
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            result = error_result(row, "decode", exc)
        for key in (*CLIP_COLUMNS, *carry):
            out[key].append(row.get(key))
        for key, value in result.items():
            out[key].append(value)
        out["duration"].append(duration)
        out["fps"].append(fps)
        out["has_audio"].append(has_audio)
        out["padded"].append(padded)
        out["rotation"].append(rotation)
        out["mask_digest"].append(digest)
        out["sync_frames"].append(frames)
        out["clip_frames"].append(clip_frames)
        out["audio"].append(audio)
    return dict(out)


def _decode_row(row: dict, path: str, max_duration: float, audio_rate, config):
    from selva_core.video.decode import VideoReader

    with VideoReader(path, config=config) as reader:
        return reader.read(
            start=row["start"],
            max_duration=row["duration"] or max_duration,
            audio_rate=audio_rate,
            pad_to=row.get("pad_to"),
        )


def _apply_mask(clip, mask: str, strength: float, paths, config):
    from selva_core.video.mask import MaskSettings, apply_mask

    with local_copy(mask) as local:
        return apply_mask(clip, MaskSettings(local, float(strength), tuple(paths)), config=config)


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
