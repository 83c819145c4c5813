"""What every job's run summary computes from its counts, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClipCounts:
    """The counts every batch job's summary has (a job's summary dataclass adds its own)."""

    output: str
    catalog: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # finished before, same input
    failed_before: int = 0  # failed before, same input: skipped unless --retry-errors
    redone: int = 0  # had a row made from another input (selva_ray.io.identity): done again
    wall_s: float = 0.0
    errors_by_stage: dict = field(default_factory=dict)
    has_errors_folder: bool = False

    @property
    def attempted(self) -> int:
        return self.ok + self.failed

    @property
    def clips_per_s(self) -> float:
        return self.attempted / self.wall_s if self.wall_s > 0 else 0.0

    def exit_code(self, fail_on_error: bool) -> int:
        """1 when asked to fail on any error, or when every attempted clip failed."""
        if self.failed and (fail_on_error or self.ok == 0):
            return 1
        return 0

    def failed_before_text(self) -> str:
        """', N failed before (...)' and '; N redone (...)' where those counts are set."""
        n = getattr(self, "failed_before", 0)
        text = f", {n} failed before (--retry-errors redoes them)" if n else ""
        if getattr(self, "redone", 0):
            text += f"; {self.redone} redone (input changed)"
        return text

    def folder_text(self, name: str) -> str:
        """The output's subfolder `name`, as a user reaches it: an object-store output keeps
        its endpoint query after the folder (`s3://b/out/results/?endpoint_override=...`)."""
        from .io.catalog import split_query

        base, query = split_query(self.output)
        return f"{base.rstrip('/')}/{name}/" + (f"?{query}" if query else "")

    def where_text(self, first: str) -> str:
        """Where the output is; the errors folder only when it exists (`has_errors_folder`)."""
        if getattr(self, "has_errors_folder", False):
            return f"{first}, errors in {self.folder_text('errors')}"
        return first
