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

    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def histogram(
    values: list[float], path: Path, title: str, unit: str, lines: list[float] = ()
) -> Path:
    """Histogram of one metric over the clips, threshold(s) drawn as dashed lines."""
    return _save(histogram_figure(values, title, unit, lines), path)


def histogram_figure(values: list[float], title: str, unit: str, lines: list[float] = ()):
    """The histogram's matplotlib Figure (unsaved).

    The bins span the whole visible axis (data and thresholds), so a threshold far from every
    clip (a -23 LUFS target over tracks near -60) cannot shrink the bars below a pixel: each
    bar is at least 1/`HIST_BINS` of the axis wide."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0, 2.6))
    ax = fig.add_subplot()
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    lines = [x for x in lines if x is not None and math.isfinite(x)]
    if data.size or lines:
        lo, hi = histogram_range(data, lines)
        if data.size:
            ax.hist(data, bins=np.linspace(lo, hi, HIST_BINS + 1), color="#4472c4")
        ax.set_xlim(lo, hi)
    for x in lines:
        ax.axvline(x, color="#c00000", linestyle="--", linewidth=1)
    ax.yaxis.set_major_locator(_integer_locator())
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(unit or "ratio", fontsize=8)
    ax.set_ylabel("clips", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


HIST_BINS = 30


def histogram_range(data: np.ndarray, lines: list[float]) -> tuple[float, float]:
    """The x range of a histogram: every value and every threshold line, with a margin."""
    points = [*(data.tolist() if data.size else []), *lines]
    lo, hi = min(points), max(points)
    if hi - lo < 1e-9:
        return lo - 0.5, hi + 0.5
    pad = 0.04 * (hi - lo)
    return lo - pad, hi + pad


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


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
    return _save(curves_figure(series, title, log_y), path)


def curves_figure(
    series: dict[str, tuple[list[float], list[float]]], title: str, log_y: bool = False
):
    """The curves' matplotlib Figure (unsaved): whole-number step ticks,
    tick labels as plain numbers (no `x10^n`, no offset), a log y axis only when the values
    span at least a decade."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 2.8))
    ax = fig.add_subplot()
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=name)
    values = [y for _, ys in series.values() for y in ys]
    if log_y and values and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_yscale("log")
        decades = math.log10(max(values) / min(values))
        ax.yaxis.set_major_formatter(_formatter(lambda v: plain_number(v)))
        ax.yaxis.set_minor_formatter(_formatter(lambda v: _minor_label(v, decades)))
    else:
        from matplotlib.ticker import ScalarFormatter

        linear = ScalarFormatter(useOffset=False)
        linear.set_scientific(False)
        ax.yaxis.set_major_formatter(linear)
    ax.xaxis.set_major_locator(_integer_locator())
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7, which="both")
    if len(series) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plain_number(v: float) -> str:
    """A tick label: `0.5`, `2`, `0.0003`, `1e-07` only below that."""
    if v == 0:
        return "0"
    text = f"{v:.3g}" if abs(v) < 1e-4 or abs(v) >= 1e6 else f"{v:.6f}".rstrip("0").rstrip(".")
    return text.replace("-", "\u2212")


def _minor_label(v: float, decades: float) -> str:
    """Label the 2x and 5x ticks of a log axis that spans under two decades (else none)."""
    if v <= 0 or decades >= 2:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return plain_number(v) if round(mantissa, 6) in (2.0, 5.0) else ""


def _formatter(fn):
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: fn(v))
