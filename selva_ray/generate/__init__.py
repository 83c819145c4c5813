"""The batch generation job: catalog or features -> audio tracks, dubbed videos, results."""

from .config import GenerateConfig, GenerateInputError, GenerateSummary
from .job import run_generate

__all__ = ["GenerateConfig", "GenerateInputError", "GenerateSummary", "run_generate"]
