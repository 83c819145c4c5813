"""LoRA fine-tuning on Ray Train: features with audio latents -> adapter file (+ Surgery).

The settings (`TrainConfig`) import nothing heavy; the job itself loads on first use."""

from .config import TrainConfig, TrainConfigError

__all__ = [
    "FeatureFolderError",
    "TrainConfig",
    "TrainConfigError",
    "TrainFailed",
    "TrainSummary",
    "run_train",
]


def __getattr__(name: str):
    if name == "FeatureFolderError":
        from .data import FeatureFolderError

        return FeatureFolderError
    if name in ("TrainFailed", "TrainSummary", "run_train"):
        from . import job

        return getattr(job, name)
    raise AttributeError(name)
