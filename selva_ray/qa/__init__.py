"""`selva-ray qa`: QA metrics of the audio tracks of a catalog, into the shared results table.

The settings (`QAConfig`) import nothing heavy; the job itself loads on first use."""

from ..lazy import lazy_exports
from .config import QAConfig

__all__ = ["QAConfig", "QASummary", "run_qa"]


__getattr__ = lazy_exports(__name__, {"QASummary": "job", "run_qa": "job"})
