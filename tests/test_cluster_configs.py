"""The cluster configs in cluster/ are valid without a cluster: the launcher YAML against Ray's
own schema, the RayJob against what it must say, and every entrypoint against our parser."""

import json
import re
import shlex
import tomllib
from importlib.metadata import version
from pathlib import Path

import jsonschema
import ray
import yaml
from golden_support import REPO_ROOT

from selva_ray.cli import build_parser

CLUSTER = REPO_ROOT / "cluster"


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


def test_versions_agree_everywhere():
    installed = version("ray")
    assert re.fullmatch(ray_pin().replace(".", r"\.").replace("*", r"\d+"), installed)
    assert image_tag().startswith(installed + "-py311")
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-extract.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == installed


def test_launcher_config_follows_rays_schema():
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    for path in (CLUSTER / "launcher").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        jsonschema.validate(config, schema)
        types = config["available_node_types"]
        assert config["head_node_type"] in types
        assert types[config["head_node_type"]]["resources"].get("CPU") == 0, "keep work off head"
        assert sum(t["max_workers"] for t in types.values()) >= 1


def test_rayjob_has_gpu_encoders_cpu_decoders_and_cleans_up():
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-extract.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}

    def limits(group):
        return group["template"]["spec"]["containers"][0]["resources"]["limits"]

    gpu = [g for g in groups.values() if "nvidia.com/gpu" in limits(g)]
    cpu = [g for g in groups.values() if "nvidia.com/gpu" not in limits(g)]
    assert gpu and cpu
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    images = {
        c["image"]
        for g in [cluster["headGroupSpec"], *groups.values()]
        for c in g["template"]["spec"]["containers"]
    }
    assert len(images) == 1  # one image for the whole cluster


def test_entrypoints_are_valid_commands_of_ours():
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-extract.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/extract.py"] and (REPO_ROOT / argv[1]).is_file()
    args = build_parser().parse_args(["extract", *argv[2:]])
    assert args.input.startswith("s3://") and args.output.startswith("s3://")
    assert args.with_audio_latents and args.offline and args.variant == "small_16k"
    launcher = (CLUSTER / "launcher" / "aws-extract.yaml").read_text()
    command = " ".join(
        line.strip("# \\").strip() for line in launcher.splitlines() if line.startswith("#")
    )
    submitted = shlex.split(command.split(" -- ", 1)[1])
    assert submitted[1] == "jobs/extract.py"
    build_parser().parse_args(["extract", *submitted[2:]])
