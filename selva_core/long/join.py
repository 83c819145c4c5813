"""Join the windows of a long video into one track, and the latent a `continue` window holds.

Two modes (see issue 11):

- ``crossfade``: windows are generated independently; each seam is an equal-power crossfade
  (gains sin / cos of a quarter period, so the power of two unrelated signals stays constant)
  over the windows' usable overlap: [start of window k+1, end of window k), cut where window
  k-1 still reaches into it (only the shifted-back last window can make that happen).
- ``continue`` (default): window k+1 is sampled holding its first latent frames, the ones it
  shares with window k, to window k's final latent (flow-matching inpainting; see
  `selva_core.sampling.sample_latents`), so both windows decode to nearly the same audio there;
  the seam is then a short crossfade (`seam_fade`, 0.1 s) in the middle of the overlap, as
  far as possible from both windows' edges, where the decoders see the least context. As the
  two signals there are nearly the same (coherent), this crossfade is equal-*gain* (raised
  cosine: gains sin^2 / cos^2, summing to 1): an equal-power one would lift coherent audio by
  up to 3 dB mid-fade, a bump the seam metric sees.

All functions work on mono float waveforms; the output has exactly `total_samples` samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from selva_core.long.windows import Window
from selva_core.seqconfig import track_samples

JoinMode = Literal["continue", "crossfade"]
JOIN_MODES = ("continue", "crossfade")
DEFAULT_SEAM_FADE = 0.1


def overlap_spans(windows: Sequence[Window]) -> list[tuple[float, float]]:
    """Per seam k (between windows k and k+1): the usable overlap [a, b) in seconds, i.e.
    [start of k+1, end of k) minus what window k-1 still covers."""
    _check_windows(windows)
    spans = []
    for k in range(len(windows) - 1):
        a = windows[k + 1].start
        if k > 0:
            a = max(a, windows[k - 1].end)
        b = windows[k].end
        if not b > a:
            raise ValueError(
                f"windows {k} and {k + 1} do not overlap usably ({a:.3f} >= {b:.3f} s)"
            )
        spans.append((a, b))
    return spans


def seam_spans(
    windows: Sequence[Window], mode: JoinMode = "continue", seam_fade: float = DEFAULT_SEAM_FADE
) -> list[tuple[float, float]]:
    """Where each seam's crossfade runs, in seconds: the whole usable overlap (crossfade) or
    `seam_fade` seconds in its middle (continue). The seam metric looks at these spans."""
    if mode not in JOIN_MODES:
        raise ValueError(f"join mode must be one of {JOIN_MODES}, got {mode!r}")
    spans = overlap_spans(windows)
    if mode == "crossfade":
        return spans
    if not seam_fade > 0:
        raise ValueError(f"seam_fade must be > 0 seconds, got {seam_fade}")
    out = []
    for a, b in spans:
        mid, half = (a + b) / 2, min(seam_fade, b - a) / 2
        out.append((mid - half, mid + half))
    return out


def join_windows(
    windows_wavs: Sequence[torch.Tensor],
    windows: Sequence[Window],
    sample_rate: int,
    total_samples: int,
    *,
    mode: JoinMode = "continue",
    seam_fade: float = DEFAULT_SEAM_FADE,
) -> torch.Tensor:
    """One (total_samples,) float32 track from per-window waveforms (each starting at its
    window's start), crossfaded over `seam_spans(windows, mode, seam_fade)`: equal-power for
    `crossfade` (unrelated signals), equal-gain for `continue` (coherent ones)."""
    if len(windows_wavs) != len(windows):
        raise ValueError(f"{len(windows_wavs)} waveforms for {len(windows)} windows")
    if total_samples < 0:
        raise ValueError(f"total_samples must be >= 0, got {total_samples}")
    spans = [
        (_sample(a, sample_rate), _sample(b, sample_rate))
        for a, b in (seam_spans(windows, mode, seam_fade) if len(windows) > 1 else [])
    ]
    power = mode == "crossfade"
    out = torch.zeros(total_samples, dtype=torch.float32)
    for k, (w, wav) in enumerate(zip(windows, windows_wavs, strict=True)):
        if wav.dim() != 1:
            raise ValueError(f"window {w.index}: expected a mono waveform, got {tuple(wav.shape)}")
        offset = w.start_sample(sample_rate)
        lo = spans[k - 1][0] if k > 0 else 0
        hi = spans[k][1] if k < len(spans) else total_samples
        lo, hi = min(lo, total_samples), min(hi, total_samples)
        if hi <= lo:
            continue
        have = offset + wav.shape[0]
        if hi > have + _slack(sample_rate):
            raise ValueError(
                f"window {w.index} has {wav.shape[0]} samples from sample {offset}, "
                f"the join needs up to sample {hi}"
            )
        piece = torch.zeros(hi - lo, dtype=torch.float32)
        src_lo, src_hi = lo - offset, min(hi, have) - offset
        if src_lo < 0:
            raise ValueError(f"window {w.index} starts at sample {offset}, after sample {lo}")
        piece[: src_hi - src_lo] = wav[src_lo:src_hi].float()
        if k > 0:
            a, b = spans[k - 1]
            piece[a - lo : b - lo] *= fade_gains(b - a, rising=True, power=power)
        if k < len(spans):
            a, b = spans[k]
            piece[a - lo : b - lo] *= fade_gains(b - a, rising=False, power=power)
        out[lo:hi] += piece
    # an equal-power fade of two unrelated full-scale signals can peak at sqrt(2): keep the
    # track in the vocoder's [-1, 1], as any clip's waveform is
    return out.clamp_(-1.0, 1.0)


def crossfade_join(
    windows_wavs: Sequence[torch.Tensor],
    windows: Sequence[Window],
    sample_rate: int,
    total_samples: int,
) -> torch.Tensor:
    """Independently generated windows -> one track; equal-power crossfade over each overlap."""
    return join_windows(windows_wavs, windows, sample_rate, total_samples, mode="crossfade")


def continue_join(
    windows_wavs: Sequence[torch.Tensor],
    windows: Sequence[Window],
    sample_rate: int,
    total_samples: int,
    seam_fade: float = DEFAULT_SEAM_FADE,
) -> torch.Tensor:
    """Windows generated in `continue` mode -> one track; short crossfade mid-overlap."""
    return join_windows(
        windows_wavs, windows, sample_rate, total_samples, mode="continue", seam_fade=seam_fade
    )


def latent_shift(previous: Window, window: Window, quantum: float) -> int:
    """Latent frames between two windows' starts; they must lie on one latent grid."""
    shift = (window.start - previous.start) / quantum
    m = int(round(shift))
    if abs(shift - m) > 1e-3 or m <= 0:
        raise ValueError(
            f"windows {previous.index} ({previous.start:.6f} s) and {window.index} "
            f"({window.start:.6f} s) are not on a latent grid of {quantum:.6f} s: "
            "plan them with plan_windows(..., quantum=latent_quantum(seq))"
        )
    return m


def continuation_prefix(
    previous_latent: torch.Tensor, previous: Window, window: Window, quantum: float
) -> torch.Tensor | None:
    """The latent frames window `window` must hold at its start in `continue` mode: those of
    `previous_latent` (the previous window's final, un-normalized latent (N, C)) from the
    start of `window` on. None if the windows do not overlap."""
    if previous_latent.dim() != 2:
        raise ValueError(f"expected a latent (N, C), got shape {tuple(previous_latent.shape)}")
    m = latent_shift(previous, window, quantum)
    if m >= previous_latent.shape[0]:
        return None
    return previous_latent[m:]


def _check_windows(windows: Sequence[Window]) -> None:
    if not windows:
        raise ValueError("no windows to join")
    for k in range(1, len(windows)):
        if not windows[k].start > windows[k - 1].start:
            raise ValueError(f"windows must be in time order (window {windows[k].index})")


def _sample(t: float, sample_rate: int) -> int:
    return int(round(t * sample_rate))


def _slack(sample_rate: int) -> int:
    """Missing samples at a window's end that may be zero-filled (rounding of the lengths)."""
    return max(2, math.ceil(sample_rate * 0.001))


def fade_gains(n: int, rising: bool, power: bool = True) -> torch.Tensor:
    """Crossfade gains over n samples, at sample centres. Equal power (`power`): sin / cos of a
    quarter period, rising**2 + falling**2 == 1. Equal gain: their squares (raised cosine),
    rising + falling == 1."""
    phase = (torch.arange(n, dtype=torch.float64) + 0.5) / max(n, 1) * (math.pi / 2)
    g = torch.sin(phase) if rising else torch.cos(phase)
    return (g if power else g * g).float()


__all__ = [
    "DEFAULT_SEAM_FADE",
    "JOIN_MODES",
    "JoinMode",
    "continuation_prefix",
    "continue_join",
    "crossfade_join",
    "fade_gains",
    "join_windows",
    "latent_shift",
    "overlap_spans",
    "seam_spans",
    "track_samples",
]
