"""Per-clip quality measurements of audio tracks (pure PyTorch / NumPy, no Ray)."""

from .metrics import (
    QA_METRICS,
    ClipMetrics,
    DesyncFn,
    QAThresholds,
    ThresholdsError,
    clip_metrics,
    qa_flags,
)

__all__ = [
    "QA_METRICS",
    "ClipMetrics",
    "DesyncFn",
    "QAThresholds",
    "ThresholdsError",
    "clip_metrics",
    "qa_flags",
]
