"""Feature extraction across several Ray nodes on one machine, losing a node mid-run."""

import threading
import time

import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster
from video_factory import write_video

from selva_ray.extract import ExtractConfig, run_extract
from selva_ray.io.feature_schema import read_features

STORE = 200 * 1024 * 1024


def test_every_clip_exactly_once_when_a_worker_node_dies(tmp_path):
    catalog = tmp_path / "catalog" / "engine_hum"
    catalog.mkdir(parents=True)
    names = [f"clip{i:02d}.mp4" for i in range(12)]
    for i, name in enumerate(names):
        write_video(catalog / name, duration=1.0 + 0.25 * (i % 4), fps=25, size=(64, 48))

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": STORE}
    )
    worker = cluster.add_node(num_cpus=2, object_store_memory=STORE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        output = tmp_path / "features"
        result = {}
        config = ExtractConfig(
            input=str(catalog.parent),
            output=str(output),
            variant="tiny",
            shard_size=2,
            batch_size=2,
            actors=2,
            progress=False,
        )
        job = threading.Thread(target=lambda: result.update(summary=run_extract(config)))
        job.start()
        deadline = time.time() + 120
        while not list((output / "_ledger").glob("*.json")) and time.time() < deadline:
            time.sleep(0.2)
        committed_before_loss = len(list((output / "_ledger").glob("*.json")))
        cluster.remove_node(worker)
        job.join(timeout=300)
        # the node died with work left: 12 clips in shards of 2 -> 6 shards
        assert 1 <= committed_before_loss < 6, committed_before_loss
        assert not job.is_alive(), "the job did not finish after losing a node"
        summary = result["summary"]
        ids = read_features(str(output))["id"].to_pylist()
        assert len(ids) == len(set(ids)) == len(names)  # exactly once
        assert summary.ok + summary.skipped <= len(names) and summary.failed == 0
        assert not (output / "errors").exists() or pq.read_table(output / "errors").num_rows == 0
    finally:
        ray.shutdown()
        cluster.shutdown()
