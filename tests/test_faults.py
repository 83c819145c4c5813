"""Faults on a 3-node `ray.cluster_utils.Cluster` (tests/cluster_support.py): a worker node lost
mid-extraction, mid-generation and mid-training; the driver killed with SIGKILL mid-job and run
again; a second run into a folder that a run holds. Every clip comes out exactly once, no file
under a final name is truncated, training ends with every step recorded once.

One cluster and one catalog serve the whole module: the extraction that loses a node makes the
features (with audio latents) that the generation and training tests read.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest
from cluster_support import ThreeNodes, ledger_count, three_nodes, wait_for
from video_factory import AudioSpec, write_video

from selva_ray.extract import ExtractConfig, run_extract
from selva_ray.generate import GenerateConfig, run_generate
from selva_ray.io.feature_schema import read_features
from selva_ray.io.output_dir import LEASE, STAGING, OutputDir
from selva_ray.train import TrainConfig, run_train

CLIPS = 12
SHARD = 2  # clips per shard: 6 shards, so a fault lands between commits
MAX_DURATION = 2.0
TRAIN_STEPS = 12


@pytest.fixture(scope="module")
def nodes():
    with three_nodes() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    folder = root / "engine_hum"
    folder.mkdir()
    for i in range(CLIPS):
        write_video(
            folder / f"clip{i:02d}.mp4",
            duration=1.0 + 0.25 * (i % 4),
            fps=25,
            size=(64, 48),
            audio=AudioSpec(freq=200.0 + 100 * (i % 4), sample_rate=16000, channels=1),
        )
    return root


def extract_config(catalog: Path, output: Path, **kw) -> ExtractConfig:
    return ExtractConfig(
        input=str(catalog),
        output=str(output),
        variant="tiny",
        with_audio_latents=True,
        max_duration=MAX_DURATION,
        shard_size=SHARD,
        batch_size=2,
        actors=2,
        progress=False,
        **kw,
    )


def generate_config(features: Path, output: Path, **kw) -> GenerateConfig:
    return GenerateConfig(
        input=str(features),
        output=str(output),
        variant="tiny",
        steps=25,  # enough work per shard that a fault lands mid-run
        batch_size=1,
        shard_size=SHARD,
        actors=2,
        progress=False,
        **kw,
    )


def run_in_thread(fn) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


def joined(thread: threading.Thread, result: dict, timeout: float):
    thread.join(timeout)
    assert not thread.is_alive(), "the job did not finish after the fault"
    if "error" in result:
        raise result["error"]
    return result["value"]


def decodes(path: Path) -> bool:
    """A whole audio file: it opens and yields samples."""
    try:
        with av.open(str(path)) as c:
            return sum(f.samples for f in c.decode(c.streams.audio[0])) > 0
    except Exception:  # noqa: BLE001
        return False


def assert_features_once(output: Path) -> None:
    """Every clip exactly once; every part file whole; nothing left staged or leased."""
    for part in output.glob("part-*.parquet"):
        pq.read_table(part)  # a truncated file raises
    ids = read_features(str(output))["id"].to_pylist()
    assert len(ids) == len(set(ids)) == CLIPS
    assert not (output / "errors").exists() or pq.read_table(output / "errors").num_rows == 0
    assert not (output / STAGING).exists()
    assert not list((output / LEASE).glob("*.json"))


def assert_results_once(output: Path) -> None:
    """Every clip exactly once in the results and once on disk, every track whole."""
    rows = pq.read_table(output / "results").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == CLIPS
    assert not (output / "errors").exists()
    files = sorted((output / "audio").iterdir())
    assert [p.relative_to(output).as_posix() for p in files] == sorted(
        r["audio_path"] for r in rows
    ), "a partial or orphan file is left in audio/"
    assert all(decodes(p) for p in files)
    assert not (output / STAGING).exists()
    assert not list((output / LEASE).glob("*.json"))


# ---- a worker node lost mid-job ---------------------------------------------------------------


@pytest.fixture(scope="module")
def features(nodes: ThreeNodes, catalog, tmp_path_factory):
    """Extraction that loses a worker node once the first shard is committed."""
    output = tmp_path_factory.mktemp("features")
    thread, result = run_in_thread(lambda: run_extract(extract_config(catalog, output)))
    wait_for(lambda: ledger_count(output) > 0, timeout=600)
    committed_before_loss = ledger_count(output)
    nodes.lose()
    try:
        summary = joined(thread, result, timeout=900)
    finally:
        nodes.restore()
    return output, summary, committed_before_loss


def test_extraction_survives_a_lost_node(features):
    output, summary, committed_before_loss = features
    assert 1 <= committed_before_loss < CLIPS // SHARD, committed_before_loss  # mid-run
    assert summary.failed == 0 and summary.ok == CLIPS
    assert_features_once(output)


def test_generation_survives_a_lost_node(nodes: ThreeNodes, features, tmp_path):
    feats = features[0]
    output = tmp_path / "generated"
    config = generate_config(feats, output)
    thread, result = run_in_thread(lambda: run_generate(config))
    wait_for(lambda: ledger_count(output) > 0, timeout=600)
    committed_before_loss = ledger_count(output)
    nodes.lose()
    try:
        first = joined(thread, result, timeout=900)
    finally:
        nodes.restore()
    assert 1 <= committed_before_loss < CLIPS // SHARD, committed_before_loss
    assert first.failed == 0

    rerun = run_generate(config)  # nothing left to do: every clip is there once
    assert rerun.failed == 0 and rerun.ok == 0 and rerun.skipped == CLIPS
    assert first.ok == CLIPS
    assert_results_once(output)


def test_training_survives_a_lost_worker_node(nodes: ThreeNodes, features, tmp_path):
    """Two training workers; the node of one of them dies after the first checkpoint. The
    group restarts from that checkpoint and ends with every step once."""
    import ray.util.state

    run = tmp_path / "run"
    config = TrainConfig(
        features=str(features[0]),
        output=str(run),
        workers=2,
        rank=4,
        batch_size=4,
        steps=TRAIN_STEPS,
        save_every=3,
        eval_every=TRAIN_STEPS,
        preview_clips=0,
        surgery=False,
        val_fraction=0.25,
        max_failures=2,
        seed=3,
        progress_every_s=1e9,
    )
    thread, result = run_in_thread(lambda: run_train(config))
    first = run / "checkpoints" / "step_000003" / "state.pt"
    assert wait_for(first.exists, timeout=600, step=0.05), "no checkpoint was written"

    def worker_nodes() -> list:
        actors = ray.util.state.list_actors(
            address=nodes.address,  # never another Ray instance of this machine
            filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        )
        return [n for a in actors if (n := nodes.node_of(a.node_id)) is not None]

    hosts = worker_nodes()
    assert hosts, "no training worker runs on a worker node"
    finished_before_loss = (run / "summary.json").exists()
    nodes.lose(hosts[0])
    try:
        summary = joined(thread, result, timeout=900)
    finally:
        nodes.restore()
    assert not finished_before_loss, "training ended before the node was lost"
    assert summary.status == "complete" and summary.steps == TRAIN_STEPS
    resumed = summary.details["resumed_from"]
    assert resumed and all(s > 0 and s % 3 == 0 for s in resumed), resumed
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r.get("loss") is not None]
    assert steps == list(range(1, TRAIN_STEPS + 1))  # each step recorded once, in order
    assert (run / "adapter.safetensors").exists()
    assert not list((run / LEASE).glob("*.json"))


# ---- the driver killed (SIGKILL) mid-job, then run again ---------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "selva_ray.cli", *args]


def kill_driver_after_first_commit(command: list[str], output: Path) -> int:
    """Start the driver as its own process, SIGKILL it once a shard is committed; the number
    of shards it committed."""
    driver = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ)
    )
    try:
        started = wait_for(lambda: ledger_count(output) > 0 or driver.poll() is not None, 600)
        assert started and driver.poll() is None, (
            f"driver ended (status {driver.poll()}) before committing a shard: "
            f"{driver.stderr.read().decode()[-2000:]}"
        )
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait()
        driver.stderr.close()
    assert driver.returncode == -signal.SIGKILL
    assert list((output / LEASE).glob("*.json")), "the killed driver's lease should be left"
    return ledger_count(output)


def test_extraction_driver_killed_and_rerun(nodes: ThreeNodes, catalog, tmp_path):
    output = tmp_path / "features"
    command = cli(
        "extract",
        *("--input", str(catalog), "--output", str(output), "--variant", "tiny"),
        *("--with-audio-latents", "--max-duration", str(MAX_DURATION)),
        *("--shard-size", str(SHARD), "--batch-size", "2", "--actors", "2"),
        *("--ray-address", nodes.address, "--no-progress"),
    )
    committed = kill_driver_after_first_commit(command, output)
    assert 1 <= committed < CLIPS // SHARD, committed
    before = len(OutputDir(str(output)).finished_ids())
    # the rerun takes over the dead driver's lease at once (its process is gone)
    summary = run_extract(extract_config(catalog, output, ray_address=nodes.address))
    assert summary.failed == 0 and summary.ok + summary.skipped == CLIPS
    assert summary.skipped >= before >= SHARD  # committed work is kept, not redone
    assert_features_once(output)


def test_generation_driver_killed_and_rerun(nodes: ThreeNodes, features, tmp_path):
    feats = features[0]
    output = tmp_path / "generated"
    command = cli(
        "generate",
        *("--input", str(feats), "--output", str(output), "--variant", "tiny"),
        *("--steps", "25", "--batch-size", "1", "--shard-size", str(SHARD), "--actors", "2"),
        *("--ray-address", nodes.address, "--no-progress"),
    )
    committed = kill_driver_after_first_commit(command, output)
    assert 1 <= committed < CLIPS // SHARD, committed
    before = len(OutputDir(str(output), kind="results").finished_ids())
    summary = run_generate(generate_config(feats, output, ray_address=nodes.address))
    assert summary.failed == 0 and summary.ok + summary.skipped == CLIPS
    assert summary.skipped >= before >= SHARD
    assert_results_once(output)


# ---- one run per folder ------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["extract", "generate", "qa", "train"])
def test_a_second_run_into_a_held_folder_is_refused(job, features, catalog, tmp_path, capsys):
    """The folder's lease is held (here by hand, as a live run holds it): the command exits 2
    with one line naming the holder, before it writes anything or starts work."""
    from selva_ray.cli import main

    output = tmp_path / "out"
    args = {
        "extract": ["extract", "--input", str(catalog), "--output", str(output)],
        "generate": ["generate", "--input", str(features[0]), "--output", str(output)],
        "qa": ["qa", "--input", str(catalog), "--output", str(output), "--no-desync"],
        "train": ["train", "--features", str(features[0]), "--output", str(output)],
    }[job]
    if job in ("extract", "generate"):
        args += ["--variant", "tiny"]
    lease = OutputDir(str(output)).acquire_lease()
    try:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "in use by another run" in err, err
        assert f"pid {os.getpid()}" in err and lease.token in err
        assert sorted(p.name for p in output.iterdir()) == [LEASE]  # nothing else written
    finally:
        lease.release()
