"""`selva-ray qa`: QA metrics of the audio tracks of a catalog, into the shared results table.

The settings (`QAConfig`) import nothing heavy; the job itself loads on first use."""

from .config import QAConfig

__all__ = ["QAConfig", "QASummary", "run_qa"]


def __getattr__(name: str):
    if name in ("QASummary", "run_qa"):
        from . import job

        return getattr(job, name)
    raise AttributeError(name)
