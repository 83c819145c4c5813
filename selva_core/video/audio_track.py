"""Read a window of a media file's audio track as mono float32 at a requested rate.

Mirrors the official SelVA/MMAudio training loader (selva/data/extraction/vgg_sound.py): the
decoded channels are averaged to mono at the source rate, then resampled with torchaudio's
"kaiser_best" sinc settings, then cut to the requested sample count. Unlike that loader, only the
requested window is decoded (seek + margin), it is aligned to the packets' timestamps, and a
track that ends early is zero-padded instead of rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import av
import numpy as np
import torch

from selva_core.compat import torchaudio_functional
from selva_core.video.errors import AudioDecodeError

# torchaudio's "kaiser_best" parameters, as used by the official training data loader.
RESAMPLE_KWARGS = {
    "lowpass_filter_width": 64,
    "rolloff": 0.9475937167399596,
    "resampling_method": "sinc_interp_kaiser",
    "beta": 14.769656459379492,
}
# Extra source samples decoded on both sides of the window, so the resampling filter sees real
# signal there (its half-width is < 200 source samples for 48k -> 16k).
_MARGIN_SAMPLES = 2048


@dataclass(frozen=True)
class AudioTrack:
    """A mono window of an audio track."""

    samples: torch.Tensor  # (num_samples,) float32, mono, at sample_rate
    sample_rate: int
    valid_samples: int  # leading samples backed by the track; the rest is zero padding
    source_rate: int
    source_channels: int
    source_codec: str


def select_audio_stream(container: av.container.InputContainer):
    """The first audio stream, or None."""
    return container.streams.audio[0] if container.streams.audio else None


def _left_margin(src_rate: int, sample_rate: int) -> tuple[int, int]:
    """(source, output) samples decoded before the window: a whole number of resampler
    periods, so output sample 0 stays on the grid."""
    if src_rate == sample_rate:
        return 0, 0
    g = math.gcd(src_rate, sample_rate)
    in_unit, out_unit = src_rate // g, sample_rate // g
    units = math.ceil(_MARGIN_SAMPLES / in_unit)
    return units * in_unit, units * out_unit


def window_seeks(stream, start: float, sample_rate: int) -> bool:
    """Whether `decode_audio_window` seeks for this window (it reads from the current position
    when the window's margin reaches the file's start, so that needs a fresh container)."""
    src_rate = int(stream.codec_context.sample_rate or 0)
    if src_rate <= 0:
        return False
    pre_in, _ = _left_margin(src_rate, int(sample_rate))
    return int(round(start * src_rate)) - pre_in > 0


def decode_audio_window(
    container: av.container.InputContainer,
    stream,
    *,
    path: str,
    start: float,
    sample_rate: int,
    num_samples: int,
) -> AudioTrack:
    """Decode `num_samples` mono samples at `sample_rate` starting `start` seconds into the file.

    Samples before the track's first packet or after its end are zeros. Raises
    `AudioDecodeError` if the track cannot be decoded.
    """
    if sample_rate <= 0 or num_samples < 0:
        raise ValueError(
            f"need sample_rate > 0 and num_samples >= 0, got {sample_rate}, {num_samples}"
        )
    ctx = stream.codec_context
    src_rate = int(ctx.sample_rate or 0)
    if src_rate <= 0:
        raise AudioDecodeError(path, f"audio stream #{stream.index} reports no sample rate")
    resampling = src_rate != sample_rate
    pre_in, pre_out = _left_margin(src_rate, sample_rate)
    need_in = math.ceil(num_samples * src_rate / sample_rate) + (
        _MARGIN_SAMPLES if resampling else 0
    )
    start_sample = int(round(start * src_rate))
    first = start_sample - pre_in  # source sample index held by buf[0]; may be negative
    total = pre_in + need_in
    buf = np.zeros(total, np.float32)
    real_after_start = 0

    tb = stream.time_base
    seek_to = max(first / src_rate, 0.0)
    attempts = [seek_to, 0.0] if seek_to > 0 else [0.0]
    channels = ctx.channels
    for attempt, seek_time in enumerate(attempts):
        buf[:] = 0.0
        real_after_start = 0
        try:
            if seek_time > 0 or attempt > 0:
                container.seek(int(seek_time / tb) if seek_time > 0 else 0, stream=stream)
            converter = av.AudioResampler(format="fltp")  # keep layout and rate
            pos = None
            overshoot = False
            for frame in container.decode(stream):
                if pos is None:
                    pos = int(round(frame.pts * tb * src_rate)) if frame.pts is not None else 0
                    if pos > first and seek_time > 0:
                        overshoot = True  # seek landed after the window start: retry from 0
                        break
                for conv in converter.resample(frame):
                    data = conv.to_ndarray()
                    channels = data.shape[0]
                    mono = data.mean(axis=0, dtype=np.float32) if channels > 1 else data[0]
                    n = mono.shape[0]
                    lo, hi = max(pos, first), min(pos + n, first + total)
                    if hi > lo:
                        buf[lo - first : hi - first] = mono[lo - pos : hi - pos]
                        real_after_start += max(0, hi - max(lo, start_sample))
                    pos += n
                if pos is not None and pos >= first + total:
                    break
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(
                path, f"cannot decode audio stream #{stream.index}: {exc}"
            ) from exc
        if not overshoot:
            break

    wav = torch.from_numpy(buf)
    if resampling:
        resample = torchaudio_functional().resample
        wav = resample(wav, src_rate, sample_rate, **RESAMPLE_KWARGS)[pre_out:]
        valid = int(real_after_start * sample_rate // src_rate)
    else:
        valid = real_after_start
    wav = wav[:num_samples]
    if wav.shape[0] < num_samples:
        wav = torch.cat([wav, wav.new_zeros(num_samples - wav.shape[0])])
    return AudioTrack(
        samples=wav.contiguous(),
        sample_rate=sample_rate,
        valid_samples=min(valid, num_samples),
        source_rate=src_rate,
        source_channels=int(channels),
        source_codec=ctx.name,
    )
