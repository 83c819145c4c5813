"""The row shapes every job shares: plain rows out of Ray Data batches, the per-clip error
result a stage attaches when a clip fails, and the error table every job writes to `errors/`.

One shape for all jobs, so a reader of any output folder finds failures in the same columns:
`id, source, row, stage, error_type, message, settings_hash, input_hash` (the last one: what
the row was computed from, so a rerun with a fixed catalog row tries the clip again).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import traceback
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from .catalog import resolve

log = logging.getLogger(__name__)

ERROR_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
        ("stage", pa.string()),  # catalog | decode | encode | generate | write | ...
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("settings_hash", pa.string()),
        ("input_hash", pa.string()),
    ]
)
OK_RESULT = {"status": "ok", "stage": "", "error_type": "", "message": ""}
# The columns of a planned catalog row that every stage carries on (the planner adds `shard`),
# and the Arrow type of each planned column, wherever a table holds one.
ROW_COLUMNS = ("id", "shard", "row", "source", "prompt", "negative_prompt", "seed", "start")
ROW_TYPES = {
    "id": pa.string(),
    "shard": pa.string(),
    "row": pa.int64(),
    "source": pa.string(),
    "prompt": pa.string(),
    "negative_prompt": pa.string(),
    "seed": pa.int64(),
    "start": pa.float64(),
    "duration": pa.float64(),
    "cfg": pa.float64(),
    "steps": pa.int64(),
    "mask": pa.string(),
    "input_hash": pa.string(),
    "name": pa.string(),
}


def batch_rows(batch: dict[str, np.ndarray]) -> Iterator[dict]:
    """The rows of a Ray Data batch (dict of columns) as plain Python dicts."""
    n = len(batch["id"])
    for i in range(n):
        yield {k: plain(v[i]) for k, v in batch.items()}


def plain(value):
    """numpy scalars to Python values; a missing optional field (NaN after numpy) to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def error_result(row: dict, stage: str, exc: BaseException) -> dict:
    """The status fields of a clip that failed at `stage` (logged once, traceback at debug)."""
    message = str(exc) or type(exc).__name__
    log.warning("clip %s (%s) failed at %s: %s", row.get("id"), row.get("source"), stage, message)
    log.debug("%s", "".join(traceback.format_exception(exc)))
    return {"status": "error", "stage": stage, "error_type": type(exc).__name__, "message": message}


def table_or_error_rows(
    build: Callable[[list[int]], pa.Table],
    idx: list[int],
    failed: Callable[[int, Exception], None],
) -> pa.Table | None:
    """`build(idx)`, the table of a block's good rows; if one row cannot be stored (a value
    that does not fit the schema), each row is tried alone, the ones that fail go to
    `failed(i, exc)` (which makes them error rows) and the table holds the rest, so one odd
    row never fails a whole block. None when no row is left."""
    try:
        return build(idx)
    except Exception:  # noqa: BLE001 - find the bad row(s) below
        pass
    good = []
    for i in idx:
        try:
            build([i])
            good.append(i)
        except Exception as exc:  # noqa: BLE001
            failed(i, exc)
    return build(good) if good else None


def error_table(rows: list[dict], settings_hash: str) -> pa.Table:
    """Error rows in the shared `errors/` schema. Values are coerced to the schema's types,
    so an odd value in one row can never fail the error table of a whole block."""
    return pa.Table.from_pylist(
        [
            {
                "id": _text(r.get("id")),
                "source": _text(r.get("source")),
                "row": _int_or_none(r.get("row")),
                "stage": _text(r.get("stage")),
                "error_type": _text(r.get("error_type")),
                "message": _text(r.get("message")),
                "settings_hash": settings_hash,
                "input_hash": _text(r.get("input_hash")) or None,
            }
            for r in rows
        ],
        schema=ERROR_SCHEMA,
    )


def _text(value) -> str:
    return "" if value is None else str(value)


def _int_or_none(value) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if -(2**63) <= number < 2**63 else None


@contextlib.contextmanager
def local_copy(source: str):
    """A local path for a source: itself, or a temporary download of a remote object."""
    fs, path = resolve(source)
    if fs.type_name == "local":
        yield path
        return
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with fs.open_input_stream(path) as src:
            while chunk := src.read(8 << 20):
                tmp.write(chunk)
        tmp.flush()
        yield tmp.name


def finite_or_none(value) -> float | None:
    """A float, or None for a missing or NaN value."""
    if value is None:
        return None
    value = float(value)
    return None if value != value else value
