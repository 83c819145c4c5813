"""`ray job submit` exactly as README.md documents it, against a stock `ray start --head`: the
token made by `ray get-auth-token --generate` in $HOME/.ray/auth_token (token auth at Ray's
defaults, RAY_AUTH_MODE unset for the head), the `ray` CLI as a process, the entrypoint run by
the interpreter that has selva-ray. A submission without RAY_AUTH_MODE=token is refused, one
with a bare `python` runs whatever the head's PATH finds first (here a decoy); the documented
one runs `jobs/qa.py` on the head and writes its results. The head is stopped alone
(never `ray stop`, which ends every Ray on the machine) and none of its processes is left."""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from golden_support import REPO_ROOT
from ray_head import naming, ray_cli, start_head, stop_head
from video_factory import AudioSpec, write_video

from selva_ray.io.results_schema import read_results

# Settings of the machine running the suite that a user's shell would not have.
DROPPED = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "PYTHONPATH"}


def _submit(env: dict, dashboard: int, entrypoint: list[str], head) -> subprocess.CompletedProcess:
    """`ray job submit --address http://127.0.0.1:PORT --working-dir . -- ENTRYPOINT` from the
    checkout, waiting for the job; again while the head's job agent is still coming up."""
    command = [ray_cli(), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}"]
    command += ["--working-dir", ".", "--", *entrypoint]
    deadline = time.monotonic() + 420
    while True:
        with subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as cli:
            while cli.poll() is None:
                head.look()  # the job's driver and workers, for the stop's check
                assert time.monotonic() < deadline, "ray job submit did not return"
                time.sleep(1)
            output = cli.stdout.read()
        if "No available agent" not in output or time.monotonic() > deadline:
            return subprocess.CompletedProcess(command, cli.returncode, output, "")
        time.sleep(2)


def test_ray_job_submit_against_ray_start_head(tmp_path):
    home = tmp_path / "home"  # the token's default place, $HOME/.ray/auth_token, is ours
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in DROPPED} | {"HOME": str(home)}
    made = subprocess.run(
        [ray_cli(), "get-auth-token", "--generate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert (home / ".ray" / "auth_token").read_text().strip() == made.stdout.strip() != ""

    catalog = tmp_path / "catalog"
    (catalog / "dogs").mkdir(parents=True)
    write_video(catalog / "dogs" / "a.mp4", duration=1.5, audio=AudioSpec())
    write_video(catalog / "dogs" / "b.mp4", duration=1.0, audio=AudioSpec(freq=330.0))
    out = tmp_path / "qa"

    # The head's PATH finds a `python` without selva-ray first, as when the head was started
    # from a venv that is not activated: the documented entrypoint names its interpreter.
    decoy = tmp_path / "decoy-bin"
    decoy.mkdir()
    for name in ("python", "python3"):
        (decoy / name).write_text("#!/bin/sh\necho 'decoy python: no selva-ray here'\nexit 3\n")
        (decoy / name).chmod(0o755)
    # A loaded machine may start the job more than the default 60 s after the upload; a head
    # stopped with SIGTERM need not wait for its node to drain (up to 30 s by default).
    head_env = env | {
        "PATH": f"{decoy}:{env['PATH']}",
        "RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S": "900",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    temp_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths
    head = start_head(head_env, temp_dir, tmp_path / "head.log", num_cpus=2)
    try:
        assert "Token authentication is enabled" in head.log.read_text()
        entrypoint = [sys.executable, "jobs/qa.py", "--input", str(catalog)]
        entrypoint += ["--output", str(out), "--no-desync", "--no-progress"]

        refused = _submit(env, head.dashboard_port, entrypoint, head)
        assert refused.returncode != 0, refused.stdout[-3000:]
        assert "Missing authentication token" in refused.stdout, refused.stdout[-3000:]
        assert not out.exists()

        token_env = env | {"RAY_AUTH_MODE": "token"}
        plain = _submit(token_env, head.dashboard_port, ["python", *entrypoint[1:]], head)
        assert plain.returncode == 1 and "decoy python" in plain.stdout, plain.stdout[-3000:]
        assert not out.exists()

        done = _submit(token_env, head.dashboard_port, entrypoint, head)
        assert done.returncode == 0, done.stdout[-5000:]
        assert "succeeded" in done.stdout
        assert "Running entrypoint for job" in done.stdout
        assert f"{sys.executable} jobs/qa.py" in done.stdout
        # The driver joined this head (not another Ray on the machine).
        assert "connected to the Ray cluster at" in done.stdout
        assert f":{head.gcs_port}" in done.stdout.split("connected to the Ray cluster at")[1]
        assert "2 ok" in done.stdout, done.stdout[-3000:]
        rows = read_results(str(out)).to_pylist()
        assert sorted(r["duration"] for r in rows) == pytest.approx([1.0, 1.5], abs=0.05)
        assert all(r["loudness_lufs"] is not None and r["desync_s"] is None for r in rows)

        # Stopping the head as documented (SIGTERM to `ray start --block`) ends all of it: the
        # processes seen under it and those naming its temp dir (the raylet, GCS, ...).
        assert len(head.seen) > 3 and len(naming(temp_dir)) > 1, (head.seen, naming(temp_dir))
        stragglers = stop_head(head)
        head = None
        assert not stragglers, f"left running after SIGTERM (then killed): {stragglers}"
    finally:
        try:
            if head is not None:
                stop_head(head)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
