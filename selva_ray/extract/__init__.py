"""The feature-extraction job: catalog -> decode -> encoders -> Parquet features.

The settings (`ExtractConfig`) import nothing heavy; the job itself loads on first use."""

from .config import ExtractConfig

__all__ = ["ExtractConfig", "ExtractSummary", "run_extract"]


def __getattr__(name: str):
    if name in ("ExtractSummary", "run_extract"):
        from . import job

        return getattr(job, name)
    raise AttributeError(name)
