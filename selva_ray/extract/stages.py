"""The extract job's own stage: write (CPU tasks staging Parquet fragments of features). Decode
and encode are the shared stages of `selva_ray.stages`."""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import pyarrow as pa

from ..io.feature_schema import FeatureLayout, tensor_array
from ..io.output_dir import OutputDir
from ..io.rows import batch_rows, error_result, error_table, plain

log = logging.getLogger(__name__)


def write_batch(
    batch: dict[str, np.ndarray], *, output: str, layout: FeatureLayout
) -> dict[str, list]:
    """Stage each shard's rows as Parquet fragments; report (shard, id, status, stage)."""
    out_dir = OutputDir(output)
    settings = layout.settings_hash
    rows = list(batch_rows(batch))
    by_shard: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_shard[row["shard"]].append(i)
    for shard, idx in by_shard.items():
        ok = [i for i in idx if rows[i]["status"] == "ok"]
        if ok:
            table = _feature_table_or_errors(batch, ok, rows, layout)
            if table is not None:
                out_dir.stage(shard, "features", table)
        bad = [i for i in idx if rows[i]["status"] != "ok"]
        if bad:
            out_dir.stage(shard, "errors", error_table([rows[i] for i in bad], settings))
    return {
        "shard": [r["shard"] for r in rows],
        "id": [r["id"] for r in rows],
        "status": [r["status"] for r in rows],
        "stage": [r["stage"] for r in rows],
    }


def _feature_table_or_errors(
    batch: dict[str, np.ndarray], idx: list[int], rows: list[dict], layout: FeatureLayout
) -> pa.Table | None:
    """The feature table of rows `idx`; a row whose values do not fit the schema becomes an
    error row (stage 'write') instead of failing the block with it."""
    try:
        return feature_table(batch, idx, layout)
    except Exception:  # noqa: BLE001 - find the bad row(s) below
        pass
    good = []
    for i in idx:
        try:
            feature_table(batch, [i], layout)
            good.append(i)
        except Exception as exc:  # noqa: BLE001
            rows[i].update(error_result(rows[i], "write", exc))
    return feature_table(batch, good, layout) if good else None


def feature_table(batch: dict[str, np.ndarray], idx: list[int], layout: FeatureLayout) -> pa.Table:
    schema = layout.arrow_schema()
    values = {}
    for f in schema:
        if isinstance(f.type, pa.FixedShapeTensorType):
            array = np.stack([np.asarray(batch[f.name][i]) for i in idx])
            values[f.name] = tensor_array(array, tuple(f.type.shape))
        elif f.name == "settings_hash":
            values[f.name] = pa.array([layout.settings_hash] * len(idx), f.type)
        elif f.name in ("family", "variant"):
            values[f.name] = pa.array([getattr(layout, f.name)] * len(idx), f.type)
        else:
            values[f.name] = pa.array([plain(batch[f.name][i]) for i in idx], f.type)
    return pa.table(values, schema=schema)
