"""Every job on object storage, against S3-compatible servers (moto) on 127.0.0.1.

Two servers that share nothing (tests/s3_server.py): ENV (its endpoint in AWS_ENDPOINT_URL, in
this process and so in the Ray workers it starts) and URI (reached only through a URI's query,
`s3://b/k?endpoint_override=127.0.0.1:PORT&scheme=http`). A job whose workers dropped the query
would ask ENV for URI's buckets, which ENV does not have, and fail its clips. One chain runs
extract (URI) -> train (--features on URI) -> generate --mux (features on URI, output on ENV)
-> qa (the dubbed videos on ENV) -> inspect and report of the s3:// run folders.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from video_factory import AudioSpec, write_video

from selva_ray.cli import main

CLIPS = 3
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"no S3 server on 127.0.0.1:{port}")


class Servers:
    """ENV and URI, each a process of its own (tests/s3_server.py)."""

    def __init__(self) -> None:
        self.env_port, self.uri_port = free_port(), free_port()
        script = str(Path(__file__).with_name("s3_server.py"))
        self.processes = [
            subprocess.Popen(
                [sys.executable, script, str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in (self.env_port, self.uri_port)
        ]
        for port in (self.env_port, self.uri_port):
            wait_listening(port)

    @property
    def query(self) -> str:
        return f"endpoint_override=127.0.0.1:{self.uri_port}&scheme=http"

    def uri(self, bucket_path: str) -> str:
        """`s3://bucket/path` on the URI server, its endpoint in the query."""
        return f"s3://{bucket_path}?{self.query}"

    def fs(self, on_uri: bool) -> pafs.S3FileSystem:
        """The test's own view of a server (it may make buckets; the jobs never do)."""
        port = self.uri_port if on_uri else self.env_port
        return pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True
        )

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def servers():
    old = {k: os.environ.get(k) for k in [*CREDENTIALS, "AWS_ENDPOINT_URL"]}
    s = Servers()
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=f"http://127.0.0.1:{s.env_port}")
    import ray

    if ray.is_initialized():  # Ray workers take the environment their cluster started with
        ray.shutdown()
    try:
        yield s
    finally:
        s.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def media(servers: Servers, tmp_path_factory) -> str:
    """CLIPS short videos with sound in s3://media/dog_barking/ on the URI server; the catalog
    folder's URI."""
    local = tmp_path_factory.mktemp("media")
    fs = servers.fs(on_uri=True)
    fs.create_dir("media")
    fs.create_dir("feats")
    for i in range(CLIPS):
        path = write_video(
            local / f"clip{i}.mp4",
            duration=1.0 + 0.25 * i,
            fps=25,
            size=(64, 48),
            audio=AudioSpec(freq=300.0 + 100 * i, sample_rate=16000, channels=1),
        )
        with open(path, "rb") as src, fs.open_output_stream(f"media/dog_barking/{path.name}") as d:
            d.write(src.read())
    servers.fs(on_uri=False).create_dir("out")
    return servers.uri("media/dog_barking")


def table(fs: pafs.FileSystem, folder: str) -> list[dict]:
    files = [
        i.path
        for i in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        if i.base_name.endswith(".parquet")
    ]
    return [row for f in sorted(files) for row in pq.read_table(f, filesystem=fs).to_pylist()]


@pytest.fixture(scope="module")
def features(servers: Servers, media: str, shared_ray) -> str:
    """extract, catalog and features on the URI server: the features folder's URI."""
    feats = servers.uri("feats/tiny")
    code = main(
        ["extract", "--input", media, "--output", feats, "--variant", "tiny"]
        + ["--with-audio-latents", "--max-duration", "2", "--shard-size", "2", "--no-progress"]
    )
    assert code == 0
    return feats


@pytest.fixture(scope="module")
def generated(features: str) -> str:
    """generate --mux from the URI server's features into s3://out/gen on the ENV server."""
    code = main(
        ["generate", "--input", features, "--output", "s3://out/gen", "--variant", "tiny"]
        + ["--steps", "2", "--mux", "--shard-size", "2", "--no-progress"]
    )
    assert code == 0
    return "s3://out/gen"


def test_extract_reads_and_writes_through_the_uri_endpoint(servers: Servers, features):
    fs = servers.fs(on_uri=True)
    rows = table(fs, "feats/tiny")
    assert len(rows) == CLIPS and not table(fs, "feats/tiny/errors")
    # each clip keeps the endpoint it was listed with; its id does not depend on it
    for row in rows:
        assert row["source"].startswith("s3://media/dog_barking/clip")
        assert row["source"].endswith(f".mp4?{servers.query}")
    assert servers.fs(on_uri=False).get_file_info("feats").type == pafs.FileType.NotFound


def test_train_reads_features_through_the_uri_endpoint(features, tmp_path):
    run = tmp_path / "run"
    code = main(
        ["train", "--features", features, "--output", str(run), "--steps", "2"]
        + ["--batch-size", "2", "--val-fraction", "0", "--eval-every", "100"]
        + ["--save-every", "2", "--rank", "4", "--preview-clips", "0", "--no-surgery"]
    )
    assert code == 0
    assert list(run.glob("**/*.safetensors")), "no adapter written"


def test_generate_mux_reads_sources_through_their_endpoint(servers: Servers, generated):
    fs = servers.fs(on_uri=False)
    rows = table(fs, "out/gen/results")
    assert len(rows) == CLIPS and not table(fs, "out/gen/errors")
    for row in rows:
        assert row["status"] == "ok" and row["video_path"].startswith("video/")
        assert fs.get_file_info(f"out/gen/{row['audio_path']}").size > 1000
        assert fs.get_file_info(f"out/gen/{row['video_path']}").size > 1000


def test_qa_of_the_dubbed_videos(servers: Servers, generated):
    code = main(
        ["qa", "--input", f"{generated}/video", "--output", "s3://out/qa", "--no-desync"]
        + ["--no-progress"]
    )
    assert code == 0
    rows = table(servers.fs(on_uri=False), "out/qa/results")
    assert len(rows) == CLIPS and all(r["status"] == "ok" for r in rows)
    assert all(r["source"].startswith("s3://out/gen/video/") for r in rows), rows


def test_inspect_and_report_read_s3_run_folders(generated, tmp_path, capsys):
    capsys.readouterr()
    assert main(["inspect", "s3://out/gen"]) == 0
    assert capsys.readouterr().out.startswith(f"s3://out/gen: {CLIPS} clips ok")
    page = tmp_path / "page"
    assert main(["report", "s3://out/gen", "--out", str(page)]) == 0
    html = (page / "index.html").read_text()
    # clips are named by their file (not with the endpoint query their source keeps), and
    # each track was fetched from the bucket for its spectrogram
    assert all(f"<b>clip{i}.mp4</b>" in html for i in range(CLIPS))
    assert len(re.findall(r"<img[^>]* src='spec/", html)) == CLIPS


def test_a_missing_output_bucket_is_one_line(servers: Servers, media, capsys):
    for form in ("s3://nobucket/gen", servers.uri("nobucket/gen")):
        capsys.readouterr()
        assert main(["qa", "--input", media, "--output", form, "--no-desync"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "bucket 'nobucket' does not exist" in err and "aws s3 mb s3://nobucket" in err


def test_credentials_in_a_uri_are_refused(servers: Servers, capsys):
    uri = "s3://media/dog_barking?secret_key=hush&access_key=me"
    assert main(["qa", "--input", uri, "--output", "s3://out/x", "--no-desync"]) == 2
    err = capsys.readouterr().err.strip()
    assert "AWS_SECRET_ACCESS_KEY" in err and "hush" not in err and len(err.splitlines()) == 1


# ---- a node lost mid-generation, s3 in and out --------------------------------------------------


@pytest.mark.slow
def test_generation_on_s3_survives_a_lost_node(servers: Servers, features):
    from cluster_support import three_nodes, wait_for

    from selva_ray.generate import GenerateConfig, run_generate

    fs = servers.fs(on_uri=False)

    def ledgers() -> int:
        infos = fs.get_file_info(pafs.FileSelector("out/lost/_ledger", allow_not_found=True))
        return len([i for i in infos if i.base_name.endswith(".json")])

    config = GenerateConfig(
        input=features,
        output="s3://out/lost",
        variant="tiny",
        steps=25,
        batch_size=1,
        shard_size=1,
        actors=2,
        progress=False,
    )
    from test_faults import joined, run_in_thread

    with three_nodes() as nodes:
        thread, result = run_in_thread(lambda: run_generate(config))
        assert wait_for(lambda: ledgers() > 0, timeout=300)
        before = ledgers()
        nodes.lose()
        try:
            first = joined(thread, result, timeout=600)
        finally:
            nodes.restore()
        assert 1 <= before < CLIPS and first.failed == 0
        rerun = run_generate(config)
        assert rerun.ok == 0 and rerun.skipped == CLIPS
    rows = table(fs, "out/lost/results")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == CLIPS
    audio = fs.get_file_info(pafs.FileSelector("out/lost/audio"))
    assert sorted(i.path.removeprefix("out/lost/") for i in audio) == sorted(
        r["audio_path"] for r in rows
    )


def test_a_manifest_passes_its_endpoint_to_its_rows(servers: Servers, media):
    """Rows of the manifest's own kind reach the manifest's server; a row with its own query
    keeps it; ids and input hashes do not depend on the query."""
    from selva_ray.io.catalog import clip_id, read_catalog

    fs = servers.fs(on_uri=True)
    other = "endpoint_override=127.0.0.1:1&scheme=http"
    rows = [
        "video,prompt,id",
        "dog_barking/clip0.mp4,a,relative",
        "s3://media/dog_barking/clip1.mp4,b,absolute",
        f"s3://media/dog_barking/clip2.mp4?{other},c,own",
        "dog_barking/clip0.mp4,d,",
    ]
    with fs.open_output_stream("media/clips.csv") as f:
        f.write(("\n".join(rows) + "\n").encode())
    records, problems = read_catalog(servers.uri("media/clips.csv"))
    assert not problems
    by_id = {r.id: r.source for r in records}
    assert by_id["relative"] == servers.uri("media/dog_barking/clip0.mp4")
    assert by_id["absolute"] == servers.uri("media/dog_barking/clip1.mp4")
    assert by_id["own"] == f"s3://media/dog_barking/clip2.mp4?{other}"
    unnamed = next(r for r in records if r.prompt == "d")
    assert unnamed.id == clip_id("s3://media/dog_barking/clip0.mp4", 0.0, None)
    plain = type(unnamed)(id=unnamed.id, source="s3://media/dog_barking/clip0.mp4", prompt="d")
    assert unnamed.input_hash() == plain.input_hash()


def test_summaries_name_object_store_folders_with_their_endpoint():
    """The summary's folders, copied from the terminal, reach the same server: the endpoint
    query follows the folder instead of being glued into its name."""
    from selva_ray.extract.job import ExtractSummary
    from selva_ray.generate.config import GenerateSummary
    from selva_ray.qa.job import QASummary

    out = "s3://out/gen?endpoint_override=127.0.0.1:5055&scheme=http"
    query = "?endpoint_override=127.0.0.1:5055&scheme=http"
    for summary in (GenerateSummary(output=out, has_errors_folder=True), QASummary(output=out)):
        where = summary.lines()[-1]
        assert where.startswith(f"results in s3://out/gen/results/{query}"), where
    where = GenerateSummary(output=out, has_errors_folder=True).lines()[-1]
    assert where.endswith(f"errors in s3://out/gen/errors/{query}"), where
    where = ExtractSummary(output=out, has_errors_folder=True).lines()[-1]
    assert where == f"features in {out}, errors in s3://out/gen/errors/{query}", where
    assert GenerateSummary(output="dubbed/").lines()[-1] == "results in dubbed/results/"
