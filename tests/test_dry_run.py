"""`--dry-run` on every job: a 10^4-row manifest (rows over a few real small videos at
different starts) and a features folder are read, checked and planned; the plan and the
estimate are printed, exit status 0, no output folder is created, no model is loaded (the
weights folder is empty and downloads are off) and Ray is never started (local case).

All four dry runs share one fresh interpreter (the job imports cost more than the runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from video_factory import AudioSpec, write_video

from selva_core.variants import get_spec
from selva_ray.io.feature_schema import FeatureLayout
from selva_ray.io.output_dir import OutputDir

ROOT = Path(__file__).resolve().parent.parent
ROWS = 10_000
VIDEOS = 3

RUNNER = """
import json, sys
from selva_ray.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
ray = sys.modules.get("ray")
print("RESULT " + json.dumps({"codes": codes, "ray_imported": ray is not None,
      "ray_started": bool(ray is not None and ray.is_initialized())}))
"""


def write_manifest(folder: Path) -> Path:
    for k in range(VIDEOS):
        write_video(
            folder / f"v{k}.mp4",
            duration=3.0,
            fps=25,
            size=(32, 32),
            audio=AudioSpec(sample_rate=16000, channels=1),
            seed=k,
        )
    k = np.arange(ROWS)
    table = pa.table(
        {
            "id": [f"c{i:06d}" for i in range(ROWS)],
            "video": [f"v{i % VIDEOS}.mp4" for i in range(ROWS)],
            "prompt": ["a dog barking"] * ROWS,
            "start": ((k // VIDEOS) % 4) * 0.5,  # durations come from the probed files
        }
    )
    path = folder / "catalog.parquet"
    pq.write_table(table, path)
    return path


def write_features(folder: Path, clips: int = 16) -> Path:
    """A features folder with audio latents as extract writes it (real layout and Parquet)."""
    layout = FeatureLayout.for_run(get_spec("tiny"), max_duration=2.0, with_audio_latents=True)
    out = OutputDir(str(folder), kind="features")
    out.claim(layout.describe())
    schema = layout.arrow_schema()
    columns = {}
    for f in schema:
        if isinstance(f.type, pa.FixedShapeTensorType):
            shape = (clips, *f.type.shape)
            values = np.zeros(shape, dtype=f.type.value_type.to_pandas_dtype())
            columns[f.name] = pa.FixedShapeTensorArray.from_numpy_ndarray(values)
        elif f.name == "id":
            columns[f.name] = pa.array([f"clip{i}" for i in range(clips)], f.type)
        elif f.name.endswith("_len"):
            columns[f.name] = pa.array([4] * clips, f.type)
        else:
            columns[f.name] = pa.nulls(clips, f.type)
    for name in ("settings_hash", "variant", "family"):
        if name in columns:
            value = layout.settings_hash if name == "settings_hash" else getattr(layout, name)
            columns[name] = pa.array([value] * clips, schema.field(name).type)
    pq.write_table(
        pa.table(columns, schema=schema), Path(out.folder("features")) / "part-0.parquet"
    )
    return folder


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dry")
    manifest = write_manifest(tmp)
    features = write_features(tmp / "features")
    weights = tmp / "no-weights"
    weights.mkdir()
    common = ["--device", "cpu", "--weights-dir", str(weights), "--offline", "--dry-run"]
    outs = {job: tmp / f"out-{job}" for job in ("extract", "generate", "qa", "train")}
    argvs = [
        ["extract", "--input", str(manifest), "--output", str(outs["extract"])]
        + ["--variant", "tiny", *common],
        ["generate", "--input", str(manifest), "--output", str(outs["generate"])]
        + ["--variant", "tiny", "--no-desync", *common],
        ["qa", "--input", str(manifest), "--output", str(outs["qa"])]
        + ["--desync-variant", "tiny", *common],
        ["train", "--features", str(features), "--output", str(outs["train"])]
        + ["--steps", "10", "--weights-dir", str(weights), "--offline", "--dry-run"],
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(argvs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    result = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert result, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(result[-1][7:]), proc.stdout + proc.stderr[-2000:], outs


def test_every_job_dry_runs_a_big_manifest_and_exits_0(dry_runs):
    result, stdout, _ = dry_runs
    assert result["codes"] == [0, 0, 0, 0], stdout[-3000:]
    for job in ("extract", "generate", "qa", "train"):
        assert f"dry run of {job}: nothing started, nothing written" in stdout


def test_the_plan_and_the_estimate_are_printed(dry_runs):
    _, stdout, _ = dry_runs
    assert "this machine, as a private cluster (Ray not started)" in stdout
    assert "encoder actor(s)" in stdout and "generator actor(s)" in stdout
    assert "training worker(s)" in stdout
    assert f"catalog clips: {ROWS:,}" in stdout
    assert f"feature rows to compute (clips + windows): {ROWS:,}" in stdout
    assert f"clips to measure: {ROWS:,}" in stdout
    # 4 distinct starts over 3 s videos: 3.0, 2.5, 2.0 and 1.5 s left -> 4 buckets
    assert "sequence-length buckets: 4 " in stdout
    assert "training clips: " in stdout and "steps: 10" in stdout


def test_nothing_is_written_and_nothing_started(dry_runs):
    result, _, outs = dry_runs
    for job, out in outs.items():
        assert not out.exists(), f"{job} --dry-run created {out}"
    assert not result["ray_started"]
    assert not result["ray_imported"]  # not even imported: a local dry run never needs Ray
