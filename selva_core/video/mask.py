"""Object-mask focus (the ComfyUI-SelVA node's MASK input): grey out the background.

A mask is an image (one mask for every frame) or a video aligned with the clip (same size,
same timeline), read as luminance in [0, 1]: 1 keeps the pixel (the object), 0 is background.
Before encoding, each decoded frame is blended toward neutral grey where the mask is low:

    out = x * w + 128 * (1 - w),   w = 1 - mask_strength * (1 - mask)

so strength 0 or an all-ones mask leaves the frames bit-identical. The mask goes through the
same resize as the frames (family squash or crop; `frame_transforms`), so it stays aligned with
what the encoders see. `mask_paths` chooses the streams it applies to: "clip" (CLIP frames,
MMAudio family) and/or "sync" (Synchformer frames). Features made with a mask carry
`MaskSettings.digest()` (file content + settings), so they are never mixed up with unmasked
ones. A mask whose size differs from the video's, or a mask video that does not cover the
clip's time span, raises `MaskMismatchError` naming both files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
import torch

from selva_core.video.decode import (
    DecodeConfig,
    DecodedClip,
    _DamagedPacket,
    _iter_frames,
    _select_video_stream,
    frame_transforms,
    open_media,
)
from selva_core.video.errors import VideoError

MASK_PATHS = ("clip", "sync")
NEUTRAL_GREY = 128
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
_TIME_EPS = 1e-3  # seconds of slack when matching mask frames to video frames


class MaskError(VideoError):
    """The mask file cannot be used (missing, unreadable)."""


class MaskMismatchError(MaskError):
    """The mask does not fit the video: other size, or too short a mask video."""


@dataclass(frozen=True)
class MaskSettings:
    """Which mask, how strongly, and on which streams (see module doc)."""

    path: str
    strength: float = 1.0
    paths: tuple[str, ...] = MASK_PATHS

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"mask_strength must be in [0, 1], got {self.strength}")
        paths = tuple(self.paths)
        bad = [p for p in paths if p not in MASK_PATHS]
        if bad or not paths:
            raise ValueError(f"mask_paths must be a non-empty subset of {MASK_PATHS}, got {paths}")
        object.__setattr__(self, "path", os.fspath(self.path))
        object.__setattr__(self, "paths", tuple(p for p in MASK_PATHS if p in paths))

    def digest(self) -> str:
        """32 hex chars of SHA-256 over the mask file's bytes, strength and paths."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise MaskError(self.path, f"cannot read mask file: {exc}") from exc
        h = hashlib.sha256(_file_sha256(self.path, st.st_size, st.st_mtime_ns).encode())
        h.update(json.dumps([self.strength, list(self.paths)]).encode())
        return h.hexdigest()[:32]


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, cached per (path, size, mtime): the windows of a long video share
    one mask video, which is hashed once."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise MaskError(path, f"cannot read mask file: {exc}") from exc
    return h.hexdigest()


def is_image(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


class MaskSource:
    """An opened mask file, image or video; `for_clip` gives the masks of one decoded clip.

    A mask video stays open between calls (windows of a long video) and is decoded only over
    the clip's span, one mask frame at a time, so memory stays bounded too.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._container = None
        self._image: torch.Tensor | None = None
        if not Path(self.path).is_file():
            raise MaskError(self.path, "mask file does not exist")
        if is_image(self.path):
            from PIL import Image

            try:
                with Image.open(self.path) as img:
                    gray = np.asarray(img.convert("L"), dtype=np.uint8)
            except OSError as exc:
                raise MaskError(self.path, f"cannot read mask image: {exc}") from exc
            self._image = torch.from_numpy(gray.copy())[None]  # (1, H, W) uint8
            self.width, self.height = int(gray.shape[1]), int(gray.shape[0])
        else:
            try:
                self._container = open_media(self.path)
                self._stream = _select_video_stream(self._container, self.path)
            except VideoError as exc:
                if self._container is not None:
                    self._container.close()
                raise MaskError(
                    self.path, f"not a usable mask image or video: {exc.reason}"
                ) from exc
            ctx = self._stream.codec_context
            self.width, self.height = int(ctx.width), int(ctx.height)

    @property
    def is_video(self) -> bool:
        return self._image is None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> MaskSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_size(self, clip: DecodedClip) -> None:
        if (self.width, self.height) != (clip.source_width, clip.source_height):
            raise MaskMismatchError(
                self.path,
                f"mask is {self.width}x{self.height} but video {clip.path} is "
                f"{clip.source_width}x{clip.source_height}",
            )

    def for_clip(
        self, clip: DecodedClip, config: DecodeConfig | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sync, clip) masks, uint8 (T, 1, S, S) aligned with the clip's frames (0 = background,
        255 = keep); a clip without CLIP frames gets an empty CLIP mask."""
        config = config or DecodeConfig(family=clip.family)
        self.check_size(clip)
        sync_tf, clip_tf = frame_transforms(config)
        want_clip = clip.num_clip_frames > 0
        if self._image is not None:
            s = sync_tf(self._image)
            sync_m = s.expand(clip.num_sync_frames, -1, -1, -1)
            clip_m = None
            if want_clip:
                clip_m = clip_tf(self._image).expand(clip.num_clip_frames, -1, -1, -1)
        else:
            need = set(clip.sync_times) | (set(clip.clip_times) if want_clip else set())

            def resize(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
                return sync_tf(gray), clip_tf(gray) if want_clip else None

            masks = self._video_masks(sorted(need), clip, resize)
            sync_m = torch.stack([masks[t][0] for t in clip.sync_times])
            clip_m = torch.stack([masks[t][1] for t in clip.clip_times]) if want_clip else None
        if clip_m is None:
            clip_m = torch.empty((0, 1, config.clip_size, config.clip_size), dtype=torch.uint8)
        return sync_m, clip_m

    def _video_masks(self, times: Sequence[float], clip: DecodedClip, resize) -> dict:
        """`resize(mask frame)` for the mask frame shown at each of `times` (sorted, seconds):
        the last one starting at or before it (sample and hold). Each mask frame is resized
        once, when first needed, and no full-size frame is kept."""
        stream = self._stream
        rate = float(stream.guessed_rate or stream.average_rate or 25)
        period = 1.0 / rate
        out: dict[float, tuple] = {}
        pending = list(times)
        prev_t, prev_gray, prev_resized = None, None, None

        def assign(t: float) -> None:
            nonlocal prev_resized
            if prev_resized is None:
                prev_resized = resize(prev_gray)
            out[t] = prev_resized

        try:
            for frame in _iter_frames(self._container, stream, max(times[0] - period, 0.0)):
                t = frame.time if frame.time is not None else 0.0
                if prev_t is None and pending[0] < t - _TIME_EPS:
                    self._too_short(clip, pending[0], first=t)
                while pending and prev_t is not None and pending[0] < t - _TIME_EPS:
                    assign(pending.pop(0))
                if not pending:
                    break
                gray = torch.from_numpy(frame.to_ndarray(format="gray").copy())[None]
                prev_t, prev_gray, prev_resized = t, gray, None
        except (av.error.FFmpegError, _DamagedPacket) as exc:
            raise MaskError(self.path, f"cannot decode the mask video: {exc}") from exc
        while pending and prev_t is not None and pending[0] <= prev_t + period + _TIME_EPS:
            assign(pending.pop(0))
        if pending:
            last = None if prev_t is None else prev_t + period
            self._too_short(clip, pending[-1], last=last)
        return out

    def _too_short(self, clip, needed, first=None, last=None):
        if first is not None:
            what = f"mask video starts at {first:.3f} s"
        elif last is None:
            what = "mask video has no frame there"
        else:
            what = f"mask video ends at {last:.3f} s"
        raise MaskMismatchError(
            self.path, f"{what} but video {clip.path} needs a mask at {needed:.3f} s"
        )


def blend_to_grey(frames: torch.Tensor, mask: torch.Tensor, strength: float) -> torch.Tensor:
    """uint8 frames (T, 3, H, W) blended toward grey by uint8 masks (T or 1, 1, H, W)."""
    if frames.shape[0] == 0 or strength == 0 or bool((mask == 255).all()):
        return frames
    w = 1.0 - strength * (1.0 - mask.float() / 255.0)
    out = frames.float() * w + NEUTRAL_GREY * (1.0 - w)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def apply_mask(
    clip: DecodedClip,
    mask: MaskSettings,
    source: MaskSource | None = None,
    config: DecodeConfig | None = None,
) -> DecodedClip:
    """The clip with its background greyed on the streams in `mask.paths`, and the mask's
    digest recorded (`DecodedClip.mask_digest`). Pass an open `source` to reuse it (windows of
    a long video); otherwise the mask file is opened and closed here."""
    own = source is None
    src = source or MaskSource(mask.path)
    try:
        sync_m, clip_m = src.for_clip(clip, config)
    finally:
        if own:
            src.close()
    sync_frames, clip_frames = clip.sync_frames, clip.clip_frames
    if "sync" in mask.paths:
        sync_frames = blend_to_grey(sync_frames, sync_m, mask.strength)
    if "clip" in mask.paths:
        clip_frames = blend_to_grey(clip_frames, clip_m, mask.strength)
    return replace(
        clip, sync_frames=sync_frames, clip_frames=clip_frames, mask_digest=mask.digest()
    )


__all__ = [
    "MASK_PATHS",
    "NEUTRAL_GREY",
    "MaskError",
    "MaskMismatchError",
    "MaskSettings",
    "MaskSource",
    "apply_mask",
    "blend_to_grey",
]
