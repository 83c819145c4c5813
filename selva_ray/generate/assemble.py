"""The long-video pipeline's window assembler: one light actor that holds each video's window
rows until its last window arrives, then emits the video as one row (window features stacked
in index order). It only routes rows, so this module imports no torch and no model code: the
actor's worker stays a small process beside the model actors."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np

from selva_core.seeds import window_seed

from ..io.rows import OK_RESULT, batch_rows, finite_or_none


class WindowAssembler:
    """One actor: collect the window rows of each video; emit the video as one row (window
    tensors stacked in index order) as soon as all its windows have arrived."""

    def __init__(self, *, tensors: tuple[str, ...], lengths: tuple[str, ...]):
        self.tensors, self.lengths = tuple(tensors), tuple(lengths)
        self.pending: dict[str, dict[int, dict]] = defaultdict(dict)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = defaultdict(list)
        for row in batch_rows(batch):
            parent = row["parent_id"]
            self.pending[parent][int(row["window_index"])] = row
            if len(self.pending[parent]) == int(row["window_count"]):
                self._emit(out, [w for _, w in sorted(self.pending.pop(parent).items())])
        return dict(out)

    def _emit(self, out: dict[str, list], wins: list[dict]) -> None:
        first = wins[0]
        status = dict(OK_RESULT)
        bad = next((w for w in wins if w["status"] != "ok"), None)
        if bad is not None:
            status = {
                "status": "error",
                "stage": bad["stage"],
                "error_type": bad["error_type"],
                "message": f"window {bad['window_index']} ({bad['start']:.3f} s): {bad['message']}",
            }
        values = {
            "id": first["parent_id"],
            "shard": first["shard"],
            "row": first.get("row"),
            "source": first["source"],
            "prompt": first["prompt"],
            "negative_prompt": first["negative_prompt"],
            "seed": int(first["seed"]),
            "start": first["start"] - first["window_start"],
            "duration": first["parent_duration"],
            "input_hash": first.get("input_hash"),
            "name": first.get("name"),
            "cfg": first["cfg"],
            "steps": first["steps"],
            "decode_s": _sum(w.get("decode_s") for w in wins),
            "features_s": _sum(w.get("features_s") for w in wins),
            "windows_json": json.dumps(
                [
                    {
                        "index": int(w["window_index"]),
                        "start": float(w["window_start"]),
                        "end": float(w["window_end"]),
                        "seed": window_seed(int(w["seed"]), int(w["window_index"])),
                        "t_decode": finite_or_none(w.get("decode_s")),
                        "t_features": finite_or_none(w.get("features_s")),
                    }
                    for w in wins
                ]
            ),
            **status,
        }
        for k, v in values.items():
            out[k].append(v)
        for name in self.tensors:
            out[name].append(np.stack([np.asarray(w[name], np.float32) for w in wins]))
        for name in self.lengths:
            out[name].append(np.asarray([int(w[name] or 0) for w in wins], np.int64))


def _sum(values) -> float:
    nums = [v for v in (finite_or_none(x) for x in values) if v is not None]
    return float(sum(nums)) if nums else math.nan
