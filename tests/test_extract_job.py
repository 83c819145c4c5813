"""The feature-extraction job on a real local Ray cluster, over real videos made here."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from video_factory import AudioSpec, write_text_file, write_video

from selva_core.pipeline import Pipeline, PipelineConfig
from selva_ray.extract import ExtractConfig, run_extract
from selva_ray.io.feature_schema import read_features, read_tensor
from selva_ray.io.output_dir import OutputDir, SettingsMismatchError

GOOD = {
    # name: (duration s, fps, size, audio, container codec)
    "dogs/a.mp4": (3.0, 25, (96, 64), AudioSpec(), None),
    "dogs/b.mov": (1.5, 30, (64, 64), None, None),
    "dogs/c.mkv": (9.0, 24, (80, 48), AudioSpec(codec="libopus", sample_rate=48000), None),
    "dogs/d.webm": (2.0, 25, (64, 48), None, "libvpx-vp9"),
    "dogs/e.avi": (2.0, 25, (64, 48), None, "mpeg4"),
    "dogs/f.mp4": (0.4, 25, (64, 48), None, None),
    "dogs/g.mp4": (5.0, 60, (160, 90), AudioSpec(sample_rate=44100, channels=1), None),
    "dogs/h.mov": (2.5, 30000 / 1001, (96, 54), None, None),
    "rain/i.mp4": (1.0, 25, (64, 48), None, None),
    "rain/j.mp4": (6.0, 25, (64, 48), AudioSpec(freq=220.0), None),
    "rain/k.mp4": (3.3, 24, (48, 48), None, None),
    "rain/l.mp4": (2.0, 50, (64, 48), None, None),
    "rain/m.mkv": (4.0, 25, (64, 48), AudioSpec(codec="flac", sample_rate=16000), None),
    "rain/n.mp4": (1.2, 15, (64, 48), None, None),
    "rain/o.mp4": (7.5, 25, (32, 32), None, None),
    "rain/p.mp4": (2.2, 25, (64, 48), AudioSpec(onset=1.0), None),
    "rain/q.mp4": (0.8, 25, (64, 48), None, None),
    "rain/r.mp4": (3.0, 12, (64, 48), None, None),
}
CORRUPT = ("rain/broken.mp4", "rain/truncated.mp4")


def make_catalog(root: Path) -> Path:
    for name, (duration, fps, size, audio, codec) in GOOD.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"codec": codec} if codec else {}
        write_video(root / name, duration=duration, fps=fps, size=size, audio=audio, **kwargs)
    write_text_file(root / CORRUPT[0])
    whole = write_video(root / "cut.tmp.mp4", duration=2.0, fps=25, size=(64, 48)).read_bytes()
    (root / "cut.tmp.mp4").unlink()
    (root / CORRUPT[1]).write_bytes(whole[: len(whole) // 3])
    (root / "prompts.txt").write_text(
        "# prompts for the test catalog\ndogs/a.mp4: a dog barks twice\nj.mp4: heavy rain\n"
    )
    return root


@pytest.fixture(scope="module")
def cluster(shared_ray):
    return shared_ray


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return make_catalog(tmp_path_factory.mktemp("catalog"))


def config(catalog: Path, output: Path, **kw) -> ExtractConfig:
    return ExtractConfig(
        input=str(catalog),
        output=str(output),
        variant="tiny",
        with_audio_latents=True,
        shard_size=5,
        batch_size=4,
        progress=False,
        # the test manifests point into another tmp folder; one row per video here (c.mkv is
        # 9 s: windows of long videos are tested in test_long_jobs.py)
        **{"allow_roots": ["/"], "window": 0.0, **kw},
    )


@pytest.fixture(scope="module")
def first_run(cluster, catalog, tmp_path_factory):
    output = tmp_path_factory.mktemp("features")
    summary = run_extract(config(catalog, output))
    return output, summary


def listing(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and "_ledger" not in p.parts and p.name != "_meta.json"
    }


def test_rows_are_the_good_clips_and_errors_the_corrupt_ones(first_run, catalog):
    output, summary = first_run
    assert (summary.ok, summary.failed, summary.skipped) == (len(GOOD), 2, 0)
    assert summary.exit_code(fail_on_error=False) == 0
    assert summary.exit_code(fail_on_error=True) == 1
    # everything failed: non-zero even without --fail-on-error
    from selva_ray.extract import ExtractSummary

    assert ExtractSummary("x", ok=0, failed=3).exit_code(fail_on_error=False) == 1
    table = read_features(str(output))
    assert sorted(table["source"].to_pylist()) == sorted(str(catalog / n) for n in GOOD)
    assert len(set(table["id"].to_pylist())) == len(GOOD)
    errors = pq.read_table(output / "errors")
    assert sorted(errors["source"].to_pylist()) == sorted(str(catalog / n) for n in CORRUPT)
    assert set(errors["stage"].to_pylist()) == {"decode"}
    assert all(m and "mp4" in m for m in errors["message"].to_pylist())
    # nothing else with a .parquet name anywhere in the folder
    parquet = sorted(str(p.relative_to(output)) for p in output.rglob("*.parquet"))
    assert all(p.startswith(("part-", "errors/part-")) for p in parquet)
    assert not list(output.rglob("*.tmp")) and not (output / "_staging").exists()


def test_schema_tensor_columns_and_lengths(first_run):
    output, _ = first_run
    table = read_features(str(output))
    import pyarrow as pa

    for name, shape in {"sync_f": (192, 64), "text_f": (77, 64), "latent_mean": (250, 20)}.items():
        field = table.schema.field(name)
        assert isinstance(field.type, pa.FixedShapeTensorType) and tuple(field.type.shape) == shape
        assert field.type.value_type == pa.float16()
    rows = {
        r["source"].split("catalog")[-1]: r
        for r in table.select(
            ["source", "duration", "sync_len", "latent_len", "has_audio", "padded", "prompt"]
        ).to_pylist()
    }
    c = rows[next(k for k in rows if k.endswith("dogs/c.mkv"))]
    assert c["duration"] == pytest.approx(8.0) and c["sync_len"] == 192 and c["latent_len"] == 250
    f = rows[next(k for k in rows if k.endswith("dogs/f.mp4"))]
    assert f["padded"] and f["sync_len"] == 8 and f["latent_len"] == 0 and not f["has_audio"]
    assert rows[next(k for k in rows if k.endswith("dogs/a.mp4"))]["prompt"] == "a dog barks twice"
    assert rows[next(k for k in rows if k.endswith("rain/j.mp4"))]["prompt"] == "heavy rain"
    assert rows[next(k for k in rows if k.endswith("rain/k.mp4"))]["prompt"] == "rain"
    meta = OutputDir(str(output)).read_meta()
    assert meta["schema_version"] == 1 and meta["tensors"]["sync_f"]["shape"] == [192, 64]
    assert meta["runs"][-1]["ok"] == len(GOOD)


def test_features_equal_the_single_process_path(first_run):
    """Same clip, same model: the distributed rows match selva_core within fp16 storage."""
    output, _ = first_run
    table = read_features(str(output))
    pipe = Pipeline(PipelineConfig("tiny", with_audio_encoder=True))
    for i in range(table.num_rows):
        row = table.slice(i, 1)
        ref = pipe.extract_features(
            row["source"][0].as_py(), row["prompt"][0].as_py(), with_audio_latents=True
        )
        got = {
            "sync_f": read_tensor(row, "sync_f")[0][: row["sync_len"][0].as_py()],
            "text_f": read_tensor(row, "text_f")[0],
        }
        want = {"sync_f": ref.sync_f, "text_f": ref.text_f}
        if ref.latent is not None:
            n = row["latent_len"][0].as_py()
            got["latent_mean"] = read_tensor(row, "latent_mean")[0][:n]
            want["latent_mean"] = ref.latent.mean
        assert row["duration"][0].as_py() == pytest.approx(ref.duration)
        for name in got:
            assert got[name].shape == want[name].shape, name
            peak = (got[name] - want[name]).abs().max() / want[name].abs().max()
            assert peak < 1e-3, f"{row['source'][0]} {name}: {peak:.2e}"


def test_rerun_writes_nothing_new(first_run, catalog):
    output, _ = first_run
    before = listing(output)
    summary = run_extract(config(catalog, output))
    assert (summary.ok, summary.failed, summary.skipped) == (0, 0, len(GOOD))
    assert summary.failed_before == 2 and "2 failed before" in summary.lines()[0]
    assert listing(output) == before


def test_rerun_after_deleting_part_files_restores_exactly_those_ids(first_run, catalog):
    output, _ = first_run
    all_ids = set(read_features(str(output))["id"].to_pylist())
    parts = sorted(output.glob("part-*.parquet"))
    victims = parts[:2]
    lost = set()
    for p in victims:
        lost |= set(pq.read_table(p, columns=["id"])["id"].to_pylist())
        p.unlink()
    assert lost and set(read_features(str(output))["id"].to_pylist()) == all_ids - lost
    before = set(output.glob("part-*.parquet"))
    summary = run_extract(config(catalog, output))
    assert summary.ok == len(lost) and summary.failed == 0
    new_files = set(output.glob("part-*.parquet")) - before
    new_ids = set()
    for p in new_files:
        new_ids |= set(pq.read_table(p, columns=["id"])["id"].to_pylist())
    assert new_ids == lost
    assert set(read_features(str(output))["id"].to_pylist()) == all_ids


def test_retry_errors_redoes_only_the_failed_clips(first_run, catalog):
    output, _ = first_run
    summary = run_extract(config(catalog, output, retry_errors=True))
    assert (summary.ok, summary.failed) == (0, 2)
    assert pq.read_table(output / "errors").num_rows == 2


def test_other_settings_are_refused(first_run, catalog):
    output, _ = first_run
    with pytest.raises(SettingsMismatchError, match="max_duration"):
        run_extract(config(catalog, output, max_duration=5.0))


def test_interrupted_run_loses_only_unwritten_blocks(cluster, catalog, tmp_path):
    """Fragments fully staged by a run that died are committed on the next start; partial
    writes are dropped and those clips are done again."""
    from selva_ray.io.rows import error_table

    output = tmp_path / "out"
    manifest = tmp_path / "two.csv"
    manifest.write_text(
        f"video,prompt\n{catalog / 'dogs/a.mp4'},a dog\n{catalog / 'rain/i.mp4'},rain\n"
    )
    first = run_extract(config(manifest, output))
    assert first.ok == 2
    out = OutputDir(str(output))
    # pretend a run died: one clip's committed file goes back to staging, plus a torn write
    part = sorted(output.glob("part-*.parquet"))[0]
    staged = output / "_staging" / "dead-00000"
    staged.mkdir(parents=True)
    part.rename(staged / "features-abc.frag")
    (staged / ".features-def.tmp").write_bytes(b"torn")
    out.stage(
        "dead-00001",
        "errors",
        error_table(
            [
                {
                    "id": "x",
                    "source": "s",
                    "row": 0,
                    "stage": "decode",
                    "error_type": "E",
                    "message": "m",
                }
            ],
            "h",
        ),
    )
    summary = run_extract(config(manifest, output))
    assert summary.ok == 0  # the staged fragment counted as done: nothing recomputed
    assert not (output / "_staging").exists()
    assert len(read_features(str(output))) == 2


def test_manifest_rows_with_problems_go_to_the_error_table(cluster, catalog, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            [
                f'{{"video": "{catalog / "dogs/a.mp4"}", "prompt": "bark", "id": "clip-1"}}',
                f'{{"video": "{catalog / "dogs/b.mov"}", "prompt": "", "id": "clip-2"}}',
                f'{{"video": "{catalog / "dogs/b.mov"}", "prompt": "x", "id": "clip-3", '
                '"duration": 30}',
                '{"video": "", "prompt": "x"}',
            ]
        )
    )
    output = tmp_path / "out"
    summary = run_extract(config(manifest, output))
    assert summary.ok == 1 and summary.failed == 3
    errors = pq.read_table(output / "errors").to_pylist()
    by_id = {e["id"]: e for e in errors}
    # caught when the catalog is read, before its video is decoded (issue 24)
    assert by_id["clip-2"]["stage"] == "catalog" and "empty prompt" in by_id["clip-2"]["message"]
    assert by_id["clip-3"]["stage"] == "catalog" and "duration" in by_id["clip-3"]["message"]
    assert by_id["row-3"]["stage"] == "catalog"
    assert read_features(str(output))["id"].to_pylist() == ["clip-1"]


def test_cli_summary_and_exit_codes(cluster, catalog, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video,prompt\n{catalog / 'dogs/a.mp4'},bark\n{catalog / CORRUPT[0]},x\n")
    args = [
        sys.executable,
        "-m",
        "selva_ray.cli",
        "extract",
        "--input",
        str(manifest),
        "--variant",
        "tiny",
        "--ray-address",
        cluster,
        "--no-progress",
        "--allow-root",
        "/",
    ]
    out = subprocess.run(
        args + ["--output", str(tmp_path / "a"), "--fail-on-error"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert "1 ok, 1 failed (decode: 1), 0 skipped" in out.stdout
    out = subprocess.run(
        args + ["--output", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "clips/s" in out.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "selva_ray.cli",
            "extract",
            "--input",
            str(tmp_path / "nowhere"),
            "--output",
            str(tmp_path / "c"),
            "--variant",
            "tiny",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_a_changed_prompt_redoes_that_clip_and_replaces_its_row(cluster, catalog, tmp_path):
    output = tmp_path / "out"
    manifest = tmp_path / "m.csv"
    a, i = catalog / "dogs/a.mp4", catalog / "rain/i.mp4"
    manifest.write_text(f"id,video,prompt,seed\nA,{a},a dog,1\nI,{i},rain,2\nX,{a},x,1e30\n")
    first = run_extract(config(manifest, output))
    assert (first.ok, first.failed) == (2, 1)  # the huge seed is an error row, not a crash
    errors = pq.read_table(output / "errors").to_pylist()
    assert errors[0]["id"] == "X" and "column 'seed'" in errors[0]["message"]
    old_text = read_tensor(read_features(str(output)).filter(pa_equal("id", "A")), "text_f")

    manifest.write_text(f"id,video,prompt,seed\nA,{a},a dog barking,1\nI,{i},rain,2\nX,{a},x,3\n")
    second = run_extract(config(manifest, output))
    assert (second.ok, second.failed, second.skipped, second.redone) == (2, 0, 1, 2)
    table = read_features(str(output))
    assert sorted(table["id"].to_pylist()) == ["A", "I", "X"]  # one row per id
    row = table.filter(pa_equal("id", "A"))
    assert row["prompt"].to_pylist() == ["a dog barking"]
    assert not read_tensor(row, "text_f").equal(old_text)
    assert not (output / "errors").exists() or pq.read_table(output / "errors").num_rows == 0
    assert "errors in" not in second.lines()[2]  # no errors folder is named when there is none


def test_a_video_rewritten_in_place_is_extracted_again(cluster, tmp_path):
    """Same path, same catalog row, new file (size and mtime differ): a rerun redoes it."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for name, seed in (("a.mp4", 0), ("b.mp4", 1)):
        write_video(folder / name, duration=1.0, fps=25, size=(48, 32), seed=seed)
    output = tmp_path / "out"
    run = config(folder, output)
    first = run_extract(run)
    assert (first.ok, first.failed) == (2, 0)
    old = read_features(str(output))
    write_video(folder / "a.mp4", duration=1.0, fps=25, size=(48, 32), seed=7, pattern="noise")
    second = run_extract(run)
    assert (second.ok, second.skipped, second.redone) == (1, 1, 1)
    new = read_features(str(output))
    assert sorted(new["id"].to_pylist()) == sorted(old["id"].to_pylist())  # one row per id
    a_id = old.filter(pa_equal("source", str(folder / "a.mp4")))["id"][0].as_py()
    a_old, a_new = (t.filter(pa_equal("id", a_id)) for t in (old, new))
    assert a_new["input_hash"][0] != a_old["input_hash"][0]
    assert not read_tensor(a_new, "sync_f").equal(read_tensor(a_old, "sync_f"))


def pa_equal(column: str, value: str):
    import pyarrow.compute as pc

    return pc.field(column) == value


def test_a_second_run_into_a_busy_folder_is_refused(cluster, catalog, tmp_path):
    import threading

    from selva_ray.io.output_dir import LEASE, OutputBusyError

    output = tmp_path / "out"
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video,prompt\n{catalog / 'dogs/a.mp4'},a dog\n")
    result = {}
    first = threading.Thread(
        target=lambda: result.setdefault("summary", run_extract(config(manifest, output)))
    )
    first.start()
    deadline = time.time() + 120
    while not list((output / LEASE).glob("*.json")) and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(OutputBusyError, match="in use by another run"):
        run_extract(config(manifest, output))
    first.join()
    assert result["summary"].ok == 1
    assert read_features(str(output))["id"].to_pylist() == [result_id(output)]


def result_id(output: Path) -> str:
    ids = read_features(str(output))["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 1
    return ids[0]
