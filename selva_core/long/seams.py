"""Seam metric for joined tracks (tests and QA): does a join add a click?

A click or an abrupt change is a jump of the log-mel spectrum from one frame to the next. The
metric is the log-mel spectral flux (mean absolute change of the log-mel bins between adjacent
frames) at each seam, divided by the flux's median over the whole track, so it reads as "times
a typical frame-to-frame change of this track". A seam is clean when its score stays within
the range of the windows' inner frames (frames away from every seam): `SeamReport.clean`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from selva_core.audio.mel import MEL_16K, MEL_44K, MelConfig, MelConverter

# frames this close (seconds) to a seam's span belong to the seam, not to the inner frames
DEFAULT_GUARD = 0.1


@dataclass(frozen=True)
class SeamReport:
    """Seam scores and the inner frames' range, all in units of the track's median flux."""

    scores: tuple[float, ...]  # one per seam: max normalised flux over the seam's span
    inner_max: float  # max normalised flux over the inner frames
    inner_p99: float
    median_flux: float  # the normaliser (raw mean |d log-mel| per frame)

    @property
    def worst(self) -> float:
        return max(self.scores, default=0.0)

    @property
    def clean(self) -> bool:
        """No seam jumps more than the largest frame-to-frame change inside the windows."""
        return self.worst <= self.inner_max

    def as_dict(self) -> dict:
        return {
            "seam_scores": list(self.scores),
            "worst_seam": self.worst,
            "inner_max": self.inner_max,
            "inner_p99": self.inner_p99,
            "median_flux": self.median_flux,
            "clean": self.clean,
        }


def mel_config_for(sample_rate: int) -> MelConfig:
    """The model's own log-mel settings at 16 kHz / 44.1 kHz, else 16k-like ones at the rate."""
    if sample_rate == MEL_16K.sampling_rate:
        return MEL_16K
    if sample_rate == MEL_44K.sampling_rate:
        return MEL_44K
    return MelConfig(sampling_rate=sample_rate, fmax=sample_rate / 2)


def spectral_flux(wav: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flux, times): flux[i] = mean over mel bins of |logmel[:, i+1] - logmel[:, i]|, and the
    time in seconds of that change (the boundary between the two frames' centres)."""
    if wav.dim() != 1:
        raise ValueError(f"expected a mono waveform (N,), got shape {tuple(wav.shape)}")
    cfg = mel_config_for(sample_rate)
    mel = MelConverter(cfg)(wav.detach().float().cpu())  # (bins, frames)
    flux = (mel[:, 1:] - mel[:, :-1]).abs().mean(dim=0).double()
    # frame i is centred on sample i * hop + hop / 2 (reflect padding of (n_fft - hop) / 2)
    times = (torch.arange(flux.shape[0], dtype=torch.float64) + 1) * cfg.hop_size / sample_rate
    return flux, times


def seam_report(
    wav: torch.Tensor,
    sample_rate: int,
    seams: Sequence[float | tuple[float, float]],
    *,
    guard: float = DEFAULT_GUARD,
) -> SeamReport:
    """Score each seam (a time, or a crossfade span (a, b), in seconds) of a joined track.

    A seam's score is the largest normalised flux within `guard` seconds of it (a crossfade
    can click where it starts, ends or anywhere between). The inner frames are those farther
    than `guard` from every seam, excluding the track's first and last `guard` seconds.
    """
    flux, times = spectral_flux(wav, sample_rate)
    if flux.numel() < 3:
        raise ValueError(f"track too short for a seam metric ({wav.shape[0]} samples)")
    median = float(flux.median())
    norm = flux / max(median, 1e-12)
    inner = (times > guard) & (times < times[-1] - guard)
    scores = []
    for seam in seams:
        a, b = (seam, seam) if isinstance(seam, (int, float)) else seam
        near = (times >= a - guard) & (times <= b + guard)
        inner &= ~near
        if not near.any():
            raise ValueError(f"seam at {a:.3f}-{b:.3f} s lies outside the track")
        scores.append(float(norm[near].max()))
    if not inner.any():
        raise ValueError("no inner frames left to compare the seams with")
    inner_vals = norm[inner]
    return SeamReport(
        scores=tuple(scores),
        inner_max=float(inner_vals.max()),
        inner_p99=float(torch.quantile(inner_vals, 0.99)),
        median_flux=median,
    )


__all__ = ["DEFAULT_GUARD", "SeamReport", "mel_config_for", "seam_report", "spectral_flux"]
