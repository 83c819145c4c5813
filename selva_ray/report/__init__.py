"""`selva-ray report` (a static HTML page about a run folder) and `selva-ray inspect` (the same
worst-first ranking in the terminal)."""

from .build import ReportOutError, ReportSummary, build_report
from .inspect import ranking_lines
from .run_folder import (
    RunFolder,
    RunFolderError,
    clip_name,
    load_run,
    rank_clips,
    severity_key,
)

__all__ = [
    "ReportOutError",
    "ReportSummary",
    "RunFolder",
    "RunFolderError",
    "build_report",
    "clip_name",
    "load_run",
    "rank_clips",
    "ranking_lines",
    "severity_key",
]
