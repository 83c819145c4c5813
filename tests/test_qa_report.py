"""The QA job on a real local Ray cluster over videos made here, then `report` and `inspect`
on a run folder built from its output plus generated-style rows with their own audio files;
the page is opened in a real headless Chromium."""

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from browser_support import chromium
from video_factory import AudioSpec, write_text_file, write_video

from selva_core.qa import QAThresholds, clip_metrics, qa_flags
from selva_core.video.write import write_flac
from selva_ray.cli import main
from selva_ray.io.output_dir import OutputDir, SettingsMismatchError
from selva_ray.io.results_schema import RESULTS_SCHEMA, adapters_json, read_results, results_table
from selva_ray.qa import QAConfig, run_qa
from selva_ray.report import build_report, load_run, ranking_lines

REF_AMPLITUDE = 10 ** (-23 / 20) * math.sqrt(2)  # mono 997 Hz sine at -23 LUFS


@pytest.fixture(scope="module")
def cluster(shared_ray):
    return shared_ray


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qa-catalog")
    small = {"fps": 25, "size": (48, 32)}
    flac = {"codec": "flac", "sample_rate": 48000, "channels": 2}
    write_video(
        root / "ref.mkv",
        duration=2.0,
        audio=AudioSpec(freq=997, amplitude=REF_AMPLITUDE, **flac),
        **small,
    )
    write_video(root / "loud.mkv", duration=2.0, audio=AudioSpec(amplitude=1.0, **flac), **small)
    write_video(root / "late.mp4", duration=3.0, audio=AudioSpec(onset=2.0), **small)
    write_video(root / "mute.mp4", duration=1.0, **small)
    write_text_file(root / "broken.mp4")
    rows = [
        {"video": "ref.mkv", "prompt": "reference tone", "id": "ref", "seed": 7},
        {"video": "loud.mkv", "prompt": "too loud", "id": "loud"},
        {"video": "late.mp4", "prompt": "late start", "id": "late"},
        {"video": "late.mp4", "prompt": "tail only", "id": "tail", "start": 2.0, "duration": 1.0},
        {"video": "mute.mp4", "prompt": "no audio", "id": "mute"},
        {"video": "broken.mp4", "prompt": "not a video", "id": "broken"},
        {"video": "", "prompt": "no video", "id": "novideo"},
    ]
    manifest = root / "catalog.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="module")
def qa_run(cluster, catalog, tmp_path_factory):
    output = tmp_path_factory.mktemp("qa-run")
    # DeSync on these (all < 4.8 s) clips is covered by test_qa_desync.py; no model here
    summary = run_qa(
        QAConfig(
            input=str(catalog),
            output=str(output),
            shard_size=3,
            desync_variant=None,
            progress=False,
        )
    )
    return output, summary


def by_id(table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}


def test_qa_job_measures_every_clip_and_records_failures(qa_run, catalog):
    output, summary = qa_run
    assert (summary.ok, summary.failed, summary.skipped) == (4, 3, 0)
    assert summary.errors_by_stage == {"catalog": 1, "decode": 2}
    assert summary.flagged == 3 and summary.exit_code(fail_on_error=False) == 0
    table = read_results(str(output))
    assert table.schema.equals(RESULTS_SCHEMA, check_metadata=False)
    rows = by_id(table)
    assert sorted(rows) == ["late", "loud", "ref", "tail"]
    meta = OutputDir(str(output), kind="results").read_meta()
    for r in rows.values():
        assert r["audio_path"] == "" and r["video_path"] == r["source"]
        assert r["status"] == "ok" and r["settings_hash"] == meta["settings_hash"]
        assert r["sample_rate"] in (44100, 48000) and r["t_decode"] > 0 and r["t_qa"] > 0
        assert r["desync_s"] is None and r["variant"] is None
    ref = rows["ref"]
    assert ref["loudness_lufs"] == pytest.approx(-23.0, abs=0.1)  # through FLAC and a downmix
    assert ref["qa_flags"] == [] and ref["seed"] == 7 and ref["prompt"] == "reference tone"
    assert ref["duration"] == pytest.approx(2.0, abs=0.05) and ref["sample_rate"] == 48000
    assert ref["spectral_flatness"] < 1e-3 and ref["silence_ratio"] == 0.0
    assert rows["loud"]["qa_flags"] == ["clipping", "loudness"]
    assert rows["loud"]["peak_dbfs"] > -0.01 and rows["loud"]["clipped_ratio"] > 0.01
    assert rows["late"]["silence_ratio"] == pytest.approx(2 / 3, abs=0.05)
    assert "silence" in rows["late"]["qa_flags"]
    # the catalog's window: only the last second, all of it sound
    assert rows["tail"]["duration"] == pytest.approx(1.0, abs=0.05)
    assert rows["tail"]["silence_ratio"] < 0.1 and rows["tail"]["qa_flags"] == ["loudness"]
    errors = by_id(pq.read_table(output / "errors"))
    assert sorted(errors) == ["broken", "mute", "novideo"]
    assert errors["broken"]["stage"] == "decode" and "broken.mp4" in errors["broken"]["message"]
    assert "no audio track" in errors["mute"]["message"]
    assert errors["novideo"]["stage"] == "catalog"
    assert not list(output.rglob("*.tmp")) and not (output / "_staging").exists()
    assert meta["runs"][-1]["ok"] == 4 and meta["runs"][-1]["clips_per_s"] > 0


def test_qa_rerun_skips_and_other_thresholds_are_refused(qa_run, catalog):
    output, _ = qa_run
    before = sorted(p.name for p in output.rglob("*.parquet"))
    again = run_qa(
        QAConfig(input=str(catalog), output=str(output), desync_variant=None, progress=False)
    )
    # old failures are not "already done": counted apart, and errors/ is named because it exists
    assert (again.ok, again.failed, again.skipped, again.failed_before) == (0, 0, 4, 3)
    assert "3 failed before (--retry-errors redoes them)" in again.lines()[0]
    assert f"errors in {output}/errors/" in again.lines()[2]
    assert sorted(p.name for p in output.rglob("*.parquet")) == before
    with pytest.raises(SettingsMismatchError, match="thresholds"):
        run_qa(
            QAConfig(
                input=str(catalog),
                output=str(output),
                thresholds=QAThresholds(max_silence_ratio=0.9),
                desync_variant=None,
                progress=False,
            )
        )


def test_qa_rerun_measures_again_exactly_the_clips_whose_row_changed(cluster, catalog, tmp_path):
    folder = catalog.parent
    manifest = tmp_path / "m.jsonl"

    def write(rows: list[dict]) -> None:
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    rows = [
        {"video": f"{folder}/ref.mkv", "prompt": "", "id": "ref"},
        {"video": f"{folder}/late.mp4", "prompt": "", "id": "late"},
        {"video": f"{folder}/late.mp4", "prompt": "", "id": "tail", "start": 2.0, "duration": 1.0},
    ]
    write(rows)
    run = QAConfig(
        input=str(manifest),
        output=str(tmp_path / "out"),
        desync_variant=None,
        progress=False,
        allow_roots=[str(folder)],
    )
    first = run_qa(run)
    assert (first.ok, first.failed) == (3, 0)
    old = by_id(read_results(run.output))
    rows[0]["video"] = f"{folder}/loud.mkv"  # another source
    rows[2]["start"], rows[2]["duration"] = 1.0, 2.0  # another span
    write(rows)
    again = run_qa(run)
    assert (again.ok, again.failed, again.skipped, again.redone) == (2, 0, 1, 2)
    new = by_id(read_results(run.output))
    assert read_results(run.output).num_rows == 3  # one row per id
    assert new["ref"]["source"].endswith("loud.mkv") and new["ref"]["qa_flags"] != []
    assert new["tail"]["duration"] == pytest.approx(2.0, abs=0.05)
    assert new["late"]["input_hash"] == old["late"]["input_hash"]
    assert new["late"]["t_qa"] == old["late"]["t_qa"]  # the very row of the first run


def test_qa_command_threshold_flags_and_bad_file(cluster, catalog, tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = main(
        ["qa", "--input", str(catalog), "--output", str(out), "--max-silence", "0.7",
         "--target-lufs", "-14", "--loudness-tolerance", "20", "--no-progress",
         "--no-desync"]
    )  # fmt: skip
    assert code == 0
    assert "4 ok (1 flagged: clipping: 1)" in capsys.readouterr().out
    rows = by_id(read_results(str(out)))
    assert rows["late"]["qa_flags"] == [] and rows["loud"]["qa_flags"] == ["clipping"]
    bad = tmp_path / "qa.yaml"
    bad.write_text("max_silence: 0.2\n")
    code = main(["qa", "--input", str(catalog), "--output", str(tmp_path / "x"),
                 "--qa-thresholds", str(bad)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "qa.yaml" in err and "max_silence" in err and "Traceback" not in err


# ---- report and inspect -------------------------------------------------------------------------


def tone(seconds: float, sr: int, amplitude: float, freq: float = 997.0) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return amplitude * torch.sin(2 * math.pi * freq * t)


def add_generated_rows(run: Path, video_source: Path) -> list[dict]:
    """Rows as the generation job writes them: audio/<id>.flac, video/<id>.mp4, real metrics."""
    sr = 16000
    g = torch.Generator().manual_seed(0)
    clean = tone(2.0, sr, REF_AMPLITUDE)
    noisy = (0.9 * torch.randn(2 * sr, generator=g, dtype=torch.float64)).clamp(-1, 1)
    quiet = tone(2.0, sr, 0.3)
    quiet[: int(1.6 * sr)] = 0.0
    clips = {
        "gen-clean": (clean, 0.05),
        "gen-noisy": (noisy, -0.9),
        "gen-quiet": (quiet, 0.1),
    }
    thresholds = QAThresholds()
    rows = []
    (run / "video").mkdir()
    for clip_id, (wav, desync) in clips.items():
        write_flac(run / "audio" / f"{clip_id}.flac", wav.float(), sr)
        shutil.copy(video_source, run / "video" / f"{clip_id}.mp4")
        m = clip_metrics(wav, sr)
        m.desync_s = desync
        rows.append(
            {
                "id": clip_id,
                "source": str(video_source),
                "prompt": f"prompt of {clip_id}",
                "seed": 1,
                "cfg": 4.5,
                "steps": 25,
                "variant": "tiny",
                "adapters": adapters_json([{"name": "rain.safetensors", "strength": 0.8}]),
                "audio_path": f"audio/{clip_id}.flac",
                "video_path": f"video/{clip_id}.mp4",
                "duration": 2.0,
                "sample_rate": sr,
                **m.as_dict(),
                "qa_flags": qa_flags(m, thresholds),
                "status": "ok",
                "t_sampling": 0.5,
                "settings_hash": "synthetic",
            }
        )
    pq.write_table(results_table(rows), run / "results" / "part-synthetic-0.parquet")
    return rows


@pytest.fixture(scope="module")
def report_run(qa_run, catalog, tmp_path_factory):
    output, _ = qa_run
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(output, run)
    generated = add_generated_rows(run, catalog.parent / "late.mp4")
    summary = build_report(run)
    return run, summary, generated


def test_generated_rows_flags(report_run):
    _, _, generated = report_run
    flags = {r["id"]: r["qa_flags"] for r in generated}
    assert flags["gen-clean"] == []
    assert flags["gen-noisy"] == ["desync", "clipping", "loudness"]
    assert flags["gen-quiet"] == ["silence", "loudness"]


def page_parts(run: Path) -> tuple[str, list[str], list[str]]:
    page = (run / "report" / "index.html").read_text()
    return page, re.findall(r"<img[^>]* src='([^']+)'", page), re.findall(r"href='([^']+)'", page)


def test_report_files_links_and_order(report_run):
    run, summary, _ = report_run
    assert (summary.clips, summary.shown, summary.failed, summary.flagged) == (7, 7, 3, 5)
    page, images, links = page_parts(run)
    report = run / "report"
    # every figure exists as a real PNG next to the page; one histogram per metric with values
    assert len(images) == summary.images == 8 + 7
    for src in images:
        assert (report / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    assert {f"hist_{m}.png" for m in ("loudness_lufs", "desync_s", "spectral_flatness")} <= set(
        images
    )
    # nothing leaves the page: no scheme in any src/href, no external stylesheet or script
    sources = re.findall(r"src='([^']+)'", page) + links
    assert sources and not [s for s in sources if "://" in s or s.startswith("//")]
    assert "<link" not in page and "<script src" not in page
    # players and video links resolve relative to the page
    audio = re.findall(r"<audio controls preload='none' src='([^']+)'", page)
    assert len(audio) == 7 and "../audio/gen-noisy.flac" in audio
    for target in audio + links:
        assert (report / target).resolve().exists(), target
    # one row per clip, worst first: most flags, then |DeSync|, then clipped share
    order = re.findall(r"<tr class='clip' data-id='([^']+)'", page)
    assert order == ["gen-noisy", "gen-quiet", "loud", "late", "tail", "gen-clean", "ref"]
    assert "rain.safetensors@0.8" in page and "Failed clips (3)" in page
    # a rebuild replaces the page whole and leaves no work folders behind
    build_report(run, max_clips=2)
    assert len(re.findall(r"<tr class='clip'", (report / "index.html").read_text())) == 2
    assert not [p for p in run.iterdir() if p.name.startswith(".report")]


def test_inspect_lists_flagged_clips_first(report_run, capsys):
    run, _, _ = report_run
    assert main(["inspect", str(run), "--worst", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "7 clips ok, 5 flagged, 3 failed" in lines[0]
    table = lines[3:]
    assert len(table) == 6
    ids = [line.split()[1] for line in table]
    assert ids == [row.split()[1] for row in ranking_lines(load_run(run), 6)[3:]]
    assert set(ids[:5]) == {"gen-noisy", "gen-quiet", "loud", "late", "tail"}
    assert table[0].split()[2] == "desync,clipping,loudness" and table[5].split()[2] == "-"
    assert main(["inspect", str(run / "nope")]) == 2


def test_report_of_a_training_run(tmp_path):
    run = tmp_path / "train"
    run.mkdir()
    lines = [
        {"step": s, "loss": 1.0 / s, "grad_norm": 0.5, "lr": 1e-4, "clips_per_s": 3.0}
        | ({"val_loss": 1.2 / s} if s % 5 == 0 else {})
        for s in range(1, 11)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{bad\n")
    for step, score in ((5, 0.4), (10, 0.3)):
        (run / "eval" / f"step_{step}").mkdir(parents=True)
        (run / "eval" / f"step_{step}" / "metrics.json").write_text(
            json.dumps({"desync_s": score, "fad": {"vggish": 2.0 * score}})
        )
    (run / "_meta.json").write_text(json.dumps({"settings": {"rank": 16, "lr": 1e-4}}))
    summary = build_report(run)
    page, images, _ = page_parts(run)
    assert {"train_loss.png", "train_grad_norm.png", "train_lr.png"} <= set(images)
    assert summary.images == len(images) == 6  # 4 curves + 2 evaluator metrics
    for src in images:
        assert (run / "report" / src).stat().st_size > 1000
    evals = re.search(r"<table class='sortable' id='evals'>.*?</table>", page).group(0)
    assert evals.count("<tr>") == 3 and "fad.vggish" in evals and "0.6000" in evals
    assert "metrics.jsonl line 11 skipped" in page and "Clips" not in page
    assert main(["report", str(tmp_path / "empty-not-a-run")]) == 2


# ---- the page in a real browser ---------------------------------------------------------------


def test_report_page_in_headless_chromium(report_run, tmp_path):
    run, summary, _ = report_run
    build_report(run)  # the full table again (an earlier test rebuilt it with 2 rows)
    url = (run / "report" / "index.html").as_uri()
    dom = chromium(["--dump-dom", url], tmp_path / "profile").stdout
    # the browser parsed one table row per clip, and every image decoded (the page's own
    # load handler counts images with a natural width)
    assert len(re.findall(r'<tr class="clip"', dom)) == summary.clips == 7
    status = re.search(r'id="img-status"[^>]*data-loaded="(\d+)" data-total="(\d+)"', dom)
    assert status, "the page's load script did not run"
    assert int(status.group(1)) == int(status.group(2)) == summary.images
    # sorting by a column header (the page's #sort= link clicks it once, or twice for desc)
    rows = read_results(str(run)).to_pylist()
    for suffix, reverse in (("", False), (":desc", True)):
        dom = chromium(["--dump-dom", f"{url}#sort=loudness_lufs{suffix}"], tmp_path / "p").stdout
        order = re.findall(r'<tr class="clip" data-id="([^"]+)"', dom)
        want = [r["id"] for r in sorted(rows, key=lambda r: r["loudness_lufs"], reverse=reverse)]
        assert order == want
    shot = tmp_path / "report.png"
    chromium([f"--screenshot={shot}", "--window-size=1400,2400", url], tmp_path / "profile2")
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] == 2400 and pixels.shape[1] == 1400
    assert float(pixels[..., :3].std()) > 0.05  # not a blank page
    # histograms' blue bars are on screen
    blue = (pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.4) & (pixels[..., 1] < 0.55)
    assert blue.sum() > 1000
    keep = os.environ.get("SELVA_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    assert np.isfinite(pixels).all()
