"""Write small, real test videos (and broken files) with PyAV.

Reusable by any test suite. Videos are tiny (default 96x64) and fast to encode (well under a
second for 10 s at 25 fps). The default frame pattern encodes each source frame's index, so a
test can tell WHICH source frame ended up in a decoded/resized output frame:

- the top ``STRIPE_ROWS`` fraction of the frame holds ``INDEX_BITS`` vertical stripes, stripe b
  (left to right) is white if bit b of the index is set, black otherwise (LSB on the left);
- the bottom band holds three pure colour blocks, red | green | blue, to check channel order.

Both survive H.264 coding and any resize that keeps the whole frame (SelVA's 224x224 squash, the
384x384 CLIP resize); read them back with `frame_index` / `colour_blocks`.

Main entry points:

    write_video(path, fps=25, duration=2.0, audio=AudioSpec(...))   # CFR, optional audio
    write_video(path, frame_times=[0.0, 0.03, 0.1, ...])            # variable frame rate
    write_audio_only(path, AudioSpec(...), duration=1.0)            # no video stream
    write_text_file / write_empty_file / write_truncated / write_undecodable_video /
    write_video(path, size=(8200, 16), num_frames=2)                # bad inputs
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

INDEX_BITS = 10  # up to 1024 distinguishable frames
STRIPE_ROWS = 0.70  # fraction of the height used by the index stripes
MAX_INDEX = 2**INDEX_BITS - 1

_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
_VIDEO_TIME_BASE_VFR = Fraction(1, 90000)


# --------------------------------------------------------------------------------------------
# frame content
# --------------------------------------------------------------------------------------------


def make_frame(index: int, width: int, height: int, pattern: str = "index", seed: int = 0):
    """One RGB frame (H, W, 3) uint8 for source frame `index`.

    pattern "index": index stripes + colour blocks (see module doc); "noise": smooth-ish
    deterministic random content (for exact resize comparisons); "gray": flat level index % 256;
    "square": a bright square moving over a dark background (`square_position`).
    """
    if pattern == "index":
        if not 0 <= index <= MAX_INDEX:
            raise ValueError(f"pattern 'index' supports frame indices 0..{MAX_INDEX}, got {index}")
        img = np.zeros((height, width, 3), np.uint8)
        top = int(round(height * STRIPE_ROWS))
        edges = np.linspace(0, width, INDEX_BITS + 1).round().astype(int)
        for b in range(INDEX_BITS):
            if (index >> b) & 1:
                img[:top, edges[b] : edges[b + 1]] = 255
        thirds = np.linspace(0, width, 4).round().astype(int)
        for c in range(3):
            img[top:, thirds[c] : thirds[c + 1], c] = 255
        return img
    if pattern == "noise":
        rng = np.random.default_rng([seed, index])
        small = rng.integers(0, 256, (max(height // 4, 1), max(width // 4, 1), 3), np.uint8)
        return np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)[:height, :width].copy()
    if pattern == "gray":
        return np.full((height, width, 3), index % 256, np.uint8)
    if pattern == "square":
        img = np.full((height, width, 3), 40, np.uint8)
        x, y, side = square_position(index, width, height)
        img[y : y + side, x : x + side] = (250, 220, 60)
        return img
    raise ValueError(f"unknown pattern {pattern!r}")


def square_position(index: int, width: int, height: int) -> tuple[int, int, int]:
    """(x, y, side) of pattern "square"'s moving object in frame `index`: a square of a third
    of the height, vertically centred, sliding 2 px per frame left to right and wrapping."""
    side = max(height // 3, 2)
    y = (height - side) // 2
    x = (2 * index) % max(width - side, 1)
    return x, y, side


def frame_index(frame_chw: np.ndarray | object) -> int:
    """Read the source-frame index back from a (3, H, W) uint8 frame of pattern "index"
    (any size, as long as the whole source frame is visible, i.e. resized without crop)."""
    arr = np.asarray(frame_chw)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) frame, got shape {arr.shape}")
    _, h, w = arr.shape
    y0, y1 = int(h * 0.1), max(int(h * STRIPE_ROWS * 0.85), int(h * 0.1) + 1)
    index = 0
    for b in range(INDEX_BITS):
        x_mid = (b + 0.5) * w / INDEX_BITS
        half = max(w / INDEX_BITS * 0.2, 0.5)
        x0, x1 = int(x_mid - half), max(int(math.ceil(x_mid + half)), int(x_mid - half) + 1)
        if arr[:, y0:y1, x0:x1].mean() > 127.5:
            index |= 1 << b
    return index


def colour_blocks(frame_chw: np.ndarray | object) -> np.ndarray:
    """Mean RGB of the three bottom colour blocks of a pattern-"index" frame: (3 blocks, 3 ch)."""
    arr = np.asarray(frame_chw).astype(np.float32)
    _, h, w = arr.shape
    y0 = int(h * (STRIPE_ROWS + (1 - STRIPE_ROWS) * 0.3))
    y1 = max(int(h * (STRIPE_ROWS + (1 - STRIPE_ROWS) * 0.8)), y0 + 1)
    out = np.zeros((3, 3), np.float32)
    for c in range(3):
        x0 = int(w * (c + 0.3) / 3)
        x1 = max(int(w * (c + 0.7) / 3), x0 + 1)
        out[c] = arr[:, y0:y1, x0:x1].mean(axis=(1, 2))
    return out


# --------------------------------------------------------------------------------------------
# audio content
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioSpec:
    """Audio track to write. The signal: silence until `onset` seconds, then a sine of `freq` Hz
    and peak `amplitude` on every channel (or only on channel 0 if `first_channel_only`);
    or `kind="ramp"`: sample n holds ((n % 2000) - 1000) / 1000 * amplitude (exactly checkable
    through a lossless codec)."""

    codec: str = "aac"
    sample_rate: int = 48000
    channels: int = 2
    freq: float = 440.0
    amplitude: float = 0.5
    onset: float = 0.0
    first_channel_only: bool = False
    kind: str = "sine"
    duration: float | None = None  # default: the video's duration


def audio_signal(spec: AudioSpec, duration: float) -> np.ndarray:
    """The exact float waveform (channels, samples) that `write_video` feeds to the encoder."""
    n = int(round(duration * spec.sample_rate))
    t = np.arange(n, dtype=np.float64) / spec.sample_rate
    if spec.kind == "sine":
        mono = spec.amplitude * np.sin(2 * np.pi * spec.freq * t)
        mono[t < spec.onset] = 0.0
    elif spec.kind == "ramp":
        mono = ((np.arange(n) % 2000) - 1000) / 1000.0 * spec.amplitude
    else:
        raise ValueError(f"unknown audio kind {spec.kind!r}")
    sig = np.repeat(mono[None, :], spec.channels, axis=0)
    if spec.first_channel_only:
        sig[1:] = 0.0
    return sig.astype(np.float32)


def _add_audio_stream(container, spec: AudioSpec):
    if spec.channels not in _LAYOUTS:
        raise ValueError(f"channels must be one of {sorted(_LAYOUTS)}, got {spec.channels}")
    stream = container.add_stream(spec.codec, rate=spec.sample_rate, layout=_LAYOUTS[spec.channels])
    if spec.codec.startswith("pcm_"):
        stream.codec_context.format = "s16"
    return stream


def _encode_audio(container, stream, spec: AudioSpec, duration: float) -> None:
    sig = audio_signal(spec, duration)
    layout = _LAYOUTS[spec.channels]
    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=spec.sample_rate)
    chunk = 1024
    for i in range(0, sig.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(sig[:, i : i + chunk]), format="fltp", layout=layout
        )
        frame.sample_rate = spec.sample_rate
        frame.pts = i
        frame.time_base = Fraction(1, spec.sample_rate)
        for converted in resampler.resample(frame):
            container.mux(stream.encode(converted))
    for converted in resampler.resample(None):
        container.mux(stream.encode(converted))
    container.mux(stream.encode(None))


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------


def write_video(
    path: str | Path,
    *,
    fps: float | Fraction = 25,
    duration: float | None = None,
    num_frames: int | None = None,
    frame_times: Sequence[float] | None = None,
    size: tuple[int, int] = (96, 64),
    codec: str = "libx264",
    pattern: str = "index",
    gop: int | None = None,
    bframes: bool = True,
    audio: AudioSpec | None = None,
    container_format: str | None = None,
    faststart: bool = False,
    seed: int = 0,
    rotation: int = 0,
    display_matrix: bool = True,
    pix_fmt: str = "yuv420p",
    codec_options: dict[str, str] | None = None,
) -> Path:
    """Write a real video file and return its path.

    Frame i shows `make_frame(i, ...)` and is stamped at i/fps (CFR), or at `frame_times[i]`
    seconds (VFR; exact to 1/90000 s). Give the length as `duration` (seconds, frames =
    round(duration*fps)), `num_frames`, or `frame_times`. `size` is (width, height), even
    numbers; pass NTSC rates as Fraction(30000, 1001). `gop` sets the keyframe interval. The
    container comes from the file suffix unless `container_format` is given; `faststart` moves
    the mp4 index to the front.

    `rotation` (0, 90, 180, -90; FFmpeg's sign: counterclockwise) films "like a phone": frame i
    as shown is still `make_frame(i, *size)`, but it is stored turned by -rotation (width and
    height swap for +-90) with a display matrix that turns it back; `display_matrix=False`
    leaves the matrix out (the sideways file a reader ignoring rotation sees). `pix_fmt` (e.g.
    "yuv420p10le", "yuv444p" for odd sizes) and `codec_options` (e.g. x264's
    {"x264-params": "interlaced=1"}) go to the encoder.
    """
    path = Path(path)
    width, height = size
    fps = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    if frame_times is not None:
        times = [float(t) for t in frame_times]
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError("frame_times must be strictly increasing")
        n = len(times)
    else:
        if num_frames is None:
            if duration is None:
                raise ValueError("give duration, num_frames or frame_times")
            num_frames = int(round(duration * fps))
        n = num_frames
        times = None
    if n < 1:
        raise ValueError("a video needs at least one frame; see write_undecodable_video")
    video_duration = times[-1] + 1 / float(fps) if times is not None else n / float(fps)

    if rotation not in (0, 90, 180, -90):
        raise ValueError(f"rotation must be 0, 90, 180 or -90, got {rotation}")
    quarter = rotation // 90
    coded_w, coded_h = (height, width) if quarter % 2 else (width, height)

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = coded_w, coded_h
        stream.pix_fmt = pix_fmt
        if rotation and display_matrix:
            stream.set_display_rotation(rotation)
        enc_options: dict[str, str] = {}
        if codec == "libx264":
            enc_options.update({"preset": "veryfast", "crf": "16"})
            if not bframes:
                enc_options["bframes"] = "0"
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                enc_options.update({"keyint": str(gop), "min-keyint": str(gop)})
        enc_options.update(codec_options or {})
        if enc_options:
            stream.codec_context.options = enc_options
        if times is not None:
            stream.codec_context.time_base = _VIDEO_TIME_BASE_VFR
            stream.time_base = _VIDEO_TIME_BASE_VFR
        a_stream = _add_audio_stream(container, audio) if audio is not None else None

        for i in range(n):
            shown = make_frame(i, width, height, pattern, seed)
            stored = np.ascontiguousarray(np.rot90(shown, -quarter)) if quarter else shown
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            if times is not None:
                frame.pts = int(round(times[i] / _VIDEO_TIME_BASE_VFR))
                frame.time_base = _VIDEO_TIME_BASE_VFR
            else:
                frame.pts = i
                frame.time_base = 1 / fps
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

        if a_stream is not None:
            a_dur = audio.duration if audio.duration is not None else video_duration
            _encode_audio(container, a_stream, audio, a_dur)
    return path


def write_folder_catalog(root: str | Path, prompt: str, count: int, duration: float = 1.0) -> Path:
    """A folder catalog as a user keeps one: `root/<prompt>/<prompt>_<k>.mp4`, each a small
    25 fps video with a mono 16 kHz track (the folder's name is the clips' prompt)."""
    folder = Path(root) / prompt
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        write_video(
            folder / f"{prompt}_{k}.mp4",
            duration=duration,
            fps=25,
            size=(64, 48),
            audio=AudioSpec(sample_rate=16000, channels=1),
            seed=k,
        )
    return Path(root)


def write_long_video(
    path: str | Path,
    *,
    duration: float = 600.0,
    size: tuple[int, int] = (1920, 1080),
    fps: int = 60,
    audio_rate: int | None = 48000,
) -> Path:
    """A long, large video written in seconds: one second of H.264 (a flat picture with a
    moving block; IDR first, no B-frames) is encoded once and its packets are repeated with
    shifted timestamps for `duration` seconds (whole seconds). With `audio_rate`, an AAC mono
    track (8 s of a 440 Hz tone, repeated the same way) covers the same length. Every frame
    decodes; frame k shows the block at position k % fps. For memory and seek tests."""
    path = Path(path)
    width, height = size
    seconds = int(round(duration))
    tb = Fraction(1, fps)
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate = tb, fps
    enc.options = {
        "preset": "ultrafast",
        "crf": "35",
        "bframes": "0",
        "keyint": str(fps),
        "min-keyint": str(fps),
        "scenecut": "0",
    }
    luma = np.full((height, width), 90, np.uint8)
    chroma = np.full((height // 2, width), 128, np.uint8)  # U then V, each (h/2, w/2)
    block = max(height // 10, 2) // 2 * 2
    packets = []
    for i in range(fps):
        y = luma.copy()
        x0 = (i * (width - block)) // max(fps - 1, 1)
        y[height // 3 : height // 3 + block, x0 : x0 + block] = 235
        frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
        frame.pts, frame.time_base = i, tb
        packets.extend(enc.encode(frame))
    packets.extend(enc.encode(None))
    video_unit = [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in packets]

    audio_unit: list[bytes] = []
    if audio_rate:
        aenc = av.CodecContext.create("aac", "w")
        aenc.sample_rate, aenc.layout, aenc.format = audio_rate, "mono", "fltp"
        aenc.time_base = Fraction(1, audio_rate)
        t = np.arange(8 * audio_rate) / audio_rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for i in range(0, tone.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(tone[:, i : i + 1024]), format="fltp", layout="mono"
            )
            chunk.sample_rate, chunk.pts = audio_rate, i
            audio_unit.extend(bytes(p) for p in aenc.encode(chunk))
        audio_unit.extend(bytes(p) for p in aenc.encode(None))

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = tb
        if enc.extradata:
            stream.codec_context.extradata = enc.extradata
        a_stream = None
        if audio_unit:
            a_stream = container.add_stream("aac", rate=audio_rate, layout="mono")
            a_stream.time_base = Fraction(1, audio_rate)
            if aenc.extradata:
                a_stream.codec_context.extradata = aenc.extradata
        n_audio = int(seconds * audio_rate / 1024) if audio_unit else 0
        audio_next = 0
        for second in range(seconds):
            for data, pts, dts, key in video_unit:
                packet = av.Packet(data)
                packet.pts, packet.dts = pts + second * fps, dts + second * fps
                packet.time_base, packet.stream, packet.is_keyframe = tb, stream, key
                container.mux(packet)
            # interleave: audio up to the end of this second
            until = min(n_audio, int((second + 1) * (audio_rate or 0) / 1024))
            while audio_next < until:
                packet = av.Packet(audio_unit[audio_next % len(audio_unit)])
                packet.pts = packet.dts = audio_next * 1024
                packet.time_base, packet.stream = Fraction(1, audio_rate), a_stream
                container.mux(packet)
                audio_next += 1
    return path


def write_audio_only(path: str | Path, audio: AudioSpec | None = None, duration: float = 1.0):
    """An audio-only file (e.g. ``.m4a`` with AAC, ``.wav`` with pcm_s16le): no video stream."""
    path = Path(path)
    audio = audio or AudioSpec()
    with av.open(str(path), "w") as container:
        stream = _add_audio_stream(container, audio)
        _encode_audio(container, stream, audio, duration)
    return path


def write_text_file(path: str | Path) -> Path:
    """A plain text file (under any name, e.g. ``notes.txt`` or ``fake.mp4``)."""
    path = Path(path)
    path.write_text("this is not a video\n" * 40, encoding="utf-8")
    return path


def write_empty_file(path: str | Path) -> Path:
    """A 0-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_truncated(src: str | Path, dst: str | Path, fraction: float = 0.5) -> Path:
    """Copy only the first `fraction` of `src`'s bytes to `dst` (a cut-off download).
    With a default mp4 (index at the end) the result cannot be opened at all; with
    ``faststart=True`` it opens but decoding fails where the data stops."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: max(1, int(len(data) * fraction))])
    return dst


def write_undecodable_video(path: str | Path, num_frames: int = 10, size=(64, 48)) -> Path:
    """A Matroska file with an H.264 video stream whose packets hold only zero bytes: the
    container opens and has a video stream, but not a single frame decodes. Use ``.mkv``."""
    path = Path(path)
    width, height = size
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        packets = []
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(make_frame(i, width, height), format="rgb24")
            frame.pts = i
            packets.extend(stream.encode(frame))
        packets.extend(stream.encode(None))
        for src in packets:
            blank = av.Packet(bytes(src.size))
            blank.pts, blank.dts, blank.time_base = src.pts, src.dts, src.time_base
            blank.stream = stream
            container.mux(blank)
    return path


__all__ = [
    "INDEX_BITS",
    "MAX_INDEX",
    "AudioSpec",
    "audio_signal",
    "colour_blocks",
    "frame_index",
    "make_frame",
    "square_position",
    "write_audio_only",
    "write_empty_file",
    "write_long_video",
    "write_text_file",
    "write_truncated",
    "write_undecodable_video",
    "write_video",
]
