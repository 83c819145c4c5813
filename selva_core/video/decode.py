"""Decode a video once into the two frame streams SelVA / MMAudio consume (plus, optionally, audio).

- sync stream: 25 fps, 224x224. SelVA family: bicubic (antialiased) squash to 224x224, no crop.
  MMAudio family: short side to 224 (bicubic, antialiased), then center-crop 224x224.
- CLIP stream: 8 fps, 384x384 bicubic (antialiased) squash, both families.

Frames come back as uint8 (T, 3, H, W); normalise later (possibly on the device) with
`normalize_sync_frames` / `normalize_clip_frames`. The resize is applied to the uint8 RGB frame
exactly as the official `torchvision.transforms.v2` pipeline does, so uint8 + normalise here is
bit-identical to the official float output.

Frame picking follows the official reader (selva/data/av_utils.py `read_frames`): frames are taken
in presentation order, frames before `start` are skipped, frames after `start + max_duration` end
the read, and output slot k of a stream receives the first decoded frame whose timestamp is at or
after the slot's target time. With ``frame_rule="official"`` (default) the target times are built
the way the official code builds them, by adding the float 1/fps repeatedly and comparing against
PyAV's float ``frame.time``; rounding then drifts the targets a hair past k/fps, so e.g. a 25 fps
source gives slot k the source frame k+1 for most k (slot 6 already: 0.24000000000000002 > 0.24),
and an exactly 8.0 s 25 fps file (last frame at 7.96 s) yields 199 sync slots, hence duration
7.96 s. ``frame_rule="exact"`` compares exact rationals (slot k gets the first frame with
pts * time_base >= start + k/fps). With a `start` offset, targets begin at `start` (the official
reader is only ever called with start 0; its targets always begin at 0).

Duration: as in the official ``load_video``, the duration shrinks to what the two streams
cover: d = min(max_duration, n_clip/8, n_sync/25), keeping int(8 d) CLIP and int(25 d) sync
frames. A result shorter than one sync window (16 frames = 0.64 s) is padded by repeating the
last frame, to 16 sync frames, int(8 * 0.64) = 5 CLIP frames and duration 0.64.

Track duration (`DecodedClip.track_duration`): what a generated track for the clip lasts,
exactly the clip's duration as the container reports it, min(max_duration as asked, video
end - start), where the video's end is the video stream's duration in the container header
(last frame's pts plus its duration; the container's duration when the stream has none, else
a scan of the packets: `VideoReader.video_duration`). It differs from `duration` (what the
frames cover under the official rule, which usually ends one source frame early, and never
under 0.64 s): a 0.2 s clip has duration 0.64 but a 0.2 s track, a 1.52 s 25 fps file 1.48
but 1.52. The pipeline samples at the track duration (one sync window at least, frames
repeated at the end) and trims the waveform to round(track_duration * rate) samples.

Only the requested window is decoded (seek to `start`, stop once both streams are full), one
frame at a time into preallocated uint8 outputs, so memory does not grow with the file's length,
and only by about one full-resolution frame plus decoder buffers with its resolution.
`VideoReader` keeps one file open and reads window after window (long videos; see
`selva_core.long`); `decode_clip` is one `VideoReader.read`.

Display rotation: phones store portrait video as landscape frames plus a display matrix (side
data) saying how to turn them. Each frame is turned upright by the matrix's angle (snapped to
90, 180 or 270 degrees) before the resize, so both streams see the picture as a player shows
it; `DecodedClip.rotation` records the turn applied (FFmpeg's sign: degrees counterclockwise,
-90 for a typical portrait phone video). Only the angle is read (PyAV's `frame.rotation`): a
mirror in the matrix, which phones do not write, is not applied. With
``DecodeConfig(ignore_rotation=True)`` the coded frames are used as stored, as the official
reader does (it never looks at the display matrix).

Bad input raises a `selva_core.video.errors.VideoError` subclass naming the file. Damage is
detected where FFmpeg reports it: an mp4/mov cut short (corrupt packet) or undecodable data;
a Matroska/WebM file cut between packets carries no such sign and decodes as a shorter video.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import torch
from av.video.reformatter import VideoReformatter

from selva_core.video.audio_track import (
    AudioTrack,
    decode_audio_window,
    select_audio_stream,
    window_seeks,
)
from selva_core.video.errors import (
    CorruptVideoError,
    EmptyVideoError,
    NotAVideoError,
    NoVideoStreamError,
    StartPastEndError,
    UnsupportedResolutionError,
    VideoError,
    VideoNotFoundError,
)

Family = Literal["selva", "mmaudio"]
FrameRule = Literal["official", "exact"]

SYNC_MEAN = (0.5, 0.5, 0.5)
SYNC_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Seconds before the header's end from which `VideoReader.video_duration` scans the packets.
END_SCAN = 2.0
# FFmpeg opens text files (by extension) as "video" rendered from ANSI art: not a video for us.
_TEXT_FORMATS = {"tty"}
_TEXT_CODECS = {"ansi", "bintext", "xbin", "idf"}
# (offset, bytes) signatures of common containers: an unreadable file starting with one of these
# is reported as corrupt/truncated rather than "not a video".
_CONTAINER_MAGIC = (
    (4, b"ftyp"),
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI / WAV
    (0, b"FLV"),
    (0, b"OggS"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x30\x26\xb2\x75"),  # ASF / WMV
)


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding options; the defaults are the official SelVA settings."""

    family: Family = "selva"
    frame_rule: FrameRule = "official"
    sync_fps: float = 25.0
    clip_fps: float = 8.0
    sync_size: int = 224
    clip_size: int = 384
    min_sync_frames: int = 16  # one Synchformer window; shorter results are padded
    max_side: int = 8192  # larger width or height -> UnsupportedResolutionError
    threads: int = 0  # decoder threads; 0 lets FFmpeg choose (thread_type AUTO)
    # False: damaged/cut-off video data raises CorruptVideoError. True: keep the frames decoded
    # before the damage (the official reader, with threaded decoding, silently does this).
    allow_corrupt: bool = False
    # False: CLIP slots are counted (they bound the duration, as officially) but not resized or
    # stored; `clip_frames` comes back empty. SelVA never looks at them.
    keep_clip_frames: bool = True
    # False: turn frames upright by their display matrix (phone videos). True: use the coded
    # frames as stored, like the official reader.
    ignore_rotation: bool = False

    def __post_init__(self) -> None:
        if self.family not in ("selva", "mmaudio"):
            raise ValueError(f"family must be 'selva' or 'mmaudio', got {self.family!r}")
        if self.frame_rule not in ("official", "exact"):
            raise ValueError(f"frame_rule must be 'official' or 'exact', got {self.frame_rule!r}")


@dataclass
class DecodedClip:
    """Frames (uint8, un-normalised) and metadata for one clip."""

    path: str
    sync_frames: torch.Tensor  # (Ts, 3, 224, 224) uint8, Ts = int(25 * duration)
    clip_frames: torch.Tensor  # (Tc, 3, 384, 384) uint8, Tc = int(8 * duration)
    duration: float  # what the frames cover (official rule; >= 0.64 s, padded)
    content_duration: float  # duration covered by real frames (< duration only if padded)
    start: float
    padded: bool  # frames were repeated to reach one sync window (0.64 s)
    has_audio: bool  # the file has an audio stream
    audio: torch.Tensor | None  # (N,) float32 mono at audio_rate; None unless requested+present
    audio_rate: int | None
    audio_valid_samples: int | None  # leading audio samples backed by the track (rest: zeros)
    source_fps: float  # the stream's guessed frame rate
    source_width: int
    source_height: int
    source_duration: float | None  # from container metadata, if known
    source_codec: str
    rotation: int  # degrees counterclockwise the frames were turned (0, 90, 180, -90)
    source_rotation: int  # what the file's display matrix asks for (even if ignored)
    sync_times: tuple[float, ...]  # source timestamp (s) of the frame in each sync slot
    clip_times: tuple[float, ...]
    family: Family
    frame_rule: FrameRule
    mask_digest: str | None = None  # set by `selva_core.video.mask.apply_mask`
    # the clip's exact duration (container's video end - start, capped at the asked length):
    # the length of its track and of the sequence the model samples (see the module doc)
    track_duration: float | None = None

    @property
    def num_sync_frames(self) -> int:
        return int(self.sync_frames.shape[0])

    @property
    def num_clip_frames(self) -> int:
        return int(self.clip_frames.shape[0])


# --------------------------------------------------------------------------------------------
# normalisation (works on any device, on (..., 3, H, W) uint8)
# --------------------------------------------------------------------------------------------


def _tv_functional():
    """torchvision's v2 functional ops, imported where frames are resized or normalised: the
    import costs about a second of CPU (it pulls in torch._dynamo), which every Ray worker that
    imports this module but never touches a frame (writers, generators from features, DeSync
    on stored tracks) would otherwise pay."""
    from torchvision.transforms.v2 import functional

    return functional


def _normalize(frames: torch.Tensor, mean, std, dtype: torch.dtype) -> torch.Tensor:
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {frames.dtype}")
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected (..., 3, H, W) frames, got shape {tuple(frames.shape)}")
    # same ops as the official v2.ToDtype(float32, scale=True) + v2.Normalize, in float32
    TF = _tv_functional()
    x = TF.to_dtype(frames, torch.float32, scale=True)
    x = TF.normalize(x, mean=list(mean), std=list(std))
    return x if dtype == torch.float32 else x.to(dtype)


def normalize_sync_frames(frames: torch.Tensor, dtype: torch.dtype = torch.float32):
    """uint8 sync frames -> [-1, 1] (x/255 - 0.5) / 0.5, computed in float32."""
    return _normalize(frames, SYNC_MEAN, SYNC_STD, dtype)


def normalize_clip_frames(frames: torch.Tensor, dtype: torch.dtype = torch.float32):
    """uint8 CLIP frames -> (x/255 - open_clip mean) / open_clip std, computed in float32."""
    return _normalize(frames, CLIP_MEAN, CLIP_STD, dtype)


# --------------------------------------------------------------------------------------------
# opening and validation
# --------------------------------------------------------------------------------------------


def _looks_like_container(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    return any(head[off : off + len(sig)] == sig for off, sig in _CONTAINER_MAGIC)


def open_media(path: str | os.PathLike[str]) -> av.container.InputContainer:
    """Open a media file for reading, mapping every failure to a typed `VideoError`."""
    spath = os.fspath(path)
    p = Path(spath)
    if not p.exists():
        raise VideoNotFoundError(spath, "file does not exist")
    if p.is_dir():
        raise NotAVideoError(spath, "is a directory, not a file")
    if p.stat().st_size == 0:
        raise EmptyVideoError(spath, "file is empty (0 bytes)")
    try:
        container = av.open(spath, mode="r", metadata_errors="ignore")
    except FileNotFoundError as exc:
        raise VideoNotFoundError(spath, "file does not exist") from exc
    except PermissionError as exc:
        raise VideoError(spath, f"cannot read file: {exc}") from exc
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        if _looks_like_container(spath):
            raise CorruptVideoError(
                spath, f"truncated or corrupt media container, FFmpeg cannot open it ({exc})"
            ) from exc
        raise NotAVideoError(spath, f"not a media file FFmpeg can open ({exc})") from exc
    fmt = container.format.name if container.format else ""
    codecs = {s.codec_context.name for s in container.streams if s.codec_context is not None}
    if fmt in _TEXT_FORMATS or codecs & _TEXT_CODECS:
        container.close()
        raise NotAVideoError(spath, f"text file, not a video (FFmpeg format {fmt!r})")
    return container


def _select_video_stream(container, path: str):
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    kinds = sorted({s.type for s in container.streams})
    what = "only cover art" if container.streams.video else f"streams: {kinds or 'none'}"
    raise NoVideoStreamError(path, f"no video stream ({what})")


def _check_size(path: str, width: int, height: int, max_side: int) -> None:
    if width <= 0 or height <= 0 or width > max_side or height > max_side:
        raise UnsupportedResolutionError(
            path, f"unsupported resolution {width}x{height} (each side must be 1..{max_side} px)"
        )


def _source_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


# --------------------------------------------------------------------------------------------
# frame picking
# --------------------------------------------------------------------------------------------


class _Slots:
    """Output slots of one stream at `fps` from `start`: slot k takes the first frame at or after
    its target time. "official": float targets accumulated like the official reader;
    "exact": rational targets start + k/fps. Frames go straight into a preallocated buffer."""

    def __init__(
        self, fps: float, start, end, exact: bool, transform, size: int, store: bool = True
    ) -> None:
        self.step = 1 / Fraction(fps) if exact else 1 / fps
        self.next = start
        self.end = end
        self.transform = transform
        self.size = size
        # targets <= end: at most floor((end - start) * fps) + 1 slots; +1 for float drift
        self.capacity = int((end - start) * fps) + 2
        rows = self.capacity if store else 0  # count-only slots keep no pixels
        self.buffer = torch.empty((rows, 3, size, size), dtype=torch.uint8)
        self.count = 0
        self.times: list[float] = []

    @property
    def open(self) -> bool:
        return self.next <= self.end and self.count < self.capacity

    def due(self, t) -> int:
        n, nxt = 0, self.next
        while t >= nxt and self.count + n < self.capacity:
            n += 1
            nxt += self.step
        return n

    def fill(self, rgb: torch.Tensor, t_float: float, n: int) -> None:
        first = self.count
        if self.buffer.shape[0]:
            self.buffer[first].copy_(self.transform(rgb))
            for k in range(first + 1, first + n):
                self.buffer[k].copy_(self.buffer[first])
        self.count += n
        self.times.extend([t_float] * n)
        for _ in range(n):
            self.next += self.step

    def take(self, n: int, pad_to: int) -> tuple[torch.Tensor, tuple[float, ...]]:
        """The first `n` frames (at least 1), repeated at the end up to `pad_to` frames."""
        n = max(1, min(n, self.count))
        total = max(n, pad_to)
        times = tuple(self.times[:n]) + (self.times[n - 1],) * (total - n)
        if not self.buffer.shape[0]:  # count-only
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8), times
        if total <= self.buffer.shape[0]:
            out = self.buffer[:total]
            if total < self.buffer.shape[0] // 2:
                out = out.clone()  # do not pin a mostly unused buffer
        else:
            out = torch.empty((total, *self.buffer.shape[1:]), dtype=torch.uint8)
            out[:n] = self.buffer[:n]
        out[n:] = out[n - 1]
        self.buffer = None  # type: ignore[assignment]
        return out, times


def frame_transforms(cfg: DecodeConfig):
    """(sync, clip) resize functions on (C, H, W) uint8 tensors, as applied to every frame."""
    TF = _tv_functional()
    bicubic = TF.InterpolationMode.BICUBIC
    s, c = cfg.sync_size, cfg.clip_size
    if cfg.family == "selva":

        def sync_tf(x):
            return TF.resize(x, [s, s], interpolation=bicubic, antialias=True)
    else:

        def sync_tf(x):
            x = TF.resize(x, [s], interpolation=bicubic, antialias=True)
            return TF.center_crop(x, [s, s])

    def clip_tf(x):
        return TF.resize(x, [c, c], interpolation=bicubic, antialias=True)

    return sync_tf, clip_tf


def _frame_times(frame, prev_exact, step_exact):
    """(exact Fraction, PyAV float) presentation time of a decoded frame."""
    if frame.pts is None:  # no timestamp: continue from the previous frame
        exact = Fraction(0) if prev_exact is None else prev_exact + step_exact
        return exact, float(exact)
    return Fraction(frame.pts) * frame.time_base, frame.time


class _DamagedPacket(Exception):
    """The demuxer flagged a packet as corrupt (e.g. cut short by a truncated file)."""


def _iter_frames(container, stream, start: float):
    """Yield decoded frames in presentation order from (about) `start`, seeking first; falls back
    to decoding from the beginning if the seek lands after `start`. Raises `_DamagedPacket` on a
    packet the demuxer marks corrupt."""
    seek_points = [start, 0.0] if start > 0 else [0.0]
    for attempt, point in enumerate(seek_points):
        if point > 0:
            try:
                container.seek(int(Fraction(point) / stream.time_base), stream=stream)
            except av.error.FFmpegError:
                continue  # unseekable: decode from the beginning instead
        elif attempt > 0:
            container.seek(0)
        first = True
        for packet in container.demux(stream):
            if packet.is_corrupt:
                when = float(packet.pts * packet.time_base) if packet.pts is not None else None
                raise _DamagedPacket(f"corrupt or cut-off packet (pts {when} s)")
            for frame in packet.decode():
                if first and point > 0 and frame.pts is not None and frame.time > start:
                    break  # overshot the start: retry from the beginning
                first = False
                yield frame
            else:
                continue
            break
        else:
            return


def _turn_upright(rgb: torch.Tensor, rotation: int) -> torch.Tensor:
    """(3, H, W) as stored -> as shown, for a display matrix rotating `rotation` degrees
    counterclockwise (a right angle, see `_right_angle`)."""
    quarter = round(rotation / 90) % 4
    return torch.rot90(rgb, quarter, dims=(1, 2)) if quarter else rgb


def _right_angle(rotation: float) -> int:
    """FFmpeg's display-matrix angle (`av_display_rotation_get`, as PyAV's `frame.rotation`
    reports it, in [-180, 180]) snapped to 0, 90, 180 or -90."""
    return (0, 90, 180, -90)[round(rotation / 90) % 4]


def _read_window(container, stream, path: str, start: float, max_duration: float, cfg):
    exact = cfg.frame_rule == "exact"
    start_x = Fraction(start) if exact else float(start)
    end_x = Fraction(start) + Fraction(max_duration) if exact else start + max_duration
    sync_tf, clip_tf = frame_transforms(cfg)
    sync = _Slots(cfg.sync_fps, start_x, end_x, exact, sync_tf, cfg.sync_size)
    clip = _Slots(
        cfg.clip_fps, start_x, end_x, exact, clip_tf, cfg.clip_size, store=cfg.keep_clip_frames
    )
    # one reformatter for all frames (same conversion as frame.to_ndarray(format="rgb24"),
    # which would build a new swscale context per frame)
    to_rgb = VideoReformatter()
    rate = stream.guessed_rate or stream.average_rate or 25
    step = 1 / Fraction(rate)
    prev = None
    decoded = 0
    last_time = None
    shown = {"rotation": None, "source_rotation": None}  # of the first frame used
    try:
        for frame in _iter_frames(container, stream, start):
            prev, t_float = _frame_times(frame, prev, step)
            decoded += 1
            last_time = t_float
            t = prev if exact else t_float
            if t < start_x:
                continue
            if t > end_x:
                break
            n_sync, n_clip = sync.due(t), clip.due(t)
            if n_sync or n_clip:
                _check_size(path, frame.width, frame.height, cfg.max_side)
                rgb_frame = to_rgb.reformat(frame, format="rgb24")
                rgb = torch.from_numpy(rgb_frame.to_ndarray()).permute(2, 0, 1)
                # frame.rotation reads the display matrix in C; frame.side_data would leak
                # the frame in PyAV 18.1 (a reference cycle through its side-data wrapper)
                rotation = _right_angle(frame.rotation or 0)
                if shown["source_rotation"] is None:
                    shown["source_rotation"] = rotation
                    shown["rotation"] = 0 if cfg.ignore_rotation else rotation
                if rotation and not cfg.ignore_rotation:
                    rgb = _turn_upright(rgb, rotation)
                if n_sync:
                    sync.fill(rgb, t_float, n_sync)
                if n_clip:
                    clip.fill(rgb, t_float, n_clip)
                del rgb, rgb_frame
            if not (sync.open or clip.open):
                break
    except (av.error.FFmpegError, _DamagedPacket) as exc:
        if not (cfg.allow_corrupt and sync.count):
            where = f"after {decoded} frames (last at {last_time:.3f} s)" if decoded else "at once"
            raise CorruptVideoError(
                path, f"truncated or damaged video data, decoding failed {where}: {exc}"
            ) from exc
    return sync, clip, decoded, last_time, shown


def _explain_no_frames(container, stream, path, start, max_duration, decoded, last_time):
    if decoded and last_time is not None and last_time < start:
        raise StartPastEndError(
            path, f"start {start:.3f} s is past the last video frame (at {last_time:.3f} s)"
        )
    if decoded:
        raise EmptyVideoError(
            path,
            f"no video frame within [{start:.3f}, {start + max_duration:.3f}] s "
            f"(first decoded frame at {last_time:.3f} s)",
        )
    if start > 0:  # nothing after the seek point: does the stream have frames at all?
        container.seek(0)
        for frame in container.decode(stream):
            raise StartPastEndError(
                path,
                f"start {start:.3f} s is past the end of the video "
                f"(first frame at {frame.time or 0.0:.3f} s, "
                f"metadata duration {_source_duration(container, stream)} s)",
            )
    raise EmptyVideoError(path, "the video stream has no decodable frame")


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def decode_clip(
    path: str | os.PathLike[str],
    *,
    start: float = 0.0,
    max_duration: float = 8.0,
    family: Family | None = None,
    audio_rate: int | None = None,
    audio_samples: int | None = None,
    config: DecodeConfig | None = None,
) -> DecodedClip:
    """Decode `max_duration` seconds of `path` from `start` into sync + CLIP frames.

    A `max_duration` under one sync window (0.64 s) is raised to 0.64 s; a video shorter than
    that is padded (see module doc). `family` overrides `config.family`. If `audio_rate` is
    given and the file has an audio track, also returns that window of audio as mono float32 at
    `audio_rate`, exactly `audio_samples` long (default int(audio_rate * duration)), zero-padded
    past the track's end. A file without audio gives ``has_audio=False, audio=None``. Bad input
    raises a `VideoError` subclass naming the file.

    For many windows of one file, open a `VideoReader` once and call its `read` per window.
    """
    with VideoReader(path, config=config, family=family) as reader:
        return reader.read(
            start=start,
            max_duration=max_duration,
            audio_rate=audio_rate,
            audio_samples=audio_samples,
        )


class VideoReader:
    """One open video file, read window by window (`read`), e.g. a long video cut into windows.

    The container stays open between reads: each `read` seeks to its window and decodes only
    that window into fresh, window-sized buffers, so memory is bounded by one window whatever
    the file's length, and a window decoded here is identical to `decode_clip` on that window.
    Audio windows come from a second container on the same file (kept open too), so video and
    audio demuxing never disturb each other's position. Use as a context manager or `close()`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config: DecodeConfig | None = None,
        family: Family | None = None,
    ) -> None:
        cfg = config or DecodeConfig()
        if family is not None and family != cfg.family:
            cfg = replace(cfg, family=family)
        self.config = cfg
        self.path = os.fspath(path)
        self._audio_container = None
        self._audio_used = False
        self._used = False
        self._end: float | None = None  # video_duration(), once asked
        self._container = open_media(self.path)
        try:
            stream = _select_video_stream(self._container, self.path)
            ctx = stream.codec_context
            _check_size(self.path, ctx.width, ctx.height, cfg.max_side)
            self.has_audio = select_audio_stream(self._container) is not None
            stream.thread_type = "AUTO"
            if cfg.threads > 0:
                ctx.thread_count = cfg.threads
            self._stream = stream
            self.meta = {
                "source_fps": float(stream.guessed_rate or stream.average_rate or 0.0),
                "source_width": int(ctx.width),
                "source_height": int(ctx.height),
                "source_duration": _source_duration(self._container, stream),
                "source_codec": ctx.name,
            }
        except BaseException:
            self._container.close()
            raise

    # ---- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        for c in (self._container, self._audio_container):
            if c is not None:
                c.close()
        self._audio_container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- metadata ---------------------------------------------------------------------------

    def video_duration(self) -> float:
        """Where the video ends, in seconds: the last frame's timestamp plus its duration (the
        frame period when the container gives none), from the packets' timestamps, no
        decoding. The header's duration only says where to look: the packets from the
        keyframe before its last `END_SCAN` seconds are scanned (the whole stream when the
        header has no duration or nothing is found there), so a header that ends early (an
        mp4 with B-frames and a variable frame rate counts from the first decode time) or
        late does not count. This is the length a joined track must have, and where a
        clip's track ends (`DecodedClip.track_duration`)."""
        if self._end is None:
            header = self.meta["source_duration"]
            end = None
            if header is not None and header > END_SCAN:
                end = self._scan_end(header - END_SCAN)
            if end is None:
                end = self._scan_end(0.0)
            if end is None:
                raise EmptyVideoError(self.path, "the video stream has no timestamped packet")
            self._end = end
        return self._end

    def _scan_end(self, since: float) -> float | None:
        """Latest pts + duration of the video packets from the keyframe at or before `since`."""
        stream, end = self._stream, None
        rate = stream.guessed_rate or stream.average_rate
        self._used = True  # a later read seeks back
        try:
            if since > 0:
                self._container.seek(int(Fraction(since) / stream.time_base), stream=stream)
            else:
                self._container.seek(0)
            for packet in self._container.demux(stream):
                if packet.pts is None:
                    continue
                t = Fraction(packet.pts) * packet.time_base
                if packet.duration:
                    t += Fraction(packet.duration) * packet.time_base
                elif rate:
                    t += 1 / Fraction(rate)
                end = t if end is None or t > end else end
        except av.error.FFmpegError as exc:
            raise CorruptVideoError(self.path, f"cannot scan the video packets: {exc}") from exc
        return None if end is None else float(end)

    def _rewind(self) -> None:
        """Back to the file's start if an earlier read moved the demuxer."""
        if self._used:
            self._container.seek(0)
        self._used = True

    # ---- reading ----------------------------------------------------------------------------

    def read(
        self,
        start: float = 0.0,
        max_duration: float = 8.0,
        *,
        audio_rate: int | None = None,
        audio_samples: int | None = None,
        pad_to: float | None = None,
    ) -> DecodedClip:
        """One window: as `decode_clip` with the same arguments. `pad_to` (seconds): a window
        whose frames end earlier (the last window of a file) is padded by repeating its last
        frame to that duration, so every window of a long video has the same sequence lengths;
        `content_duration` keeps what the frames cover."""
        cfg, spath = self.config, self.path
        if not start >= 0:
            raise ValueError(f"start must be >= 0 seconds, got {start}")
        if not max_duration > 0:
            raise ValueError(f"max_duration must be > 0 seconds, got {max_duration}")
        # never ask for less than one sync window: the model cannot use less
        window = max(float(max_duration), cfg.min_sync_frames / cfg.sync_fps)
        container, stream = self._container, self._stream
        if start <= 0:
            self._rewind()  # a start > 0 seeks anyway
        self._used = True
        sync, clip, decoded, last_time, shown = _read_window(
            container, stream, spath, start, window, cfg
        )
        if sync.count == 0:
            _explain_no_frames(container, stream, spath, start, window, decoded, last_time)

        # the official truncation to what both streams cover (same float arithmetic)
        content_duration = window
        if clip.count / cfg.clip_fps < content_duration:
            content_duration = clip.count / cfg.clip_fps
        if sync.count / cfg.sync_fps < content_duration:
            content_duration = sync.count / cfg.sync_fps
        n_clip, n_sync = int(cfg.clip_fps * content_duration), int(cfg.sync_fps * content_duration)
        # shorter than one sync window: repeat the last frame (padding happens inside take())
        padded = n_sync < cfg.min_sync_frames
        duration = cfg.min_sync_frames / cfg.sync_fps if padded else content_duration
        sync_pad = cfg.min_sync_frames if padded else 0
        if pad_to is not None and duration < pad_to:
            padded, duration = True, float(pad_to)
            sync_pad = int(cfg.sync_fps * duration)
        sync_frames, sync_times = sync.take(n_sync, sync_pad)
        clip_frames, clip_times = clip.take(n_clip, int(cfg.clip_fps * duration) if padded else 0)
        clip_seconds = self._track_duration(float(start), float(max_duration), content_duration)
        if pad_to is not None:
            clip_seconds = max(clip_seconds, float(pad_to))  # a window: its planned span

        audio = None
        audio_valid = None
        if audio_rate is not None and self.has_audio:
            # the audio under the sequence the model samples (see `track_duration`)
            covered = max(duration, clip_seconds)
            n_audio = audio_samples if audio_samples is not None else int(audio_rate * covered)
            track = self.read_audio(sample_rate=audio_rate, num_samples=n_audio, start=start)
            if track is not None:
                audio, audio_valid = track.samples, track.valid_samples

        return DecodedClip(
            path=spath,
            sync_frames=sync_frames,
            clip_frames=clip_frames,
            duration=duration,
            content_duration=content_duration,
            start=float(start),
            padded=padded,
            has_audio=self.has_audio,
            audio=audio,
            audio_rate=audio_rate if audio is not None else None,
            audio_valid_samples=audio_valid,
            sync_times=sync_times,
            clip_times=clip_times,
            family=cfg.family,
            frame_rule=cfg.frame_rule,
            rotation=shown["rotation"] or 0,
            source_rotation=shown["source_rotation"] or 0,
            track_duration=clip_seconds,
            **self.meta,
        )

    def _track_duration(self, start: float, asked: float, content: float) -> float:
        """The clip's exact duration: min(asked, video end - start); what the frames cover
        when the container's end lies at or before `start` (a header that lies)."""
        try:
            end = self.video_duration()
        except VideoError:
            end = None
        if end is None or not end - start > 0:
            return min(asked, content)
        return min(asked, end - start)

    def read_audio(self, *, sample_rate: int, num_samples: int, start: float = 0.0):
        """The audio track over a window (see `read_audio`); None without an audio track."""
        if not self.has_audio:
            return None
        if not start >= 0:
            raise ValueError(f"start must be >= 0 seconds, got {start}")
        if self._audio_container is None:
            self._audio_container = open_media(self.path)
            self._audio_used = False
        stream = select_audio_stream(self._audio_container)
        if self._audio_used and not window_seeks(stream, start, sample_rate):
            # a window at the file's start is read without seeking: begin on a fresh handle
            self._audio_container.close()
            self._audio_container = open_media(self.path)
            stream = select_audio_stream(self._audio_container)
        self._audio_used = True
        return decode_audio_window(
            self._audio_container,
            stream,
            path=self.path,
            start=float(start),
            sample_rate=int(sample_rate),
            num_samples=int(num_samples),
        )


def read_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate: int,
    num_samples: int | None = None,
    start: float = 0.0,
    duration: float | None = None,
) -> AudioTrack | None:
    """Mono float32 audio of `path` at `sample_rate` from `start`: exactly `num_samples` long
    (or int(sample_rate * duration)); None if the file has no audio track. Works on audio-only
    files too."""
    if num_samples is None:
        if duration is None:
            raise ValueError("give num_samples or duration")
        num_samples = int(sample_rate * duration)
    if not start >= 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}")
    spath = os.fspath(path)
    with open_media(spath) as container:
        stream = select_audio_stream(container)
        if stream is None:
            return None
        return decode_audio_window(
            container,
            stream,
            path=spath,
            start=float(start),
            sample_rate=int(sample_rate),
            num_samples=int(num_samples),
        )


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "SYNC_MEAN",
    "SYNC_STD",
    "AudioTrack",
    "DecodeConfig",
    "DecodedClip",
    "VideoReader",
    "decode_clip",
    "frame_transforms",
    "normalize_clip_frames",
    "normalize_sync_frames",
    "open_media",
    "read_audio",
]
