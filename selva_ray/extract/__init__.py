"""The feature-extraction job: catalog -> decode -> encoders -> Parquet features."""

from .job import ExtractConfig, ExtractSummary, run_extract

__all__ = ["ExtractConfig", "ExtractSummary", "run_extract"]
