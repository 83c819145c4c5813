"""The batch generation job: catalog or features -> audio tracks, dubbed videos, results.

The settings (`GenerateConfig`) import nothing heavy; the job itself loads on first use."""

from .config import GenerateConfig, GenerateInputError, GenerateSummary

__all__ = ["GenerateConfig", "GenerateInputError", "GenerateSummary", "run_generate"]


def __getattr__(name: str):
    if name == "run_generate":
        from .job import run_generate

        return run_generate
    raise AttributeError(name)
