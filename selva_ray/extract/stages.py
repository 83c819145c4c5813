"""The extract job's own stage: write (CPU tasks staging Parquet fragments of features). Decode
and encode are the shared stages of `selva_ray.stages`."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from ..io.feature_schema import FeatureLayout, tensor_array
from ..io.output_dir import OutputDir
from ..io.rows import batch_rows, plain

log = logging.getLogger(__name__)


def write_batch(
    batch: dict[str, np.ndarray], *, output: str, layout: FeatureLayout
) -> dict[str, list]:
    """Stage each shard's rows as Parquet fragments; report (shard, id, status, stage)."""
    rows = list(batch_rows(batch))
    OutputDir(output).stage_rows(
        rows, "features", lambda idx: feature_table(batch, idx, layout), layout.settings_hash
    )
    return {
        "shard": [r["shard"] for r in rows],
        "id": [r["id"] for r in rows],
        "status": [r["status"] for r in rows],
        "stage": [r["stage"] for r in rows],
    }


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
