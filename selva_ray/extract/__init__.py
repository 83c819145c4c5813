"""The feature-extraction job: catalog -> decode -> encoders -> Parquet features.

The settings (`ExtractConfig`) import nothing heavy; the job itself loads on first use."""

from ..lazy import lazy_exports
from .config import ExtractConfig

__all__ = ["ExtractConfig", "ExtractSummary", "run_extract"]


__getattr__ = lazy_exports(__name__, {"ExtractSummary": "job", "run_extract": "job"})
