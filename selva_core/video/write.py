"""PyAV writers: generated audio as FLAC, and dubbed videos (video stream copied, new track).

Both write to a temporary name in the target folder and rename at the end, so a crash never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from .decode import open_media
from .errors import VideoError

log = logging.getLogger(__name__)

AAC_BITRATE = 192_000


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


BIT_DEPTHS = (16, 24)


def pcm(wav: torch.Tensor, bits: int = 16) -> np.ndarray:
    """Full-scale clipped, rounded integer samples of a mono waveform: int16 for 16 bits; for
    24 bits int32 holding the 24-bit value in its top three bytes (how FFmpeg takes it)."""
    if bits not in BIT_DEPTHS:
        raise ValueError(f"bits must be one of {BIT_DEPTHS}, got {bits}")
    if wav.dim() != 1:
        raise ValueError(f"expected a mono waveform (N,), got shape {tuple(wav.shape)}")
    x = wav.detach().double().clamp(-1.0, 1.0).cpu().numpy()
    q = np.round(x * ((1 << (bits - 1)) - 1))
    return q.astype(np.int16) if bits == 16 else (q.astype(np.int32) << 8)


def write_flac(path: str | Path, wav: torch.Tensor, sample_rate: int, bits: int = 16) -> Path:
    """Mono float waveform in [-1, 1] -> FLAC of `bits` (16 or 24) at `sample_rate`, written
    under a hidden name and renamed when whole: the one FLAC writer of the project."""
    samples = pcm(wav, bits)
    layout = "s16" if bits == 16 else "s32"
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=sample_rate, layout="mono")
        stream.format = layout
        frame = av.AudioFrame.from_ndarray(samples[None, :], format=layout, layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return Path(path)


def _encode_track(out, stream, wav: np.ndarray, sample_rate: int, offset: int) -> None:
    """Encode float mono samples, delayed by `offset` samples of silence."""
    if offset > 0:
        wav = np.concatenate([np.zeros(offset, dtype=np.float32), wav])
    chunk = 1024 * 16
    for i in range(0, len(wav), chunk):
        frame = av.AudioFrame.from_ndarray(
            wav[None, i : i + chunk].astype(np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = sample_rate
        frame.pts = i
        frame.time_base = Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def mux_audio(
    video: str | Path,
    wav: torch.Tensor,
    sample_rate: int,
    output: str | Path,
    *,
    start: float = 0.0,
    duration: float | None = None,
    container: str = "mp4",
) -> Path:
    """Write `output` (`container`: mp4, mov or matroska): the video's packets from `start`
    for `duration` seconds, copied without re-encoding, plus `wav` (mono, starting at
    `start`) as an AAC track.

    Copying packets means the cut begins at the keyframe at or before `start`; the track is
    delayed by the difference so sound and picture stay aligned. Audio longer than the copied
    video is trimmed to it.
    """
    video = Path(video)
    samples = wav.detach().float().clamp(-1.0, 1.0).cpu().numpy()
    with open_media(video) as src:
        if not src.streams.video:
            raise VideoError(str(video), "no video stream to copy")
        vin = src.streams.video[0]
        tb = vin.time_base
        end = start + (duration if duration is not None else len(samples) / sample_rate)
        if start > 0:
            src.seek(int(start / tb), stream=vin, backward=True, any_frame=False)
        with atomic_path(output) as tmp, av.open(str(tmp), "w", format=container) as dst:
            vout = dst.add_stream_from_template(vin)
            aout = dst.add_stream("aac", rate=sample_rate, layout="mono")
            aout.bit_rate = AAC_BITRATE
            first_pts = None
            last_end = 0.0
            for packet in src.demux(vin):
                if packet.size == 0 or (packet.dts is None and packet.pts is None):
                    continue  # the flush packet
                # Matroska leaves the dts of the first frames of a B-frame stream unset; those
                # packets are kept (the muxer derives it), cut by pts instead.
                if packet.pts is None:
                    packet.pts = packet.dts
                if (packet.dts if packet.dts is not None else packet.pts) * tb >= end:
                    break
                if first_pts is None:
                    first_pts = packet.pts
                packet.pts -= first_pts
                if packet.dts is not None:
                    packet.dts -= first_pts
                packet.stream = vout
                last_end = max(last_end, float((packet.pts + (packet.duration or 0)) * tb))
                dst.mux(packet)
            if first_pts is None:
                raise VideoError(
                    str(video), f"no video packets between {start:.3f}s and {end:.3f}s"
                )
            lead = max(0.0, start - float(first_pts * tb))
            offset = round(lead * sample_rate)
            keep = max(0, min(len(samples), round((last_end - lead) * sample_rate)))
            _encode_track(dst, aout, samples[:keep], sample_rate, offset)
    return Path(output)
