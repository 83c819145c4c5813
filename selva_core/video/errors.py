"""Typed errors for video / audio-track decoding.

Every error names the offending file (``.path``) and says why (``.reason``); ``str(err)`` is
``"<path>: <reason>"``. All are ``ValueError``s (bad input, not a bug), and they pickle by value,
so they survive being shipped between processes (e.g. Ray workers).
"""

from __future__ import annotations

import os


class VideoError(ValueError):
    """Base class: the input at ``path`` cannot be used as a video, because of ``reason``."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The file does not exist."""


class NotAVideoError(VideoError):
    """The file is not a media container FFmpeg recognises as video (e.g. a text file)."""


class CorruptVideoError(VideoError):
    """The file looks like a media container but cannot be read: truncated or damaged."""


class NoVideoStreamError(VideoError):
    """The container opened but holds no video stream (e.g. an audio-only file)."""


class EmptyVideoError(VideoError):
    """The file is empty, or its video stream yields no decodable frame."""


class UnsupportedResolutionError(VideoError):
    """The video's width or height is 0 or above the configured maximum."""


class StartPastEndError(VideoError):
    """The requested start offset lies at or after the last video frame."""


class AudioDecodeError(VideoError):
    """The file has an audio track, but it cannot be decoded."""


__all__ = [
    "AudioDecodeError",
    "CorruptVideoError",
    "EmptyVideoError",
    "NoVideoStreamError",
    "NotAVideoError",
    "StartPastEndError",
    "UnsupportedResolutionError",
    "VideoError",
    "VideoNotFoundError",
]
