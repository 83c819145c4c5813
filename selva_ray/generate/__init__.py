"""The batch generation job: catalog or features -> audio tracks, dubbed videos, results.

The settings (`GenerateConfig`) import nothing heavy; the job itself loads on first use."""

from ..lazy import lazy_exports
from .config import GenerateConfig, GenerateInputError, GenerateSummary

__all__ = ["GenerateConfig", "GenerateInputError", "GenerateSummary", "run_generate"]


__getattr__ = lazy_exports(__name__, {"run_generate": "job"})
