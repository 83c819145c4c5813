"""The batch generation job: catalog or features -> audio tracks, dubbed videos, results."""

from .job import GenerateConfig, GenerateInputError, GenerateSummary, run_generate

__all__ = ["GenerateConfig", "GenerateInputError", "GenerateSummary", "run_generate"]
