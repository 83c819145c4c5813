"""The one job runner as users meet it: each job started from the command line on this
machine's real cores (a private cluster, never one found on the machine), an unreachable
address answered at once, a training plan that cannot fit refused before Ray Train starts,
and the planner's one GPU rule (unit tests on cluster views; the jobs on a cluster that
declares GPUs are in tests/test_runner_gpus.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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


TRAIN_LONG = [
    "train",
    "--steps",
    "100000",
    "--batch-size",
    "2",
    "--preview-clips",
    "0",
    "--offline",
]


def interrupt(args: list[str], env: dict, sig: signal.Signals) -> subprocess.CompletedProcess:
    """Run a command, send it `sig` once its training worker group has started."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "selva_ray.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        seen.append(line)
        if "Started training worker group" in line or time.monotonic() > deadline:
            break
    time.sleep(3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(args, proc.returncode, out, "".join(seen) + err)


OTHER_HEAD = """
import sys, time
import ray
from ray._private.utils import write_ray_address
ctx = ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1])
write_ray_address(ctx.address_info["gcs_address"], sys.argv[1])
print("READY", ctx.address_info["gcs_address"], flush=True)
while True:
    time.sleep(1)
"""


def test_commands_start_a_private_cluster_and_ignore_one_on_the_machine(catalog, tmp_path):
    """Another Ray runs on this machine and is registered where `ray.init()` looks for one
    (its temp dir's `ray_current_cluster`); extract and qa without an address each run on a
    private cluster of the machine's cores instead, and record it; train refuses a worker
    group that cannot fit before Ray Train starts, and ends as an interrupt on SIGINT and
    SIGTERM. (Every job run from the command line as a
    user runs it, train with 2 workers included, is tests/test_doc_commands.py.)"""
    temp = tempfile.mkdtemp(prefix="ro-", dir="/tmp")  # short: Ray's socket paths
    log = tmp_path / "head.log"
    with open(log, "w") as fh:
        head = subprocess.Popen(
            [sys.executable, "-c", OTHER_HEAD, temp], stdout=fh, stderr=subprocess.STDOUT, env=ENV
        )
    try:
        deadline = time.monotonic() + 240
        while "READY" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        other = log.read_text().split("READY", 1)[1].split()[0]
        env = {**ENV, "RAY_TMPDIR": temp}
        cores = len(os.sched_getaffinity(0))
        features, qa = tmp_path / "features", tmp_path / "qa"
        common = ["--variant", "tiny", "--offline", "--max-duration", "1", "--window", "0"]
        done = cli(
            "extract", "--input", str(catalog), "--output", str(features), *common,
            "--with-audio-latents", env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        # a worker group that cannot fit is refused before Ray Train starts, naming what fits
        done = cli(
            "train", "--features", str(features), "--output", str(tmp_path / "train3"),
            "--workers", "3", "--cpus-per-worker", "1", "--steps", "2", "--batch-size", "3",
            "--offline", env=env,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-3000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: --workers 3 x 1 CPU does not fit") and "at most" in last
        assert not (tmp_path / "train3").exists()
        # Ctrl-C, then SIGTERM on the resumed run: each ends training as an interrupt (one
        # line, exit 130, the folder's lease released), and --resume goes on from there
        for sig, extra in ((signal.SIGINT, []), (signal.SIGTERM, ["--resume"])):
            stopped = interrupt(
                [*TRAIN_LONG, "--features", str(features), "--output", str(tmp_path / "t"), *extra],
                env,
                sig,
            )
            assert stopped.returncode == 130, stopped.stderr[-3000:]
            last = stopped.stderr.strip().splitlines()[-1]
            assert last.startswith(f"interrupted ({sig.name}; rerun with --resume"), last
            assert "Traceback" not in stopped.stderr.split("Started training worker group")[-1]
            # Ray Train's PlacementGroupCleaner looked Ray up with address "auto": with this
            # other Ray on the host it failed (a traceback) or asked the wrong cluster
            for noise in ("Found multiple active Ray instances", "PlacementGroupCleaner"):
                assert noise not in stopped.stderr, stopped.stderr[-3000:]
            assert not list((tmp_path / "t" / "_lease").glob("*.json"))
        done = cli("qa", "--input", str(catalog), "--output", str(qa), "--no-desync", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        for folder in (features, qa):
            record = runs(folder)[-1]
            assert record["ok"] == 3, record
            assert record["ray"]["kind"] == "private"
            assert record["ray"]["address"] != other
            assert record["plan"] is None or record["plan"]["cluster"]["cpus"] == cores
    finally:
        head.terminate()
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp, ignore_errors=True)


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
