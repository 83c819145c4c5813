"""Cut a long video into overlapping windows, seed them, and decode them one at a time.

The generator is trained on 8 s clips and degrades on much longer context, so a long video is
generated window by window and the windows are joined (`selva_core.long.join`).

Plan (`plan_windows`): windows of `window` seconds start every `window - overlap` seconds from
0. The last window is *shifted back* so that it ends at the video's end (it overlaps its
predecessor by more than `overlap`), rather than being shorter: every window then has the same
length, hence the same sequence lengths (windows of any videos batch together), and the model
always sees the full context it was trained on (a short tail window, possibly under one sync
window, would be generated from almost no video). Only a video shorter than one window gives a
single, shorter window [0, duration).

With `quantum` (the latent frame period, `latent_quantum`), every start lies on the latent
grid: the stride is rounded down to whole latent frames and the last start up, so window k+1's
latent frame j is exactly window k's frame j + shift. `continue` joins need that. The last
window may then end up to one quantum (< 33 ms) past the video's end; the decoder pads its
frames there and the joined track is cut to the video's duration.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from selva_core.seqconfig import SequenceConfig
from selva_core.video.decode import DecodeConfig, DecodedClip, VideoReader

from ..defaults import DEFAULT_OVERLAP, DEFAULT_WINDOW
from ..seeds import window_seed

_EPS = 1e-9


@dataclass(frozen=True)
class Window:
    """One window of a long video: [start, end) seconds, `index` from 0 in time order."""

    index: int
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    def start_sample(self, sample_rate: int) -> int:
        """First sample of the window in the joined track."""
        return int(round(self.start * sample_rate))


def latent_quantum(seq: SequenceConfig) -> float:
    """Seconds per latent frame (512 / 16000 = 32 ms for 16k, 1024 / 44100 s for 44k)."""
    return seq.spectrogram_frame_rate * seq.latent_downsample_rate / seq.sampling_rate


def plan_windows(
    duration: float,
    window: float = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
    *,
    quantum: float | None = None,
) -> list[Window]:
    """Windows covering [0, duration): see the module doc for the rules.

    `overlap` must be in [0, window / 2] (so a seam's crossfade never reaches the next seam).
    Every window lasts `window` seconds, except a single window for a video shorter than that.
    """
    if not duration > 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if not window > 0:
        raise ValueError(f"window must be > 0 seconds, got {window}")
    if not 0 <= overlap <= window / 2:
        raise ValueError(f"overlap must be within [0, window/2 = {window / 2}], got {overlap}")
    if quantum is not None and not 0 < quantum <= window - overlap:
        raise ValueError(f"quantum must be in (0, window - overlap], got {quantum}")
    if duration <= window + _EPS:
        return [Window(0, 0.0, float(duration))]
    if quantum is None:
        stride_units, unit = window - overlap, 1.0
        last_units = duration - window
    else:
        stride_units, unit = math.floor((window - overlap) / quantum + _EPS), quantum
        last_units = math.ceil((duration - window) / quantum - _EPS)
    starts: list[float] = []
    k = 0
    while k * stride_units * unit + window < duration - _EPS:
        starts.append(k * stride_units * unit)
        k += 1
    last = last_units * unit
    if last > starts[-1] + _EPS:
        starts.append(last)
    # rounded to the nanosecond: 6.976, not 6.976000000000001 (sample positions are unchanged)
    return [Window(i, round(s, 9), round(s + window, 9)) for i, s in enumerate(starts)]


def iter_window_clips(
    path: str | os.PathLike[str],
    windows: Sequence[Window],
    *,
    config: DecodeConfig | None = None,
    audio_rate: int | None = None,
) -> Iterator[tuple[Window, DecodedClip]]:
    """Decode `windows` of `path` one at a time from one open file (`VideoReader`).

    Each window is decoded when the caller asks for it and nothing is kept between windows, so
    memory stays at about one window whatever the video's length. Every clip lasts exactly its
    window's duration (a window past the last frame repeats it; see `DecodedClip.padded` and
    `content_duration`). With `audio_rate`, each clip also carries its window of the audio
    track (training samples). Bad input raises the decoder's `VideoError`s naming the file.
    """
    with VideoReader(path, config=config) as reader:
        for w in windows:
            clip = reader.read(
                start=w.start, max_duration=w.duration, audio_rate=audio_rate, pad_to=w.duration
            )
            yield w, clip


def video_duration(path: str | os.PathLike[str], config: DecodeConfig | None = None) -> float:
    """Seconds of `path`'s video stream (metadata, else a packet scan): the joined track's
    length and the `duration` to plan windows over."""
    with VideoReader(path, config=config) as reader:
        return reader.video_duration()


__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_WINDOW",
    "Window",
    "iter_window_clips",
    "latent_quantum",
    "plan_windows",
    "video_duration",
    "window_seed",
]
