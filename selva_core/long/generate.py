"""Generate one track for a video of any length on one `Pipeline` (no Ray): the reference for
the Ray jobs, which run the same steps on separate actors.

    windows = plan_windows(video_duration(path), window, overlap, quantum=pipe_quantum(pipe))
    features = window_features(pipe, path, prompt, windows)           # streams, bounded memory
    latents = sample_windows(pipe, features, windows, seed=..., mode=...)
    wavs = [pipe.decode_latents(lat[None], w.duration)[0] for lat, w in zip(latents, windows)]
    track = join_windows(wavs, windows, pipe.sampling_rate, track_samples(duration, sr), mode=...)

In `continue` mode window k+1 needs window k's final latent, so the windows of one video are
sampled in order (windows of *different* videos can share a batch: pass each its own
`known_latents` entry); in `crossfade` mode they are independent. Either way a window's result
depends only on its features, its seed `window_seed(seed, k)` and (continue) the previous
window's latent, never on which actor or batch ran it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from selva_core.long.join import (
    DEFAULT_SEAM_FADE,
    JOIN_MODES,
    JoinMode,
    continuation_prefix,
    join_windows,
    seam_spans,
    track_samples,
)
from selva_core.long.windows import (
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    Window,
    iter_window_clips,
    latent_quantum,
    plan_windows,
    video_duration,
    window_seed,
)

from ..defaults import DEFAULT_CFG, DEFAULT_SEED, DEFAULT_STEPS


def pipe_quantum(pipe) -> float:
    """The pipeline's latent frame period in seconds (plan windows on it)."""
    return latent_quantum(pipe.sequence(DEFAULT_WINDOW))


def window_features(
    pipe,
    video: str | os.PathLike[str],
    prompt: str,
    windows: Sequence[Window],
    *,
    with_audio_latents: bool = False,
    mask=None,
) -> Iterator:
    """`Features` of each window, decoded from one open file one window at a time.

    Each carries `start` = its window's start, `duration` = its window's length and
    `info["window"]` = (index, start, end). `mask`: `MaskSettings` for object-mask focus (a
    mask video is read window by window too). With `with_audio_latents` each window also gets
    the VAE posterior of its own stretch of the soundtrack (training samples).
    """
    from selva_core.pipeline import decode_config_for
    from selva_core.video.mask import MaskSource, apply_mask

    config = decode_config_for(pipe.spec, pipe.config.frame_rule)
    rate = pipe.sampling_rate if with_audio_latents else None
    source = MaskSource(mask.path) if mask is not None else None
    try:
        for w, clip in iter_window_clips(video, windows, config=config, audio_rate=rate):
            if mask is not None:
                clip = apply_mask(clip, mask, source, config)
            feats = pipe.features_from_decoded([clip], [prompt], with_audio_latents)[0]
            feats.info["window"] = (w.index, w.start, w.end)
            yield feats
    finally:
        if source is not None:
            source.close()


def sample_windows(
    pipe,
    features: Sequence,
    windows: Sequence[Window],
    *,
    seed: int,
    mode: JoinMode = "continue",
    steps: int = DEFAULT_STEPS,
    cfg: float = DEFAULT_CFG,
    negative_prompt: str | None = "",
    timings: list[dict] | None = None,
) -> list[torch.Tensor]:
    """Un-normalized latents (N, C) per window of one video, seeded `window_seed(seed, k)`.

    `continue`: window k > 0 holds its first frames to `continuation_prefix` of window k-1's
    latent. `crossfade`: windows are sampled independently (here one by one; batching them
    gives the same latents up to float rounding)."""
    if mode not in JOIN_MODES:
        raise ValueError(f"join mode must be one of {JOIN_MODES}, got {mode!r}")
    if len(features) != len(windows):
        raise ValueError(f"{len(features)} feature sets for {len(windows)} windows")
    quantum = pipe_quantum(pipe)
    latents: list[torch.Tensor] = []
    for k, (f, w) in enumerate(zip(features, windows, strict=True)):
        known = None
        if mode == "continue" and k > 0:
            known = continuation_prefix(latents[-1], windows[k - 1], w, quantum)
        t0 = time.perf_counter()
        lat = pipe.sample_latents(
            [f],
            seed=window_seed(seed, w.index),
            steps=steps,
            cfg=cfg,
            negative_prompt=negative_prompt,
            known_latents=[known],
        )[0]
        if timings is not None:
            timings.append({"window": w.index, "sample_s": time.perf_counter() - t0})
        latents.append(lat)
    return latents


@dataclass
class LongTrack:
    """One video's joined track and how it was made."""

    waveform: torch.Tensor  # (track_samples(duration, sample_rate),) float32
    sample_rate: int
    duration: float
    mode: str
    windows: list[Window]
    seeds: list[int]
    latents: list[torch.Tensor]  # per window, un-normalized (N, C)
    window_waveforms: list[torch.Tensor]
    seams: list[tuple[float, float]]  # crossfade spans (seconds): where to check for clicks
    timings: list[dict] = field(default_factory=list)  # per window: seconds per stage


def generate_long(
    pipe,
    video: str | os.PathLike[str],
    prompt: str,
    *,
    seed: int = DEFAULT_SEED,
    window: float = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
    mode: JoinMode = "continue",
    steps: int = DEFAULT_STEPS,
    cfg: float = DEFAULT_CFG,
    negative_prompt: str | None = "",
    seam_fade: float = DEFAULT_SEAM_FADE,
    mask=None,
) -> LongTrack:
    """Windows -> features -> latents -> waveforms -> one track of exactly the video's length."""
    duration = video_duration(video)
    windows = plan_windows(duration, window, overlap, quantum=pipe_quantum(pipe))
    timings: list[dict] = [{"window": w.index} for w in windows]
    features = []
    t0 = time.perf_counter()
    for f in window_features(pipe, video, prompt, windows, mask=mask):
        features.append(f)
        timings[len(features) - 1]["features_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    sample_t: list[dict] = []
    latents = sample_windows(
        pipe,
        features,
        windows,
        seed=seed,
        mode=mode,
        steps=steps,
        cfg=cfg,
        negative_prompt=negative_prompt,
        timings=sample_t,
    )
    wavs = []
    for k, (lat, w) in enumerate(zip(latents, windows, strict=True)):
        t0 = time.perf_counter()
        wavs.append(pipe.decode_latents(lat[None], w.duration)[0])
        timings[k].update(sample_s=sample_t[k]["sample_s"], decode_s=time.perf_counter() - t0)
    sr = pipe.sampling_rate
    track = join_windows(
        wavs, windows, sr, track_samples(duration, sr), mode=mode, seam_fade=seam_fade
    )
    return LongTrack(
        waveform=track,
        sample_rate=sr,
        duration=duration,
        mode=mode,
        windows=windows,
        seeds=[window_seed(seed, w.index) for w in windows],
        latents=latents,
        window_waveforms=wavs,
        seams=seam_spans(windows, mode, seam_fade) if len(windows) > 1 else [],
        timings=timings,
    )


__all__ = ["LongTrack", "generate_long", "pipe_quantum", "sample_windows", "window_features"]
