"""PNG figures of a report: metric histograms, clip spectrograms, training curves.

Drawn with matplotlib's object API on the Agg canvas (no display, no pyplot global state), each
saved under a hidden name and renamed when whole.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np


def _save(fig, path: Path, dpi: int = 100) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def histogram(
    values: list[float], path: Path, title: str, unit: str, lines: list[float] = ()
) -> Path:
    """Histogram of one metric over the clips, threshold(s) drawn as dashed lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0, 2.6))
    ax = fig.add_subplot()
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if data.size:
        lo, hi = float(data.min()), float(data.max())
        bins = 30 if hi > lo else 1
        ax.hist(data, bins=bins, range=None if hi > lo else (lo - 0.5, hi + 0.5), color="#4472c4")
    for x in lines:
        ax.axvline(x, color="#c00000", linestyle="--", linewidth=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(unit or "ratio", fontsize=8)
    ax.set_ylabel("clips", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _save(fig, path)


def spectrogram(samples: np.ndarray, sample_rate: int, path: Path) -> Path:
    """Log-magnitude spectrogram (dB, 80 dB range), a small strip for the clips table."""
    import torch
    from matplotlib.figure import Figure

    x = torch.as_tensor(np.asarray(samples, np.float32))
    n_fft = 512 if sample_rate <= 24000 else 1024
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(
        x,
        n_fft,
        hop_length=n_fft // 4,
        window=torch.hann_window(n_fft),
        return_complex=True,
    ).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-6))
    top = float(db.max())
    db = db.clamp_min(top - 80).numpy()
    fig = Figure(figsize=(3.2, 1.1))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(
        db,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(0, x.numel() / sample_rate, 0, sample_rate / 2000),
    )
    ax.set_axis_off()
    return _save(fig, path)


def curves(
    series: dict[str, tuple[list[float], list[float]]], path: Path, title: str, log_y: bool = False
) -> Path:
    """Line plot of named (x, y) series against the training step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 2.8))
    ax = fig.add_subplot()
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=name)
    if log_y and all(y > 0 for _, ys in series.values() for y in ys):
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    if len(series) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
