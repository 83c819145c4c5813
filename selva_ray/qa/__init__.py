"""`selva-ray qa`: QA metrics of the audio tracks of a catalog, into the shared results table."""

from .job import QAConfig, QASummary, run_qa

__all__ = ["QAConfig", "QASummary", "run_qa"]
