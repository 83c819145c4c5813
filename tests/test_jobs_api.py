"""Every job through the real Ray Jobs API: a local head with its dashboard, `submit_job` with
the checkout as working_dir, wait, then check the status and the outputs; a bad submission ends
FAILED with the reason in the job's logs."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from golden_support import REPO_ROOT
from video_factory import AudioSpec, write_video

from selva_ray.io.feature_schema import read_features

HEAD = """
import sys, time, ray
ray.init(address="local", num_cpus=4, object_store_memory=400 * 1024 * 1024,
         include_dashboard=True,
         dashboard_host="127.0.0.1", dashboard_port=int(sys.argv[1]))
print("READY", flush=True)
while True:
    time.sleep(1)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """A JobSubmissionClient on a local head started by a driver process (not `ray start`, so
    no later `ray.init()` in the suite attaches to it)."""
    from ray.job_submission import JobSubmissionClient

    port = _free_port()
    log = tmp_path_factory.mktemp("head") / "head.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "w") as out:
        head = subprocess.Popen(
            [sys.executable, "-c", HEAD, str(port)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
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
        head.terminate()
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()


def submit_and_wait(client, args: list[str], timeout: float = 420) -> tuple[str, str]:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    job = None
    while job is None:
        try:
            job = client.submit_job(
                entrypoint=" ".join(["python", *args]),
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


def test_extract_job_through_the_jobs_api(jobs, catalog, tmp_path):
    out = tmp_path / "features"
    status, logs = submit_and_wait(
        jobs,
        ["jobs/extract.py", "--input", str(catalog), "--output", str(out), "--variant", "tiny"]
        + ["--with-audio-latents", "--no-progress"],
    )
    assert status == "SUCCEEDED", logs[-3000:]
    table = read_features(str(out))
    assert sorted(table["prompt"].to_pylist()) == ["dogs", "dogs"]
    assert "2 ok, 0 failed" in logs
    meta = json.loads((out / "_meta.json").read_text())
    assert meta["runs"][-1]["settings"]["variant"] == "tiny"


def test_a_bad_submission_fails_with_the_reason_in_the_logs(jobs, tmp_path):
    missing = tmp_path / "no-such-catalog"
    status, logs = submit_and_wait(
        jobs,
        ["jobs/extract.py", "--input", str(missing), "--output", str(tmp_path / "o")]
        + ["--variant", "tiny"],
    )
    assert status == "FAILED"
    assert "error:" in logs and str(missing) in logs
