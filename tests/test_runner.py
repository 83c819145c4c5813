"""The one job runner as users meet it: an unreachable address answered at once, relative paths
on a cluster started elsewhere, a training plan that cannot fit refused, and the planner's one
GPU rule (unit tests on cluster views). Each job run from the command line on this machine's
real cores, on a private cluster while another Ray runs on the machine, with train's refusal
and interrupts, is tests/test_doc_commands.py; the jobs on a cluster that declares GPUs are
tests/test_runner_gpus.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from video_factory import write_folder_catalog

from selva_ray.errors import UsageError
from selva_ray.runner.plan import ClusterView, ModelRole, plan_models, plan_training

ENV = dict(
    os.environ,
    HF_HUB_OFFLINE="1",
    RAY_AUTH_MODE="disabled",
    CUDA_VISIBLE_DEVICES="",
    SELVA_RAW_STDERR="1",
)
ENV.pop("RAY_ADDRESS", None)


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selva_ray.cli", *args],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=timeout,
    )


def runs(folder: Path) -> list[dict]:
    return json.loads((folder / "_meta.json").read_text())["runs"]


def view(cpus: float, gpus: float = 0.0, nodes: int = 1) -> ClusterView:
    per = {"cpus": cpus / nodes, "gpus": gpus / nodes, "memory": 0.0, "cores": int(cpus / nodes)}
    return ClusterView(cpus, gpus, tuple(dict(per) for _ in range(nodes)))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return write_folder_catalog(tmp_path_factory.mktemp("runner") / "catalog", "dogs", 3, 1.2)


# ---- the planner ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "auto"])
def test_one_model_actor_per_gpu_for_every_gpu_device(device):
    plan = plan_models(
        [ModelRole("encoder", memory_gb=1.5), ModelRole("desync", memory_gb=1.5)],
        device=device,
        precision=None,
        view=view(8, gpus=2),
    )
    assert plan.use_gpu and plan.precision == "bf16"
    for role in ("encoder", "desync"):
        assert plan[role].actors == 2 and plan[role].num_gpus == 1.0
        assert plan[role].device in ("cuda", "cpu")  # cpu only under SELVA_MODELS_ON_CPU


def test_cpu_plans_leave_a_cpu_to_the_tasks_and_refuse_cuda_without_gpus():
    plan = plan_models(
        [ModelRole("generator", memory_gb=1.5, cpu_actors="per-core", threads=True)],
        device="auto",
        precision=None,
        view=view(2),
    )
    assert not plan.use_gpu and plan.device == "cpu" and plan.precision == "fp32"
    gen = plan["generator"]
    assert gen.actors == 2 and gen.actors * gen.num_cpus <= 2 - 1 and gen.cpu_share == 2
    with pytest.raises(UsageError, match="--device cuda:0: the Ray cluster has no GPUs"):
        plan_models(
            [ModelRole("encoder", memory_gb=1)], device="cuda:0", precision=None, view=view(2)
        )


def test_no_more_model_actors_than_units_of_work_unless_asked():
    gen = dict(memory_gb=1.5, cpu_actors="per-core", threads=True)
    one = plan_models([ModelRole("generator", **gen, most=1)], device="cpu", precision=None,
                      view=view(2))  # fmt: skip
    assert one["generator"].actors == 1 and one["generator"].cpu_share == 1  # all the cores
    gpus = plan_models(
        [ModelRole("encoder", memory_gb=1.5, most=3)], device="auto", precision=None,
        view=view(8, gpus=8),
    )  # fmt: skip
    assert gpus["encoder"].actors == 3
    asked = plan_models([ModelRole("generator", **gen, actors=2, most=1)], device="cpu",
                        precision=None, view=view(2))  # fmt: skip
    assert asked["generator"].actors == 2  # an explicit --actors is kept


def test_each_pipeline_of_a_run_starts_only_the_actors_its_work_needs():
    """Generate runs its short clips, then its long videos, on one plan: a pipeline with less
    work than the plan's largest need starts fewer actors (a long video is one generator
    call), and the torch threads are split between the actors it starts."""
    from selva_ray.generate import GenerateConfig
    from selva_ray.generate.job import GenerateJob

    short = [{"id": f"c{i}"} for i in range(8)]
    long_rows = [{"id": f"v#w{k:03d}", "parent_id": "v"} for k in range(3)]
    job = GenerateJob(GenerateConfig(input="in", output="out", variant="tiny"))
    short_units, long_units = job.work_units(short, long_rows, batch=2)
    assert short_units == {"generator": 2, "encoder": 4, "desync": 2}
    assert long_units == {"generator": 1, "encoder": 1, "desync": 1}
    roles = [
        ModelRole("generator", memory_gb=1.5, cpu_actors="per-core", threads=True, most=2),
        ModelRole("encoder", memory_gb=1.5, cpu_actors="per-core", threads=True, most=4),
        ModelRole("desync", memory_gb=1.5, cpu_actors=2, most=2),
    ]
    plan = plan_models(roles, device="cpu", precision=None, view=view(4))
    assert [plan[r].actors for r in ("generator", "encoder", "desync")] == [2, 4, 2]
    assert plan["generator"].cpu_share == 6
    one = plan.for_work(long_units)
    assert [one[r].actors for r in ("generator", "encoder", "desync")] == [1, 1, 1]
    assert one["generator"].cpu_share == one["encoder"].cpu_share == 2
    assert one["desync"].cpu_share is None
    assert one["generator"].num_cpus == plan["generator"].num_cpus
    assert plan.for_work(short_units).actors == plan.actors  # the plan was made for this one
    roles[0] = ModelRole("generator", memory_gb=1.5, actors=2, threads=True, most=2)
    asked = plan_models(roles, device="cpu", precision=None, view=view(4))
    assert asked["generator"].asked and not asked["encoder"].asked
    kept = asked.for_work(long_units)  # --actors 2 is kept as given
    assert kept["generator"].actors == 2 and kept["encoder"].actors == 1


def test_training_plan_fits_the_reader_or_names_what_fits():
    plan = plan_training(2, None, use_gpu=False, view=view(2))
    assert 2 * plan.cpus_per_worker + plan.reader_cpus <= 2
    with pytest.raises(UsageError, match="at most 1 worker"):
        plan_training(3, 1.0, use_gpu=False, view=view(2))
    with pytest.raises(UsageError, match="at most 0 GPU worker"):
        plan_training(1, None, use_gpu=True, view=view(2))
    # three nodes of 2 CPUs: the reader takes its share on one, the workers pack the rest
    assert plan_training(5, 1.0, use_gpu=False, view=view(6, nodes=3)).workers == 5


# ---- as a user runs them ----------------------------------------------------------------------


def test_an_unreachable_address_is_one_line_and_claims_nothing(catalog, tmp_path):
    out = tmp_path / "qa"
    t0 = time.monotonic()
    done = cli(
        "qa", "--input", str(catalog), "--output", str(out), "--no-desync",
        env={**ENV, "RAY_ADDRESS": "127.0.0.1:1"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: cannot reach the Ray cluster at 127.0.0.1:1"), lines
    assert "Traceback" not in done.stderr
    assert time.monotonic() - t0 < 60
    assert not out.exists() or not any(out.iterdir())  # no _meta.json, no lease


def test_relative_paths_mean_the_commands_folder_on_a_cluster_started_elsewhere(
    shared_ray, catalog, tmp_path, monkeypatch
):
    """The suite's cluster was started from another folder: its workers' working folder is
    not this one. A job given relative paths still reads and writes where the command is."""
    from selva_ray.qa import QAConfig, run_qa

    shutil.copytree(catalog, tmp_path / "videos")
    monkeypatch.chdir(tmp_path)
    summary = run_qa(QAConfig(input="videos", output="qa", desync_variant=None, progress=False))
    assert summary.ok == 3
    assert len(list((tmp_path / "qa" / "results").glob("part-*.parquet"))) == 1
    assert runs(tmp_path / "qa")[-1]["ray"]["kind"] == "attached"
