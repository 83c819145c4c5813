"""Every job through the real Ray Jobs API: a local head with its dashboard, `submit_job` with
the checkout as working_dir and this test's interpreter running `jobs/X.py`, wait, then check
the status and the outputs; a bad submission ends FAILED with the reason in the job's logs."""

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from golden_support import REPO_ROOT
from ray_head import end_process
from video_factory import AudioSpec, write_video

from selva_ray.io.feature_schema import read_features

HEAD = """
import os, sys, time, ray
import ray._private.parameter as parameter
from ray._private.utils import write_ray_address

# The job agent's HTTP port is fixed (52365) unless `ray start` sets it; another Ray on the
# machine may hold it, and the head then accepts no job. Give ours a free port.
_init = parameter.RayParams.__init__
def _init_with_agent_port(self, *args, **kwargs):
    kwargs.setdefault("dashboard_agent_listen_port", int(sys.argv[2]))
    _init(self, *args, **kwargs)
parameter.RayParams.__init__ = _init_with_agent_port
# A job's driver gets its cluster address from the head's temp dir (ray_current_cluster), and
# the shared /tmp/ray names whichever cluster `ray start` made last on this machine: our own
# temp dir names ours. It declares the machine's real cores, as a user's head would.
ctx = ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)),
               object_store_memory=400 * 1024 * 1024,
               include_dashboard=True, dashboard_host="127.0.0.1",
               dashboard_port=int(sys.argv[1]), _temp_dir=sys.argv[3])
write_ray_address(ctx.address_info["gcs_address"], sys.argv[3])
print("READY", flush=True)
while True:
    time.sleep(1)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_head(log: Path, env: dict, temp_dir: str) -> tuple[subprocess.Popen, int]:
    """A head process that has printed READY (ray.init returned), and its dashboard port. Ray
    gives a starting node 30 s to register, which a heavily loaded machine can miss: a head
    that dies starting is started again (twice at most)."""
    for attempt in range(3):
        port = _free_port()
        with open(log, "w") as out:
            head = subprocess.Popen(
                [sys.executable, "-c", HEAD, str(port), str(_free_port()), temp_dir],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 240
        while "READY" not in log.read_text() and head.poll() is None:
            assert time.monotonic() < deadline, "head did not start: " + log.read_text()[-3000:]
            time.sleep(1)
        if head.poll() is None:
            return head, port
        assert attempt < 2, "head did not start: " + log.read_text()[-3000:]
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """A JobSubmissionClient on a local head started by a driver process (not `ray start`, so
    no later `ray.init()` in the suite attaches to it)."""
    from ray.job_submission import JobSubmissionClient

    log = tmp_path_factory.mktemp("head") / "head.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # On a loaded machine a job may reach its working_dir package more than the default 60 s
    # after the upload; the head must keep it that long.
    env["RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S"] = "900"
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: Ray's socket paths
    head, port = _start_head(log, env, temp_dir)
    client = None
    try:
        deadline = time.monotonic() + 180
        while client is None:
            assert head.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "head did not start: " + log.read_text()[-3000:]
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{port}")
            except Exception:  # noqa: BLE001 - the dashboard is still starting
                time.sleep(1)
        yield client
    finally:
        end_process(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit_and_wait(client, args: list[str], timeout: float = 420) -> tuple[str, str]:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    job = None
    while job is None:
        try:
            job = client.submit_job(
                # This interpreter (it has selva-ray), not the first `python` on the head's PATH.
                entrypoint=shlex.join([sys.executable, *args]),
                runtime_env={
                    "working_dir": str(REPO_ROOT),
                    "excludes": ["bench", "cluster", "docs", ".ruff_cache", ".pytest_cache"],
                    "env_vars": {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")},
                },
            )
        except RuntimeError as exc:  # the head's job agent comes up after the dashboard
            assert "No available agent" in str(exc) and time.monotonic() < deadline, exc
            time.sleep(2)
    while (status := client.get_job_status(job)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
        time.sleep(1)
    return str(status), client.get_job_logs(job)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jobs-catalog")
    (root / "dogs").mkdir()
    write_video(root / "dogs" / "a.mp4", duration=1.5, audio=AudioSpec())
    write_video(root / "dogs" / "b.mp4", duration=1.0, audio=AudioSpec(freq=330.0))
    return root


def assert_settings_feed_back(job: str, run_dir: Path, capsys) -> dict:
    """The settings the job recorded in `_meta.json`, written as a config file and fed back
    with `--print-config --config`, print as the same settings."""
    from selva_ray.cli import main
    from selva_ray.config_file import dump_settings, recorded_config

    recorded = recorded_config(json.loads((run_dir / "_meta.json").read_text()))
    assert recorded and recorded["output"] == str(run_dir), recorded
    config = run_dir.parent / f"{job}-again.yaml"
    config.write_text(dump_settings(recorded))
    capsys.readouterr()
    assert main([job, "--config", str(config), "--print-config"]) == 0
    assert capsys.readouterr().out == dump_settings(recorded)
    return recorded


@pytest.fixture(scope="module")
def features(jobs, catalog, tmp_path_factory) -> tuple[str, str, Path]:
    """The extraction job, submitted once: its status, logs and output (train and generate
    read it)."""
    out = tmp_path_factory.mktemp("jobs-out") / "features"
    status, logs = submit_and_wait(
        jobs,
        ["jobs/extract.py", "--input", str(catalog), "--output", str(out), "--variant", "tiny"]
        + ["--with-audio-latents", "--no-progress", "--max-duration", "2"],
    )
    return status, logs, out


@pytest.fixture(scope="module")
def trained(jobs, features) -> tuple[str, str, Path]:
    """A LoRA run of 2 steps on 1 worker over the extracted features, submitted once."""
    out = features[2].parent / "lora"
    status, logs = submit_and_wait(
        jobs,
        ["jobs/train.py", "--features", str(features[2]), "--output", str(out)]
        + ["--workers", "1", "--steps", "2", "--batch-size", "1", "--warmup", "0", "--rank", "4"]
        + ["--eval-every", "2", "--save-every", "2", "--preview-clips", "0", "--no-surgery"],
    )
    return status, logs, out


def test_extract_job_through_the_jobs_api(features, capsys):
    status, logs, out = features
    assert status == "SUCCEEDED", logs[-3000:]
    table = read_features(str(out))
    assert sorted(table["prompt"].to_pylist()) == ["dogs", "dogs"]
    assert all(n > 0 for n in table["latent_len"].to_pylist())
    assert "2 ok, 0 failed" in logs
    recorded = assert_settings_feed_back("extract", out, capsys)
    assert recorded["variant"] == "tiny" and recorded["with-audio-latents"] is True


def test_train_job_through_the_jobs_api(trained, capsys):
    status, logs, out = trained
    assert status == "SUCCEEDED", logs[-3000:]
    assert "complete: 2 steps on 1 training clips (1 validation)" in logs
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    from selva_core.lora.adapter_file import read_adapter

    assert read_adapter(str(out / "adapter.safetensors")).meta.trained_rank == 4
    assert (out / "checkpoints").is_dir() and not (out / "adapter.surgery.safetensors").exists()
    recorded = assert_settings_feed_back("train", out, capsys)
    assert (recorded["workers"], recorded["steps"], recorded["no-surgery"]) == (1, 2, True)


def test_generate_job_through_the_jobs_api(jobs, features, trained, capsys):
    assert trained[0] == "SUCCEEDED", trained[1][-3000:]
    out = features[2].parent / "dubbed"
    adapter = trained[2] / "adapter.safetensors"
    status, logs = submit_and_wait(
        jobs,
        ["jobs/generate.py", "--input", str(features[2]), "--output", str(out), "--mux"]
        + ["--variant", "tiny", "--steps", "2", "--no-progress", "--adapter", f"{adapter}@0.5"],
    )
    assert status == "SUCCEEDED", logs[-3000:]
    assert "2 ok, 0 failed" in logs
    from selva_ray.io.results_schema import read_results

    rows = read_results(str(out)).to_pylist()
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert (out / r["audio_path"]).stat().st_size > 0
        assert (out / r["video_path"]).stat().st_size > 0
        assert json.loads(r["adapters"])[0]["strength"] == 0.5
    recorded = assert_settings_feed_back("generate", out, capsys)
    assert recorded["adapter"] == [f"{adapter}@0.5"] and recorded["mux"] is True


def test_qa_job_through_the_jobs_api(jobs, catalog, tmp_path, capsys):
    out = tmp_path / "qa"
    status, logs = submit_and_wait(
        jobs,
        ["jobs/qa.py", "--input", str(catalog), "--output", str(out), "--no-desync"]
        + ["--max-silence", "0.9", "--no-progress"],
    )
    assert status == "SUCCEEDED", logs[-3000:]
    assert f"{sys.executable} jobs/qa.py" in logs  # run by this interpreter
    from selva_ray.io.results_schema import read_results

    rows = read_results(str(out)).to_pylist()
    assert sorted(r["duration"] for r in rows) == pytest.approx([1.0, 1.5], abs=0.05)
    assert all(r["loudness_lufs"] is not None and r["desync_s"] is None for r in rows)
    recorded = assert_settings_feed_back("qa", out, capsys)
    assert recorded["max-silence"] == 0.9 and recorded["no-desync"] is True


def test_a_bad_submission_fails_with_the_reason_in_the_logs(jobs, tmp_path):
    missing = tmp_path / "no-such-catalog"
    status, logs = submit_and_wait(
        jobs,
        ["jobs/extract.py", "--input", str(missing), "--output", str(tmp_path / "o")]
        + ["--variant", "tiny"],
    )
    assert status == "FAILED"
    assert "error:" in logs and str(missing) in logs
