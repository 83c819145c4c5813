"""Every job on a Ray cluster that declares GPUs plans one model actor per GPU, for --device
cuda, cuda:0 and auto alike (one planner). The models stay on the CPU by the test switch
`SELVA_MODELS_ON_CPU=1`: this machine has no GPU, Ray only counts them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from video_factory import write_folder_catalog

from selva_ray.extract import ExtractConfig, run_extract
from selva_ray.generate import GenerateConfig, run_generate
from selva_ray.qa import QAConfig, run_qa

GPUS = 2
CLIPS = 4  # in batches of 1: 4 encoder batches, 2 generator calls (2 batches each), 4 DeSync


@pytest.fixture(scope="module")
def gpu_cluster():
    mp = pytest.MonkeyPatch()
    mp.setenv("SELVA_MODELS_ON_CPU", "1")
    ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=GPUS,
        object_store_memory=300 * 1024 * 1024,
        include_dashboard=False,
    )
    yield
    ray.shutdown()
    mp.undo()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return write_folder_catalog(tmp_path_factory.mktemp("gpus") / "catalog", "birds", CLIPS, 1.0)


def last_plan(folder: Path) -> dict:
    record = json.loads((folder / "_meta.json").read_text())["runs"][-1]
    assert record["ok"] == CLIPS, record
    return record["plan"]


def assert_one_per_gpu(plan: dict, role: str) -> None:
    actor = plan["actors"][role]
    assert plan["use_gpu"] and plan["cluster"]["gpus"] == GPUS
    assert actor["actors"] == GPUS, actor
    assert 0 < actor["num_gpus"] <= 1 and actor["device"] == "cpu"


def test_every_job_plans_one_model_actor_per_gpu(gpu_cluster, catalog, tmp_path):
    """With work for each GPU (the clips in batches of 1), and no actor beyond the batches:
    the clips in one batch of 8 load one encoder, not one per GPU."""
    extract = dict(
        input=str(catalog),
        variant="tiny",
        device="cuda",
        precision="fp32",
        max_duration=1.0,
        offline=True,
        progress=False,
    )
    features = tmp_path / "features"
    run_extract(ExtractConfig(output=str(features), batch_size=1, **extract))
    assert_one_per_gpu(last_plan(features), "encoder")
    one_batch = tmp_path / "one-batch"
    run_extract(ExtractConfig(output=str(one_batch), batch_size=8, **extract))
    assert last_plan(one_batch)["actors"]["encoder"]["actors"] == 1

    qa = tmp_path / "qa"
    run_qa(
        QAConfig(
            input=str(catalog),
            output=str(qa),
            desync_variant="tiny",
            device="cuda:0",
            desync_batch_size=1,
            progress=False,
        )
    )
    assert_one_per_gpu(last_plan(qa), "desync")

    for source, name in ((features, "from-features"), (catalog, "from-catalog")):
        out = tmp_path / name
        run_generate(
            GenerateConfig(
                input=str(source),
                output=str(out),
                variant="tiny",
                device="auto",
                precision="fp32",
                max_duration=1.0,
                steps=2,
                batch_size=1,
                offline=True,
                progress=False,
                desync=False,
            )
        )
        plan = last_plan(out)
        assert_one_per_gpu(plan, "generator")
        if source == catalog:
            assert_one_per_gpu(plan, "encoder")
            total = sum(a["actors"] * a["num_gpus"] for a in plan["actors"].values())
            assert total <= GPUS + 1e-9  # the shares fit the GPUs the cluster has
