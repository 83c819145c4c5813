"""Generation across several Ray nodes on one machine, losing a node mid-run, then a rerun."""

import threading
import time

import av
import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster
from video_factory import write_video

from selva_ray.extract import ExtractConfig, run_extract
from selva_ray.generate import GenerateConfig, run_generate

STORE = 200 * 1024 * 1024


def decodes(path) -> bool:
    try:
        with av.open(str(path)) as c:
            stream = c.streams.audio[0]
            return sum(f.samples for f in c.decode(stream)) > 0
    except Exception:  # noqa: BLE001
        return False


def test_every_clip_exactly_once_when_a_worker_node_dies(tmp_path):
    catalog = tmp_path / "catalog" / "engine_hum"
    catalog.mkdir(parents=True)
    names = [f"clip{i:02d}.mp4" for i in range(12)]
    for i, name in enumerate(names):
        write_video(catalog / name, duration=1.0 + 0.5 * (i % 2), fps=25, size=(64, 48))

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": STORE}
    )
    worker = cluster.add_node(num_cpus=2, object_store_memory=STORE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        features = tmp_path / "features"
        run_extract(
            ExtractConfig(
                input=str(catalog.parent),
                output=str(features),
                variant="tiny",
                batch_size=6,
                progress=False,
            )
        )
        output = tmp_path / "generated"
        config = GenerateConfig(
            input=str(features),
            output=str(output),
            variant="tiny",
            steps=25,  # enough work per shard that the node is lost mid-run
            batch_size=1,
            shard_size=2,
            actors=2,
            progress=False,
        )
        result = {}
        job = threading.Thread(target=lambda: result.update(summary=run_generate(config)))
        job.start()
        deadline = time.time() + 120
        while not list((output / "_ledger").glob("*.json")) and time.time() < deadline:
            time.sleep(0.2)
        committed_before_loss = len(list((output / "_ledger").glob("*.json")))
        cluster.remove_node(worker)
        job.join(timeout=300)
        assert 1 <= committed_before_loss < 6, committed_before_loss
        assert not job.is_alive(), "the job did not finish after losing a node"
        first = result["summary"]
        assert first.failed == 0

        rerun = run_generate(config)
        assert rerun.failed == 0
        assert rerun.ok + rerun.skipped == len(names)
        assert first.ok + rerun.ok <= len(names)  # no clip generated twice for the record
        rows = pq.read_table(output / "results").to_pylist()
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) == len(names)  # exactly once
        assert not (output / "errors").exists()
        finals = sorted(p for p in (output / "audio").iterdir() if not p.name.startswith("."))
        assert [p.relative_to(output).as_posix() for p in finals] == sorted(
            r["audio_path"] for r in rows
        )
        assert all(decodes(p) for p in finals)
    finally:
        ray.shutdown()
        cluster.shutdown()
