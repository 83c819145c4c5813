"""The generation job on a real local Ray cluster, over real videos made here (`tiny` model).

Several runs share one catalog; each waveform comparison is between runs that differ in one
respect (batching and actors, input kind, adapter strength). The catalog run also scores every
track (QA metrics, DeSync with the tiny Synchformer, flags against a thresholds file) and is
read back by `report` and `inspect`; the other runs skip DeSync to save time.
"""

import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from video_factory import AudioSpec, write_text_file, write_video

from selva_core.qa import QAThresholds, clip_metrics, qa_flags
from selva_core.video.decode import decode_clip
from selva_core.weights import MissingWeightsError
from selva_ray import runtime
from selva_ray.cli import main
from selva_ray.extract import ExtractConfig, run_extract
from selva_ray.generate import GenerateConfig, GenerateInputError, run_generate
from selva_ray.generate.adapters import parse_adapter
from selva_ray.generate.audio import loudness, measure, normalise, true_peak
from selva_ray.generate.qa_stage import qa_settings
from selva_ray.io.output_dir import OutputDir, SettingsMismatchError
from selva_ray.io.results_schema import RESULTS_SCHEMA, read_results
from selva_ray.report import build_report

RATE = 16000
# 12 good clips in 4 durations (8 x 1 s, 2 x 1.5 s, 1 x 2 s, and 5 s: the one long enough
# for DeSync, which needs 4.8 s) and one broken file
GOOD = {
    **{f"dog_bark/a{i}.mp4": 1.0 for i in range(6)},
    "dog_bark/a6.mkv": 1.0,
    "dog_bark/a7.webm": 1.0,
    "rain/b0.mp4": 1.5,
    "rain/b1.mp4": 1.5,
    "rain/c0.mov": 2.0,
    "rain/long.mp4": 5.0,
}
BROKEN = "rain/broken.mp4"
# the catalog run's QA thresholds: DeSync far tighter than the default 0.5 s
TIGHT = {"qa": {"max_abs_desync_s": 0.05}}


def name_of(row: dict) -> str:
    """The catalog name (key of GOOD) of a results row."""
    return "/".join(Path(row["source"]).parts[-2:])


@pytest.fixture(scope="module")
def cluster(shared_ray):
    return shared_ray


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    for i, (name, duration) in enumerate(GOOD.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"codec": "libvpx-vp9"} if name.endswith(".webm") else {}
        audio = AudioSpec(freq=330.0 + 40 * i) if i % 3 == 0 else None
        write_video(root / name, duration=duration, fps=25, size=(64, 48), audio=audio, **kwargs)
    write_text_file(root / BROKEN)
    return root


def config(input_: Path, output: Path, **kw) -> GenerateConfig:
    values = {
        "variant": "tiny",
        "steps": 2,
        "batch_size": 8,
        "shard_size": 4,
        "loudness": -23.0,
        "progress": False,
        "desync": False,  # DeSync runs in the catalog run only (its QA test)
        **kw,
    }
    return GenerateConfig(input=str(input_), output=str(output), **values)


@pytest.fixture(scope="module")
def catalog_run(cluster, catalog, tmp_path_factory):
    output = tmp_path_factory.mktemp("gen-catalog")
    tight = tmp_path_factory.mktemp("thresholds") / "tight.json"
    tight.write_text(json.dumps(TIGHT))
    thresholds = QAThresholds.from_file(tight)
    summary = run_generate(config(catalog, output, mux=True, desync=True, thresholds=thresholds))
    return output, summary


@pytest.fixture(scope="module")
def features(cluster, catalog, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("features")
    run_extract(
        ExtractConfig(
            input=str(catalog),
            output=str(output),
            variant="tiny",
            storage_dtype="float32",
            batch_size=8,
            progress=False,
        )
    )
    return output


@pytest.fixture(scope="module")
def features_run(features, tmp_path_factory):
    output = tmp_path_factory.mktemp("gen-features")
    summary = run_generate(config(features, output))
    return output, summary


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory) -> Path:
    from selva_core.build import load_generator
    from selva_core.lora.adapter_file import save_adapter
    from selva_core.lora.apply import apply_lora, lora_layers

    model = load_generator("tiny")
    apply_lora(model, rank=2)
    g = torch.Generator().manual_seed(3)
    for layer in lora_layers(model).values():
        b = layer.lora_B["default"]
        b.data = 0.5 * torch.randn(b.shape, generator=g)
    path = tmp_path_factory.mktemp("adapters") / "bark_style.safetensors"
    save_adapter(path, model, variant="tiny")
    return path


def results(output: Path) -> dict[str, dict]:
    rows = pq.read_table(output / "results").to_pylist()
    return {r["id"]: r for r in rows}


def read_track(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        rate = stream.codec_context.sample_rate
        chunks = [f.to_ndarray().reshape(-1) for f in c.decode(stream)]
    return np.concatenate(chunks), rate


def tracks(output: Path) -> dict[str, np.ndarray]:
    """Every track as floats in [-1, 1] (24-bit FLAC decodes as int32)."""
    out = {}
    for clip_id, row in results(output).items():
        samples, _ = read_track(output / row["audio_path"])
        scale = 32768.0 if samples.dtype == np.int16 else 2.0**31
        out[clip_id] = samples.astype(np.float64) / scale
    return out


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def video_packets(path: Path, until: float | None = None) -> list[str]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        tb = stream.time_base
        out = []
        for p in c.demux(stream):
            if p.dts is None or p.size == 0:
                continue
            if until is not None and p.dts * tb >= until:
                break
            out.append(hashlib.sha256(bytes(p)).hexdigest())
    return out


# ---- the catalog run ----------------------------------------------------------------------------


def test_catalog_run_gives_a_track_and_a_video_per_good_clip(catalog_run, catalog):
    output, summary = catalog_run
    assert (summary.ok, summary.failed, summary.skipped) == (len(GOOD), 1, 0)
    assert summary.errors_by_stage == {"decode": 1}
    assert "/errors/" in summary.lines()[2]  # it exists: the failed clip's row is there
    assert summary.exit_code(fail_on_error=False) == 0
    assert summary.exit_code(fail_on_error=True) == 1
    rows = results(output)
    assert sorted(r["source"] for r in rows.values()) == sorted(str(catalog / n) for n in GOOD)
    # named after the source under the catalog: audio/rain/b0.flac, video/rain/b0.mp4
    assert len([p for p in (output / "audio").rglob("*") if p.is_file()]) == len(GOOD)
    assert len([p for p in (output / "video").rglob("*") if p.is_file()]) == len(GOOD)
    for row in rows.values():
        stem = str(Path(name_of(row)).with_suffix(""))
        assert row["audio_path"] == f"audio/{stem}.flac"
        assert row["video_path"].startswith(f"video/{stem}.")
        samples, rate = read_track(output / row["audio_path"])
        decoded = decode_clip(row["source"], max_duration=8.0)
        assert row["audio_path"].endswith(".flac") and samples.dtype == np.int32  # 24-bit
        assert rate == row["sample_rate"] == RATE
        # exactly the clip's duration (the container's), not what the official frame rule
        # covers (one 25 fps frame less)
        assert len(samples) == row["samples"] == round(decoded.track_duration * RATE)
        frames = round(GOOD[name_of(row)] * 25)  # what write_video wrote, at 25 fps
        assert row["duration"] == pytest.approx(decoded.track_duration) == frames / 25
        assert row["prompt"] == Path(row["source"]).parent.name.replace("_", " ")
        # the dubbed video: the source's packets byte for byte, plus the new track
        video = output / row["video_path"]
        source_ext = Path(row["source"]).suffix
        assert video.suffix == (".mp4" if source_ext == ".webm" else source_ext)
        copied = video_packets(video)
        assert copied and copied == video_packets(Path(row["source"]))[: len(copied)]
        assert len(copied) == len(video_packets(Path(row["source"]), until=row["duration"]))
        with av.open(str(video)) as c:
            assert len(c.streams.audio) == 1 and c.streams.audio[0].codec_context.name == "aac"
    errors = pq.read_table(output / "errors").to_pylist()
    assert [(e["source"], e["stage"]) for e in errors] == [(str(catalog / BROKEN), "decode")]
    assert not list(output.rglob("*.tmp")) and not list(output.rglob(".*"))


def test_batches_group_equal_durations_and_report_timings(catalog_run):
    output, summary = catalog_run
    rows = results(output)
    by_duration: dict[float, set[int]] = {}
    for r in rows.values():
        by_duration.setdefault(round(r["duration"], 3), set()).add(r["batch_clips"])
    # 8 one-second clips fill one batch of 8; the others batch with their own duration only
    assert by_duration == {1.0: {8}, 1.52: {2}, 2.0: {1}, 5.0: {1}}  # 38 frames at 25 fps
    assert summary.batches == 4
    assert summary.batch_fill == pytest.approx(12 / 32)
    for r in rows.values():
        for key in ("t_decode", "t_features", "t_sampling", "t_vocoder", "t_write", "t_qa"):
            assert r[key] is not None and r[key] > 0, key
        assert (r["seed"], r["cfg"], r["steps"], r["variant"]) == (42, 4.5, 2, "tiny")
        assert json.loads(r["adapters"]) == [] and r["status"] == "ok" and r["bits"] == 24
        # loudness normalisation to -23 LUFS under a -1 dBTP ceiling
        assert r["true_peak_dbtp"] <= -1.0 + 0.05
        assert r["loudness_lufs"] == pytest.approx(-23.0, abs=0.3) or r["true_peak_dbtp"] > -1.1
        assert r["peak_dbfs"] <= r["true_peak_dbtp"] + 1e-6 and r["rms_dbfs"] < r["peak_dbfs"]
    meta = OutputDir(str(output)).read_meta()
    assert meta["settings"]["steps"] == 2 and meta["settings"]["peak"] == -1.0
    assert set(r["settings_hash"] for r in rows.values()) == {meta["settings_hash"]}


# ---- per-clip QA of the catalog run, report and inspect -----------------------------------------


def test_catalog_run_rows_carry_qa_metrics_desync_and_flags(catalog_run, catalog):
    output, _ = catalog_run
    table = read_results(str(output))
    assert table.schema.equals(RESULTS_SCHEMA)  # the one results contract, as `qa` writes it
    tight = QAThresholds.from_mapping(TIGHT["qa"])
    settings = OutputDir(str(output)).read_meta()["settings"]
    assert settings["thresholds"] == tight.describe()
    assert settings["desync"]["variant"] == "tiny" and settings["desync"]["span_s"] == 8.0
    rows = {r["id"]: r for r in table.to_pylist()}
    long_id = next(i for i, r in rows.items() if r["source"] == str(catalog / "rain/long.mp4"))
    for clip_id, r in rows.items():
        for key in ("loudness_lufs", "peak_dbfs", "true_peak_dbtp", "rms_dbfs", "clipped_ratio",
                    "silence_ratio", "spectral_flatness"):  # fmt: skip
            assert r[key] is not None and math.isfinite(r[key]), (clip_id, key)
        # the metrics are those of the written track (the FLAC decoded back, 24-bit)
        samples, rate = read_track(output / r["audio_path"])
        again = clip_metrics(torch.from_numpy(samples / 2.0**31), rate)
        assert again.loudness_lufs == pytest.approx(r["loudness_lufs"], abs=0.01)
        assert again.true_peak_dbtp == pytest.approx(r["true_peak_dbtp"], abs=0.01)
        assert again.silence_ratio == r["silence_ratio"]
        # DeSync: the 5 s clip is scored on the DeSync actor; under 4.8 s it is null
        if clip_id == long_id:
            assert r["desync_s"] is not None and 0.0 <= r["desync_s"] <= 2.0
            assert r["t_desync"] > 0 and r["t_qa"] >= r["t_desync"]
        else:
            assert r["desync_s"] is None and r["t_desync"] is None
        # flags are the thresholds file's verdict on the stored metrics
        assert r["qa_flags"] == qa_flags(r, tight), clip_id
    flagged = {i for i, r in rows.items() if r["qa_flags"]}
    assert flagged == {long_id}  # the tiny model's offset is far above 0.05 s
    assert rows[long_id]["qa_flags"] == ["desync"]
    assert "desync" not in qa_flags(rows[long_id], QAThresholds(max_abs_desync_s=2.0))


def test_report_and_inspect_read_the_generation_run(catalog_run, tmp_path, capsys):
    output, _ = catalog_run
    run = tmp_path / "run"
    shutil.copytree(output, run)
    summary = build_report(run)
    assert (summary.clips, summary.flagged, summary.failed) == (len(GOOD), 1, 1)
    page = (run / "report" / "index.html").read_text()
    rows = re.findall(r"<tr class='clip' data-id='([^']+)'", page)
    assert sorted(rows) == sorted(results(output))  # one row per clip
    flagged = [i for i, r in results(output).items() if r["qa_flags"]]
    assert rows[0] == flagged[0]  # worst first
    players = re.findall(r"<audio controls preload='none' src='([^']+)'", page)
    assert len(players) == len(GOOD)
    images = re.findall(r"<img[^>]* src='([^']+)'", page)
    assert len(images) == summary.images and "hist_desync_s.png" in images
    for target in players + images:
        assert (run / "report" / target).resolve().is_file(), target
    assert main(["inspect", str(run), "--worst", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{len(GOOD)} clips ok, 1 flagged, 1 failed" in lines[0]
    first, second = lines[3].split(), lines[4].split()
    assert (first[1], first[2]) == (flagged[0], "desync") and second[2] == "-"
    # the source, named under the catalog's folder, and the readable track to listen to
    worst = results(output)[flagged[0]]
    assert lines[3].split()[-2:] == [name_of(worst), worst["audio_path"]]


def test_generation_qa_settings_are_checked_before_ray(tmp_path, catalog):
    """A real variant's DeSync needs synchformer_state_dict.pth: missing, it is one error naming
    the file and --no-desync, raised before Ray starts; a bad thresholds file exits 2."""
    cfg = GenerateConfig(input="in", output="out", variant="small_16k",
                         weights_dir=str(tmp_path / "none"), offline=True)  # fmt: skip
    with pytest.raises(MissingWeightsError, match=r"synchformer_state_dict\.pth.*--no-desync"):
        qa_settings(cfg)
    cfg.desync = False
    assert qa_settings(cfg)["desync"] is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_silence_ratio: lots\n")
    argv = ["generate", "--input", str(catalog), "--output", str(tmp_path / "o"),
            "--variant", "tiny", "--qa-thresholds", str(bad)]  # fmt: skip
    assert main(argv) == 2 and not (tmp_path / "o").exists()


# ---- reproducibility ----------------------------------------------------------------------------


def test_features_folder_gives_the_catalog_run_audio(catalog_run, features_run):
    cat, _ = catalog_run
    feat, summary = features_run
    assert summary.input_kind == "features" and summary.ok == len(GOOD)
    a, b = tracks(cat), tracks(feat)
    assert a.keys() == b.keys()
    for clip_id in a:
        assert rel_l2(b[clip_id], a[clip_id]) < 1e-5, clip_id
    rows = results(feat)
    assert all(r["t_decode"] is None and r["t_features"] is None for r in rows.values())
    assert all(r["video_path"] is None for r in rows.values())
    # --no-desync: no score, no DeSync flag, no model in the settings; the rest is measured
    assert all(r["desync_s"] is None and "desync" not in r["qa_flags"] for r in rows.values())
    assert all(r["loudness_lufs"] is not None for r in rows.values())
    assert OutputDir(str(feat)).read_meta()["settings"]["desync"] is None


def test_cpu_defaults_share_the_clips_between_one_thread_generators(
    catalog_run, features, tmp_path, caplog
):
    """Without --actors and --batch-size, a CPU cluster runs one one-thread generator actor
    per core and cuts the batches so that each gets two; the audio is the catalog run's.
    (Which actor makes which batch is up to Ray Data: one that is ready first may take both.)"""
    output = tmp_path / "defaults"
    with caplog.at_level(logging.INFO, logger="selva_ray.generate.job"):
        summary = run_generate(config(features, output, batch_size=None))
    assert summary.ok == len(GOOD)
    actors = runtime.cpu_model_slots(int(1.5 * 2**30))
    assert 1 <= actors <= runtime.node_cores()  # one node: its cores, memory permitting
    cut = min(8, math.ceil(len(GOOD) / (2 * actors)))
    assert f"batch(es) of up to {cut}; {actors} generator actor(s) on cpu" in caplog.text
    rows = results(output)
    assert max(r["batch_clips"] for r in rows.values()) == cut
    batched, here = tracks(catalog_run[0]), tracks(output)
    for clip_id in batched:
        assert rel_l2(here[clip_id], batched[clip_id]) < 1e-5, clip_id


def test_same_seed_same_waveform_alone_in_a_batch_and_on_two_actors(
    catalog_run, features, tmp_path
):
    cat, _ = catalog_run
    output = tmp_path / "alone"
    summary = run_generate(config(features, output, batch_size=1, actors=2))
    assert summary.ok == len(GOOD) and summary.batch_fill == 1.0
    rows = results(output)
    assert {r["batch_clips"] for r in rows.values()} == {1}
    assert len({r["worker"] for r in rows.values()}) == 2  # both actors made clips
    batched, alone = tracks(cat), tracks(output)
    for clip_id, row in results(cat).items():
        assert rel_l2(alone[clip_id], batched[clip_id]) < 1e-5, (clip_id, row["batch_clips"])


def test_strength_zero_is_no_adapter_and_strength_one_changes_the_audio(
    features, features_run, adapter_file, tmp_path
):
    base = tracks(features_run[0])
    zero = tmp_path / "zero"
    run_generate(config(features, zero, adapters=[f"{adapter_file}@0"]))
    for clip_id, samples in tracks(zero).items():
        assert np.array_equal(samples, base[clip_id]), clip_id
    one = tmp_path / "one"
    run_generate(config(features, one, adapters=[str(adapter_file)]))
    changed = tracks(one)
    assert all(rel_l2(changed[k], base[k]) > 1e-2 for k in base)
    digest = hashlib.sha256(adapter_file.read_bytes()).hexdigest()
    want = [{"name": "bark_style", "strength": 1.0, "sha256": digest}]
    assert all(json.loads(r["adapters"]) == want for r in results(one).values())
    assert OutputDir(str(one)).read_meta()["settings"]["adapters"] == want


# ---- resume and refusal -------------------------------------------------------------------------


def test_rerun_does_only_clips_without_a_result_and_file(features, features_run):
    output, _ = features_run
    before = tracks(output)
    again = run_generate(config(features, output))
    assert (again.ok, again.failed, again.skipped) == (0, 0, len(GOOD))
    assert "errors" not in again.lines()[2]  # no errors folder, none named
    victim = sorted(results(output).values(), key=lambda r: r["id"])[0]
    (output / victim["audio_path"]).unlink()
    redo = run_generate(config(features, output))
    assert (redo.ok, redo.skipped) == (1, len(GOOD) - 1)
    ids = pq.read_table(output / "results")["id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(GOOD)  # every clip exactly once
    after = tracks(output)
    assert rel_l2(after[victim["id"]], before[victim["id"]]) < 1e-5


def test_an_edited_manifest_redoes_exactly_the_changed_clips(cluster, catalog, tmp_path):
    """A new prompt (A), another source (B) and a source rewritten in place (C) are redone:
    new audio, one row each, no old file left; the unchanged clip (D) is skipped. B's and C's
    new pictures differ from the old ones (the catalog's dog_bark clips all show the same
    frames), so their new audio differs through the features, not by rounding luck."""
    c_video = tmp_path / "c.mp4"
    shutil.copy(catalog / "dog_bark/a2.mp4", c_video)
    manifest = tmp_path / "m.csv"
    a0, a1 = (catalog / f"dog_bark/a{i}.mp4" for i in (0, 1))
    b_video = write_video(tmp_path / "b.mp4", duration=1.0, fps=25, size=(64, 48), pattern="noise")
    lines = {"A": f"A,{a0},bark", "B": f"B,{a1},bark", "C": f"C,{c_video},bark", "D": f"D,{a0},x"}
    manifest.write_text("id,video,prompt\n" + "\n".join(lines.values()) + "\n")
    output = tmp_path / "out"
    run = config(manifest, output, batch_size=4, allow_roots=[str(catalog), str(tmp_path)])
    first = run_generate(run)
    assert (first.ok, first.failed) == (4, 0)
    before = {i: (output / r["audio_path"]).read_bytes() for i, r in results(output).items()}
    hashes = {i: r["input_hash"] for i, r in results(output).items()}
    assert len(set(hashes.values())) == 4 and all(hashes.values())

    lines["A"], lines["B"] = f"A,{a0},rain on a roof", f"B,{b_video},bark"
    manifest.write_text("id,video,prompt\n" + "\n".join(lines.values()) + "\n")
    # same path, new file
    write_video(c_video, duration=1.0, fps=25, size=(64, 48), pattern="noise", seed=5)
    again = run_generate(run)
    assert (again.ok, again.failed, again.skipped, again.redone) == (3, 0, 1, 3)
    assert "3 redone (input changed)" in again.lines()[0]
    ids = pq.read_table(output / "results")["id"].to_pylist()
    assert sorted(ids) == ["A", "B", "C", "D"]  # one row each
    after = results(output)
    assert after["A"]["prompt"] == "rain on a roof" and after["B"]["source"] == str(b_video)
    for i in "ABC":
        assert (output / after[i]["audio_path"]).read_bytes() != before[i], i
        assert after[i]["input_hash"] != hashes[i]
    assert (output / after["D"]["audio_path"]).read_bytes() == before["D"]
    assert after["D"]["input_hash"] == hashes["D"]
    assert sorted(p.name for p in (output / "audio").rglob("*.flac")) == sorted(
        Path(r["audio_path"]).name for r in after.values()
    )  # no file of an old row is left
    assert run_generate(run).skipped == 4  # and a third run has nothing to do


def test_a_folder_made_with_other_settings_is_refused(features, features_run):
    output, _ = features_run
    with pytest.raises(SettingsMismatchError, match="steps"):
        run_generate(config(features, output, steps=3))
    with pytest.raises(GenerateInputError, match="variant 'tiny'"):
        run_generate(config(features, output, variant="tiny_44k"))


def test_bad_rows_become_error_rows(cluster, catalog, tmp_path):
    manifest = tmp_path / "m.jsonl"
    a0 = catalog / "dog_bark/a0.mp4"
    manifest.write_text(
        "\n".join(
            [
                f'{{"video": "{a0}", "prompt": "bark", "id": "ok", "seed": 7, "cfg": 3}}',
                f'{{"video": "{a0}", "prompt": "", "id": "no-prompt"}}',
                f'{{"video": "{a0}", "prompt": "x", "id": "bad-steps", "steps": 0}}',
                f'{{"video": "{a0}", "prompt": "x", "id": "bad-seed", "seed": "abc"}}',
            ]
        )
    )
    output = tmp_path / "out"
    summary = run_generate(
        config(
            manifest,
            output,
            batch_size=2,
            audio_format="wav",
            bits=16,
            allow_roots=[str(catalog)],  # the videos live beside the catalog, not the manifest
        )
    )
    assert (summary.ok, summary.failed) == (1, 3)
    errors = {e["id"]: e for e in pq.read_table(output / "errors").to_pylist()}
    no_prompt = errors["no-prompt"]  # caught when the catalog is read, before decoding
    assert no_prompt["stage"] == "catalog" and "column 'prompt'" in no_prompt["message"]
    bad_steps = errors["bad-steps"]
    assert bad_steps["stage"] == "catalog" and "column 'steps'" in bad_steps["message"]
    assert errors["bad-seed"]["stage"] == "catalog"
    row = results(output)["ok"]
    assert (row["seed"], row["cfg"], row["steps"]) == (7, 3.0, 2)
    # one clip to make: one generator actor, not one per core (it would only load a model)
    plan = json.loads((output / "_meta.json").read_text())["runs"][-1]["plan"]
    assert plan["actors"]["generator"]["actors"] == 1, plan
    samples, rate = read_track(output / row["audio_path"])
    assert row["audio_path"] == "audio/ok.wav" and samples.dtype == np.int16 and rate == RATE


# ---- command line and units ---------------------------------------------------------------------


def test_cli_refuses_unusable_settings_with_exit_code_2(tmp_path, catalog):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    bad_adapter = tmp_path / "x.safetensors"
    bad_adapter.write_bytes(b"not an adapter")
    run = subprocess.run(
        [
            sys.executable,
            "jobs/generate.py",
            "--input",
            str(catalog),
            "--output",
            str(tmp_path / "o"),
            "--variant",
            "tiny",
            "--adapter",
            f"{bad_adapter}@0.5",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.startswith("error: --adapter") and "Traceback" not in run.stderr
    assert str(bad_adapter) in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before the folder was claimed


def test_adapter_argument_parsing(adapter_file, caplog):
    assert parse_adapter("a.safetensors@0.5") == ("a.safetensors", 0.5)
    assert parse_adapter("a.safetensors") == ("a.safetensors", 1.0)
    assert parse_adapter("s3://b/x@y/a.safetensors") == ("s3://b/x@y/a.safetensors", 1.0)
    # a bad strength on a file that exists is named as a bad strength, not a missing file
    with pytest.raises(GenerateInputError, match="strength 'abc' is not a number"):
        parse_adapter(f"{adapter_file}@abc")
    for far in ("1e9", "-11", "nan"):
        with pytest.raises(GenerateInputError, match=r"strength must be a finite number in"):
            parse_adapter(f"{adapter_file}@{far}")
    with caplog.at_level(logging.WARNING, logger="selva_ray.generate.adapters"):
        assert parse_adapter(f"{adapter_file}@-1") == (str(adapter_file), -1.0)
    assert "outside the usual" in caplog.text


def test_an_adapter_of_another_variant_is_refused_or_merged_and_recorded(adapter_file):
    from selva_ray.generate.adapters import resolve_adapters

    with pytest.raises(GenerateInputError, match="trained for variant 'tiny', not 'tiny_44k'"):
        resolve_adapters([str(adapter_file)], "tiny_44k")
    (forced,) = resolve_adapters([str(adapter_file)], "tiny_44k", allow_base_mismatch=True)
    assert forced.describe()["base_mismatch"] == {"trained_for": "tiny"}
    (same,) = resolve_adapters([f"{adapter_file}@0.5"], "tiny")
    assert "base_mismatch" not in same.describe() and same.strength == 0.5


def test_loudness_normalisation_and_true_peak_ceiling():
    t = torch.arange(RATE * 2) / RATE
    tone = 0.05 * torch.sin(2 * math.pi * 1000 * t)
    out, gain = normalise(tone, RATE, target_lufs=-23.0, ceiling_dbtp=-1.0)
    assert loudness(out, RATE) == pytest.approx(-23.0, abs=0.05) and gain > 0
    # a loud target is held back by the ceiling: true peak lands on it, loudness below target
    out, gain = normalise(tone, RATE, target_lufs=-3.0, ceiling_dbtp=-1.0)
    assert 20 * math.log10(true_peak(out, RATE)) == pytest.approx(-1.0, abs=1e-3)
    assert loudness(out, RATE) < -3.0
    # inter-sample peaks: a sine at fs/4 sampled at 45 degrees peaks between samples
    k = torch.arange(4000, dtype=torch.float64)
    ramp = torch.hann_window(800, dtype=torch.float64)[:400]  # smooth edges: an abrupt
    fade = torch.ones(4000, dtype=torch.float64)  # start would ring above the tone's peak
    fade[:400], fade[-400:] = ramp, ramp.flip(0)
    tricky = (fade * torch.sin(2 * math.pi * k / 4 + math.pi / 4)).float()
    assert float(tricky.abs().max()) == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert true_peak(tricky, RATE) == pytest.approx(1.0, abs=0.01)
    level = measure(tricky, RATE)
    assert level.peak_dbfs == pytest.approx(-3.01, abs=0.01)
    assert level.true_peak_dbtp == pytest.approx(0.0, abs=0.1)
    assert measure(torch.zeros(RATE), RATE).loudness_lufs is None
