"""The cluster configs in cluster/ are valid without a cluster: the launcher YAML against Ray's
own schema, each job's RayJob against what it must say, every entrypoint against our parser,
and the resources of each RayJob against the actors/workers its command asks for."""

import json
import re
import shlex
import tomllib
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from golden_support import REPO_ROOT

from selva_ray.cli import build_parser

CLUSTER = REPO_ROOT / "cluster"
JOBS = ("extract", "generate", "train", "qa")
RAYJOBS = {job: CLUSTER / "kuberay" / f"rayjob-{job}.yaml" for job in JOBS}


def ray_pin() -> str:
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("ray["))
    return pin.split("==")[1]


def image_tag() -> str:
    first = next(
        line
        for line in (CLUSTER / "Dockerfile").read_text().splitlines()
        if line.startswith("FROM")
    )
    return first.split(":", 1)[1]


def load(job: str) -> dict:
    return yaml.safe_load(RAYJOBS[job].read_text())


def parsed_entrypoint(job: str):
    argv = shlex.split(load(job)["spec"]["entrypoint"])
    assert argv[:2] == ["python", f"jobs/{job}.py"] and (REPO_ROOT / argv[1]).is_file()
    return build_parser().parse_args([job, *argv[2:]])


def limits(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


def gpu_groups(job: str) -> list[dict]:
    groups = load(job)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return [g for g in groups if "nvidia.com/gpu" in limits(g)]


def guaranteed_gpus(groups: list[dict]) -> int:
    """GPUs the cluster holds even when scaled in (minReplicas)."""
    return sum(g["minReplicas"] * int(limits(g)["nvidia.com/gpu"]) for g in groups)


def test_versions_agree_everywhere():
    installed = version("ray")
    assert ray_pin() == installed
    assert image_tag().startswith(installed + "-py311")
    for job in JOBS:
        assert load(job)["spec"]["rayClusterSpec"]["rayVersion"] == installed, job
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "-c constraints.txt" in dockerfile and "constraints.txt ./" in dockerfile


def test_launcher_config_follows_rays_schema():
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    paths = list((CLUSTER / "launcher").glob("*.yaml"))
    assert paths
    for path in paths:
        config = yaml.safe_load(path.read_text())
        jsonschema.validate(config, schema)
        types = config["available_node_types"]
        assert config["head_node_type"] in types
        assert types[config["head_node_type"]]["resources"].get("CPU") == 0, "keep work off head"
        assert sum(t["max_workers"] for t in types.values()) >= 1


@pytest.mark.parametrize("job", JOBS)
def test_each_rayjob_is_well_formed_and_cleans_up(job):
    spec = load(job)["spec"]
    assert load(job)["apiVersion"] == "ray.io/v1" and load(job)["kind"] == "RayJob"
    assert load(job)["metadata"]["name"] == f"selva-{job}"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = cluster["workerGroupSpecs"]
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    images = {
        c["image"]
        for g in [cluster["headGroupSpec"], *groups]
        for c in g["template"]["spec"]["containers"]
    }
    assert len(images) == 1  # one image for the whole cluster
    assert gpu_groups(job), "every job runs its models on GPUs"


@pytest.mark.parametrize("job", ["extract", "generate"])
def test_decoding_jobs_have_a_cpu_group_beside_the_gpus(job):
    groups = load(job)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert [g for g in groups if "nvidia.com/gpu" not in limits(g)]


def test_entrypoints_are_valid_commands_of_ours():
    extract = parsed_entrypoint("extract")
    assert extract.input.startswith("s3://") and extract.output.startswith("s3://")
    assert extract.with_audio_latents and extract.offline and extract.variant == "small_16k"
    generate = parsed_entrypoint("generate")
    assert generate.mux and generate.offline and generate.output.startswith("s3://")
    train = parsed_entrypoint("train")
    assert train.use_gpu and train.features.startswith("s3://")
    qa = parsed_entrypoint("qa")
    assert qa.offline and qa.output.startswith("s3://")


@pytest.mark.parametrize("job", ["generate", "qa"])
def test_model_actors_match_the_gpu_group(job):
    args = parsed_entrypoint(job)
    gpus = guaranteed_gpus(gpu_groups(job))
    assert args.actors is not None and args.actors == gpus, (
        f"{job}: --actors {args.actors} but the GPU group holds {gpus} GPUs"
    )


def test_train_workers_fit_the_gpu_group_and_share_the_run_folder():
    args = parsed_entrypoint("train")
    gpus = guaranteed_gpus(gpu_groups("train"))
    assert args.workers == gpus, f"--workers {args.workers} --use-gpu needs {args.workers} GPUs"
    cluster = load("train")["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        mounts = pod["template"]["spec"]["containers"][0]["volumeMounts"]
        assert any(args.output.startswith(m["mountPath"] + "/") for m in mounts), (
            "the run folder (Ray Train storage_path) must be on a volume every pod mounts"
        )


def submit_commands(text: str) -> list[list[str]]:
    """The `ray job submit ... -- python jobs/X.py ...` commands in a file's comments (each
    continued over lines ending in a backslash), as the argv after ` -- `."""
    commands, current = [], None
    for line in text.splitlines():
        body = line.lstrip("#").strip()
        if current is None and body.startswith("ray job submit"):
            current = ""
        if current is not None:
            current += " " + body.rstrip("\\").strip()
            if not body.endswith("\\"):
                commands.append(shlex.split(current.split(" -- ", 1)[1]))
                current = None
    return commands


def test_launcher_submit_commands_are_valid_commands_of_ours():
    submitted = submit_commands((CLUSTER / "launcher" / "aws.yaml").read_text())
    jobs = set()
    for argv in submitted:
        assert argv[0] == "python" and re.fullmatch(r"jobs/\w+\.py", argv[1])
        job = Path(argv[1]).stem
        build_parser().parse_args([job, *argv[2:]])
        jobs.add(job)
    assert jobs == set(JOBS)
