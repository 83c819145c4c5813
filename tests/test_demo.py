"""`selva-ray demo`: the whole chain (extract -> LoRA training on 2 workers -> generation with
and without the adapter, muxed -> report pages) offline at tiny size on its own local Ray, the
summary table, and a second run that finds every stage done."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from selva_ray.io.feature_schema import read_features
from selva_ray.io.results_schema import read_results

ENV = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", RAY_ADDRESS="")
STAGES = ["catalog", "ray", "extract", "train (LoRA)", "generate", "generate + adapter", "report"]


def demo(output: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selva_ray.cli", "demo", "--output", str(output)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )


def table(stdout: str) -> dict[str, tuple[str, float, str]]:
    """The summary table: stage -> (status, seconds, output)."""
    rows = {}
    for line in stdout.splitlines():
        for stage in STAGES:
            m = re.match(rf"^{re.escape(stage)}\s+(ran|skipped)\s+([\d.]+)\s+(\S+)", line)
            if m:
                rows[stage] = (m[1], float(m[2]), m[3])
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The demo, run twice into one folder."""
    out = tmp_path_factory.mktemp("demo") / "selva-demo"
    first = demo(out)
    second = demo(out) if first.returncode == 0 else None
    return out, first, second


def test_the_demo_runs_the_whole_chain(runs):
    out, first, _ = runs
    assert first.returncode == 0, first.stderr[-3000:]
    rows = table(first.stdout)
    assert list(rows) == STAGES, first.stdout[-3000:]
    assert all(status == "ran" for status, _, _ in rows.values()), first.stdout[-3000:]
    page = out / "generate-lora" / "report" / "index.html"
    assert first.stdout.index(f"report page: {page}") < first.stdout.index("stage  ")
    assert rows["report"][2] == str(page) and page.stat().st_size > 0
    assert (out / "generate" / "report" / "index.html").exists()
    assert (out / "train" / "report" / "index.html").exists()

    features = read_features(str(out / "features"))
    assert "a dog barks in a park" in features["prompt"].to_pylist()
    assert features.num_rows == 6 and all(n > 0 for n in features["latent_len"].to_pylist())
    assert "6 clips: 6 ok, 0 failed, 0 skipped" in first.stdout
    assert "2 worker(s), 4 steps" in first.stderr  # the LoRA stage trained on 2 workers
    assert (out / "train" / "adapter.safetensors").stat().st_size > 0

    results = {
        name: read_results(str(out / name)).to_pylist() for name in ("generate", "generate-lora")
    }
    for name, rows in results.items():
        assert len(rows) == 6
        for row in rows:
            assert (out / name / row["audio_path"]).stat().st_size > 0
            assert (out / name / row["video_path"]).stat().st_size > 0
    assert all(json.loads(r["adapters"]) == [] for r in results["generate"])
    assert all(json.loads(r["adapters"])[0]["name"] == "adapter" for r in results["generate-lora"])


def test_a_second_run_skips_every_stage(runs):
    out, first, second = runs
    assert second is not None and second.returncode == 0, (second or first).stderr[-3000:]
    rows = table(second.stdout)
    assert list(rows) == STAGES, second.stdout[-3000:]
    skipped = [s for s, (status, _, _) in rows.items() if status == "skipped"]
    assert skipped == [s for s in STAGES if s != "ray"], second.stdout[-3000:]
    assert "every stage was finished before and skipped" in second.stdout
    assert "0 ok, 0 failed, 6 skipped" in second.stdout
    assert "already complete" in second.stdout
