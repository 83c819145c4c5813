"""Sequence lengths as a function of clip duration and audio mode.

The expressions keep the official evaluation order (float arithmetic, then truncation) so that
odd durations such as 12.7 s give exactly the official lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# Seconds of video one sync window needs (16 frames at 25 fps); shorter clips are padded to it.
MIN_SYNC_DURATION = 16 / 25


@dataclass(frozen=True)
class SequenceConfig:
    duration: float = 8.0
    sampling_rate: int = 16000
    spectrogram_frame_rate: int = 256
    latent_downsample_rate: int = 2
    clip_frame_rate: int = 8
    sync_frame_rate: int = 25
    sync_num_frames_per_segment: int = 16
    sync_step_size: int = 8
    sync_downsample_rate: int = 2

    @property
    def latent_seq_len(self) -> int:
        return int(
            math.ceil(
                self.duration
                * self.sampling_rate
                / self.spectrogram_frame_rate
                / self.latent_downsample_rate
            )
        )

    @property
    def clip_seq_len(self) -> int:
        return int(self.duration * self.clip_frame_rate)

    @property
    def sync_seg_len(self) -> int:
        num_frames = self.duration * self.sync_frame_rate
        return int((num_frames - self.sync_num_frames_per_segment) // self.sync_step_size + 1)

    @property
    def sync_seq_len(self) -> int:
        tokens_per_segment = self.sync_num_frames_per_segment // self.sync_downsample_rate
        return self.sync_seg_len * tokens_per_segment

    @property
    def num_audio_frames(self) -> int:
        """Waveform samples the decoder produces (may slightly exceed duration * rate)."""
        return self.latent_seq_len * self.spectrogram_frame_rate * self.latent_downsample_rate

    @property
    def num_sync_frames(self) -> int:
        """25 fps frames the sync encoder consumes: whole windows only."""
        return (self.sync_seg_len - 1) * self.sync_step_size + self.sync_num_frames_per_segment

    def with_duration(self, duration: float) -> SequenceConfig:
        if not duration > 0:
            raise ValueError(f"duration must be positive, got {duration!r}")
        return replace(self, duration=float(duration))


def track_samples(duration: float, sample_rate: int) -> int:
    """Samples of a track lasting `duration` seconds (rounded to the nearest sample): every
    written track, a clip's or a joined long video's, has exactly this many."""
    return int(round(duration * sample_rate))


CONFIG_16K = SequenceConfig(sampling_rate=16000, spectrogram_frame_rate=256)
CONFIG_44K = SequenceConfig(sampling_rate=44100, spectrogram_frame_rate=512)


def config_for_mode(mode: str, duration: float = 8.0) -> SequenceConfig:
    """Sequence config for audio mode '16k' or '44k' at a duration in seconds."""
    base = {"16k": CONFIG_16K, "44k": CONFIG_44K}.get(mode)
    if base is None:
        raise ValueError(f"unknown audio mode {mode!r}: expected '16k' or '44k'")
    return base.with_duration(duration)
