"""The results staging stage shared by qa and generate: rows of the results schema (plus
where each clip goes and how it went) -> results and error fragments of the output folder."""

from __future__ import annotations

import pyarrow as pa

from ..io.output_dir import OutputDir
from ..io.results_schema import RESULTS_SCHEMA, results_table
from .desync import DESYNC_INPUT_FIELDS

STATUS_FIELDS = [
    pa.field("shard", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("error_type", pa.string()),
    pa.field("message", pa.string()),
]
# what flows from measure to write: the results columns plus where the clip goes and how it went
# (the generation job's writer hands its rows to DeSync and `write_batch` in the same shape)
STAGE_SCHEMA = pa.schema([*RESULTS_SCHEMA, *STATUS_FIELDS])
# ... plus the DeSync inputs when a DeSync stage follows
DESYNC_STAGE_SCHEMA = pa.schema([*STAGE_SCHEMA, *DESYNC_INPUT_FIELDS])


def write_batch(
    batch: pa.Table, *, output: str, settings_hash: str, report: tuple[str, ...] = ()
) -> pa.Table:
    """Stage each shard's results and errors as fragments; report (shard, id, status, stage,
    the `report` columns, flags joined by commas) to the driver. A row that does not fit the
    results schema becomes an error row (stage "write"); the block's other rows are kept."""
    out_dir = OutputDir(output, kind="results")
    rows = batch.to_pylist()
    names = set(RESULTS_SCHEMA.names)

    def build(chosen: list[int]) -> pa.Table:
        return results_table([{k: v for k, v in rows[i].items() if k in names} for i in chosen])

    out_dir.stage_rows(rows, "results", build, settings_hash)
    columns = {name: pa.string() for name in ("shard", "id", "status", "stage")}
    columns.update({name: batch.schema.field(name).type for name in report})
    out = {name: pa.array([r[name] for r in rows], kind) for name, kind in columns.items()}
    out["flags"] = pa.array(
        [",".join(r["qa_flags"] or []) if r["status"] == "ok" else "" for r in rows], pa.string()
    )
    return pa.table(out)
