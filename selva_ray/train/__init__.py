"""LoRA fine-tuning on Ray Train: features with audio latents -> adapter file (+ Surgery).

The settings (`TrainConfig`) import nothing heavy; the job itself loads on first use."""

from ..lazy import lazy_exports
from .config import TrainConfig, TrainConfigError

__all__ = [
    "FeatureFolderError",
    "TrainConfig",
    "TrainConfigError",
    "TrainFailed",
    "TrainSummary",
    "run_train",
]


__getattr__ = lazy_exports(
    __name__,
    {"FeatureFolderError": "data", "TrainFailed": "job", "TrainSummary": "job", "run_train": "job"},
)
