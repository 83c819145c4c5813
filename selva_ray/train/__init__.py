"""LoRA fine-tuning on Ray Train: features with audio latents -> adapter file (+ Surgery)."""

from .config import TrainConfig, TrainConfigError
from .data import FeatureFolderError
from .job import TrainFailed, TrainSummary, run_train

__all__ = [
    "FeatureFolderError",
    "TrainConfig",
    "TrainConfigError",
    "TrainFailed",
    "TrainSummary",
    "run_train",
]
