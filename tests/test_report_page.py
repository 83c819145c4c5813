"""The report page and `inspect` on run folders built here with the results schema (no Ray):
a generation run whose quiet tracks all fail the loudness check, a training run as the
training loop writes it, an extract folder, and the same generation run on a local S3 server
(moto). Figures are checked in their matplotlib figures and PNGs, the page in real headless
Chromium (layout measured in the browser)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from browser_support import chromium
from video_factory import write_video

from selva_core.qa import QAThresholds, clip_metrics, qa_flags
from selva_core.video.write import write_flac
from selva_ray.cli import main
from selva_ray.io.catalog import clip_id
from selva_ray.io.results_schema import adapters_json, results_table
from selva_ray.report import build_report, load_run, ranking_lines
from selva_ray.report.plots import curves_figure, histogram_figure

# source file name, start (s), tone amplitude: every track about 25 LU under the -23 LUFS
# target, all within half a LU of each other (as a run's tracks from one model can be)
CLIPS = [
    ("harbour gulls.mp4", 0.0, 0.00400),
    ("rain_on_tin_roof.mp4", 0.0, 0.00404),
    ("kitchen-sizzle.mp4", 0.0, 0.00408),
    ("forest_dawn.mp4", 2.0, 0.00412),
    ("train_pass.mp4", 0.0, 0.00416),
    ("crowd_cheer.mp4", 0.0, 0.00420),
]
SR = 16000


def write_generate_run(run: Path, videos: Path) -> list[dict]:
    """A generation run folder as the job writes it: audio/<id>.flac, video/<id>.mp4,
    results/part-*.parquet in the results schema, _meta.json with one run's summary."""
    for sub in ("audio", "video", "results"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (name, start, amplitude) in enumerate(CLIPS):
        source = videos / name
        if not source.exists():
            write_video(source, duration=1.0, size=(48, 32), fps=10)
        cid = clip_id(str(source), start, 1.0)
        t = torch.arange(SR, dtype=torch.float64) / SR
        wav = amplitude * torch.sin(2 * math.pi * (300 + 150 * n) * t)
        write_flac(run / "audio" / f"{cid}.flac", wav.float(), SR)
        shutil.copy(source, run / "video" / f"{cid}.mp4")
        m = clip_metrics(wav, SR)
        m.desync_s = 0.1 * n - 0.2
        rows.append(
            {
                "id": cid,
                "source": str(source),
                "row": n,
                "prompt": f"sound of {name.split('.')[0]}",
                "seed": n,
                "cfg": 4.5,
                "steps": 25,
                "variant": "tiny",
                "adapters": adapters_json([]),
                "audio_path": f"audio/{cid}.flac",
                "video_path": f"video/{cid}.mp4",
                "start": start,
                "duration": 1.0,
                "sample_rate": SR,
                **m.as_dict(),
                "qa_flags": qa_flags(m, QAThresholds()),
                "status": "ok",
                "settings_hash": "synthetic",
            }
        )
    pq.write_table(results_table(rows), run / "results" / "part-0000-synthetic.parquet")
    meta = {
        "kind": "generate",
        "settings": {"variant": "tiny", "steps": 25, "cfg": 4.5, "output": str(run)},
        "settings_hash": "synthetic",
        "runs": [
            {
                "run": "20260101000000abcd",
                "ok": len(rows),
                "failed": 0,
                "skipped": 0,
                "wall_s": 12.5,
                "clips_per_s": len(rows) / 12.5,
                "finished_at": 1767225600.0,
            }
        ],
    }
    (run / "_meta.json").write_text(json.dumps(meta))
    return rows


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("gen")
    rows = write_generate_run(root / "run", root / "videos")
    return root / "run", rows


EVAL_METRICS = {
    "hf_energy_ratio": 0.0123,
    "spectral_centroid_hz": 1843.25,
    "spectral_rolloff_hz": 4210.5,
    "spectral_flatness": 0.0341,
    "temporal_variance": 0.00087,
    "lsd_db": 12.75,
    "mcd_db": 9.125,
    "band_correlation_mean": 0.6432,
    "loudness_lufs": -31.25,
    "true_peak_dbtp": -4.5,
}
T0 = 1767225600.0  # 2026-01-01 00:00 UTC


def write_training_run(run: Path) -> None:
    """A short training run as `selva_ray.train` writes it: 4 steps (so a default axis would
    tick at half steps), a loss inside one decade (a default log axis labels it 2.2x10^0),
    Unix times in metrics.jsonl, evaluator files with a dozen long metric names."""
    run.mkdir(parents=True)
    lines = [{"step": 0, "val_loss": 2.35, "time": T0}]
    for step in range(1, 5):
        lines.append(
            {"step": step, "epoch": 0, "loss": 2.35 - 0.1 * step, "grad_norm": 0.8 + 0.01 * step,
             "lr": 1e-4, "lr_b": 1e-4, "clips_per_s": 3.5, "time": T0 + 60 * step}
            | ({"val_loss": 2.3 - 0.05 * step} if step % 2 == 0 else {})
        )  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for step in (0, 2, 4):
        folder = run / "eval" / f"step_{step}"
        folder.mkdir(parents=True)
        mean = {k: v * (1 + 0.01 * step) for k, v in EVAL_METRICS.items()}
        clips = [{"id": f"clip{i}", "prompt": "p", "seed": i, **mean} for i in range(2)]
        (folder / "metrics.json").write_text(
            json.dumps({"step": step, "val_loss": 2.3, "mean": mean, "clips": clips})
        )
    settings = {
        "features": "/mnt/shared/datasets/selva/features/very/long/path/that/does/not/wrap/"
        "easily/because/it/has/no/spaces/extract-2026-01-01T00-00-00",
        "output": str(run),
        "steps": 4,
        "rank": 16,
        "target_modules": ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv"],
    }
    (run / "_meta.json").write_text(json.dumps({"job": "train", "settings": settings}))


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "run"
    write_training_run(run)
    return run


# ---- figures ------------------------------------------------------------------------------


def bar_widths_px(fig) -> list[float]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    return [p.get_window_extent(renderer).width for p in ax.patches if p.get_height() > 0]


def test_histogram_bars_stay_visible_with_far_thresholds():
    # every clip near -60 LUFS, the tolerance lines at -24 and -22 LUFS
    values = [-61.2, -60.4, -60.1, -59.7, -58.9, -62.3]
    fig = histogram_figure(values, "loudness_lufs", "LUFS", [-24.0, -22.0])
    lo, hi = fig.axes[0].get_xlim()
    assert lo <= min(values) and hi >= -22.0  # the axis shows the clips and both lines
    widths = bar_widths_px(fig)
    assert widths and min(widths) >= 3.0, widths  # no sub-pixel bars
    # and when the thresholds lie among the data, the bars still split the data finely
    spread = list(np.linspace(-30, -16, 40))
    fig = histogram_figure(spread, "loudness_lufs", "LUFS", [-24.0, -22.0])
    assert len(bar_widths_px(fig)) >= 20


def visible_tick_labels(ax, axis: str) -> list[str]:
    a = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    out = []
    for minor in (False, True):
        ticks = a.get_minor_ticks() if minor else a.get_major_ticks()
        locs = a.get_minorticklocs() if minor else a.get_majorticklocs()
        for tick, loc in zip(ticks, locs, strict=False):
            text = tick.label1.get_text()
            if text and lo <= loc <= hi:
                out.append(text)
    return out


@pytest.mark.parametrize(
    "ys, log_y",
    [
        ([2.35, 2.25, 2.15, 2.05, 1.95], True),  # a loss inside one decade
        ([2.0, 0.6, 0.2, 0.08, 0.03], True),  # about two decades
        ([1e-4, 1e-4, 1e-4, 1e-4, 1e-4], False),  # a constant learning rate
    ],
)
def test_curve_ticks_are_plain_numbers_and_whole_steps(ys, log_y):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    xs = [0.0, 1.0, 2.0, 3.0, 4.0]
    fig = curves_figure({"loss": (xs, ys)}, "loss", log_y=log_y)
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    xlabels = visible_tick_labels(ax, "x")
    assert xlabels and all(re.fullmatch(r"\d+", t) for t in xlabels), xlabels
    ylabels = visible_tick_labels(ax, "y")
    assert len(ylabels) >= 2, ylabels
    for text in ylabels:  # no mathtext (2.35x10^0), no exponent, a plain decimal
        assert re.fullmatch(r"\u2212?\d+(\.\d+)?", text), ylabels
    assert ax.yaxis.get_offset_text().get_text() == ""  # no "+1e-4" offset above the axis


# ---- the generation run's page --------------------------------------------------------------


def test_report_histogram_png_shows_the_bars(generated, tmp_path):
    run, rows = generated
    assert all("loudness" in r["qa_flags"] for r in rows)  # the case of the issue
    build_report(run)
    from matplotlib.image import imread

    pixels = imread(run / "report" / "hist_loudness_lufs.png")
    blue = (pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.4) & (pixels[..., 1] < 0.55)
    assert blue.any(axis=0).sum() >= 6  # bars at least a few pixels wide in the PNG


MEASURE = """<script>
window.addEventListener("load", function () {
  const page = document.scrollingElement;
  const over = [];
  document.querySelectorAll("table").forEach(function (t) {
    const box = t.parentElement;
    if (box.scrollWidth > box.clientWidth + 1) { over.push((t.id || t.className) + ":" +
      box.scrollWidth + ">" + box.clientWidth); }
  });
  document.body.dataset.pageOverflow = page.scrollWidth - page.clientWidth;
  document.body.dataset.tablesOver = over.join(" ");
  const names = Array.from(document.querySelectorAll("#clips td.clip b"));
  document.body.dataset.clipNames = JSON.stringify(names.map(function (b) {
    return b.textContent; }));
});
</script>"""


def measured_dom(page: Path, tmp_path: Path, width: int = 1280) -> tuple[str, dict]:
    """The DOM of `page` after load in Chromium at `width` px, with what MEASURE recorded."""
    probe = page.with_name("measure.html")
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = chromium(
        [f"--window-size={width},2000", "--dump-dom", probe.as_uri()], tmp_path / "profile"
    ).stdout
    probe.unlink()
    body = re.search(r"<body([^>]*)>", dom).group(1)
    found = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert "page-overflow" in found, "the measuring script did not run"
    return dom, found


def test_clips_show_source_file_names(generated, tmp_path, capsys):
    run, rows = generated
    build_report(run)
    dom, found = measured_dom(run / "report" / "index.html", tmp_path)
    names = json.loads(found["clip-names"].replace("&quot;", '"'))
    want = {n if s == 0 else f"{n} @{s:g} s" for n, s, _ in CLIPS}
    assert set(names) == want and len(names) == len(rows)
    # the ids are still there (row keys, and under each name)
    for r in rows:
        assert f'data-id="{r["id"]}"' in dom
    assert main(["inspect", str(run), "--worst", "6"]) == 0
    out = capsys.readouterr().out
    assert "6 clips ok, 6 flagged, 0 failed" in out
    for name in want:
        assert name in out
    assert ranking_lines(load_run(run), 6)[1].split()[-2:] == ["source", "media"]


def test_generation_page_fits_the_window(generated, tmp_path):
    run, _ = generated
    build_report(run)
    page = run / "report" / "index.html"
    _, found = measured_dom(page, tmp_path)
    assert int(found["page-overflow"]) <= 0 and found["tables-over"] == ""
    shot = tmp_path / "generate.png"
    chromium([f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()], tmp_path / "p")
    keep = os.environ.get("SELVA_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, Path(keep).with_name(Path(keep).stem + "-generate.png"))
    from matplotlib.image import imread

    pixels = imread(shot)
    blue = (pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.4) & (pixels[..., 1] < 0.55)
    assert blue.sum() > 300  # the loudness histogram's bars are on screen


# ---- the training run's page ----------------------------------------------------------------


def test_training_page_dates_ticks_and_width(training, tmp_path):
    summary = build_report(training)
    page = (training / "report" / "index.html").read_text()
    assert summary.images == 4 + len(EVAL_METRICS) + 1  # 4 curves, the eval metrics, val_loss
    last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0 + 240))
    assert f"time={last}" in page
    assert not re.search(r"time=\d{6,}", page)  # no raw Unix time
    evals = re.search(r"<table class='sortable' id='evals'>.*?</table>", page).group(0)
    assert evals.count("<tr>") == 4 and "<th>step</th>" in evals
    assert evals.count("<th>step</th>") == 1  # the files' own "step" is not a second column
    assert "spectral_<wbr>centroid_<wbr>hz" in evals and "0.0008874" in evals  # 4 digits kept
    dom, found = measured_dom(training / "report" / "index.html", tmp_path)
    assert int(found["page-overflow"]) <= 0 and found["tables-over"] == "", found
    assert 'id="img-status"' in dom
    shot = tmp_path / "train.png"
    chromium(
        [f"--screenshot={shot}", "--window-size=1280,2000", (training / "report" / "index.html")
         .as_uri()], tmp_path / "p",
    )  # fmt: skip
    keep = os.environ.get("SELVA_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, Path(keep).with_name(Path(keep).stem + "-train.png"))


# ---- folders that are not run folders, --out, object storage ---------------------------------


def test_extract_folder_is_named_and_refused(tmp_path, capsys):
    feats = tmp_path / "feats"
    (feats / "errors").mkdir(parents=True)
    table = pa.table({"id": ["a", "b", "c", "d", "e", "f"], "clip_features": [[0.0]] * 6})
    pq.write_table(table.slice(0, 4), feats / "part-0000-aaaa.parquet")
    pq.write_table(table.slice(4), feats / "part-0001-bbbb.parquet")
    meta = {
        "schema_version": 3,
        "settings": {"variant": "tiny"},
        "settings_hash": "x",
        "tensors": {"clip_features": {"shape": [64, 1024], "dtype": "float16"}},
        "runs": [{"ok": 6, "failed": 0, "skipped": 0, "wall_s": 3.0}],
    }
    (feats / "_meta.json").write_text(json.dumps(meta))
    for command in (["report", str(feats)], ["inspect", str(feats)]):
        assert main(command) == 2, command
        captured = capsys.readouterr()
        assert captured.out == ""
        err = captured.err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert f"{feats} is an extract (features) folder" in err and "6 clips" in err
    assert not (feats / "report").exists()


def test_report_out_folder(generated, tmp_path, capsys):
    run, rows = generated
    out = tmp_path / "pages" / "gen"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert f"{out}/index.html: 6 clips" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    audio = re.findall(r"<audio controls preload='none' src='([^']+)'", page)
    assert len(audio) == len(rows)
    for target in audio + re.findall(r"href='([^']+)'", page):
        assert (out / target).resolve().exists(), target  # relative to the --out folder
    assert len(re.findall(r"<img[^>]* src='spec/", page)) == len(rows)
    assert main(["report", str(run), "--out", str(out)]) == 0  # an earlier page is replaced
    capsys.readouterr()
    # a folder with other files, or the run folder itself, is never replaced
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    for target in (other, run, run.parent):
        assert main(["report", str(run), "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"--out {target}" in err and "replaced whole" in err
    assert (other / "todo.txt").read_text() == "keep me" and (run / "results").is_dir()
    # a run folder whose report/ cannot be written: the refusal names --out
    blocked = tmp_path / "blocked"
    shutil.copytree(run, blocked)
    shutil.rmtree(blocked / "report", ignore_errors=True)
    (blocked / "report").write_text("a file in the way")
    assert main(["report", str(blocked)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "--out DIR" in err
    assert main(["report", str(blocked), "--out", str(tmp_path / "blocked-page")]) == 0


@pytest.fixture
def s3_server(monkeypatch):
    """A moto S3 server on 127.0.0.1 (a free port), its endpoint in the environment."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield
    finally:
        server.stop()


def upload(folder: Path, bucket: str, prefix: str) -> int:
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    files = [p for p in folder.rglob("*") if p.is_file() and "report" not in p.parts]
    for p in files:
        client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(folder).as_posix()}")
    return len(files)


def test_s3_run_folder(generated, training, s3_server, tmp_path, capsys):
    run, rows = generated
    assert upload(run, "runs", "gen") == 2 * len(rows) + 2
    upload(training, "runs", "train")
    uri = "s3://runs/gen"
    # inspect reads the tables through pyarrow
    assert main(["inspect", uri, "--worst", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{uri}: 6 clips ok, 6 flagged, 0 failed") and len(lines) == 6
    # report needs a local folder for the page, and says so in one line
    assert main(["report", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out DIR" in err and uri in err
    out = tmp_path / "page"
    assert main(["report", uri, "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert len(re.findall(r"<tr class='clip'", page)) == len(rows)
    # spectrograms from the fetched tracks; the tracks are named, never linked
    specs = re.findall(r"<img[^>]* src='(spec/[^']+)'", page)
    assert len(specs) == len(rows) and all((out / s).stat().st_size > 500 for s in specs)
    sources = re.findall(r"(?:src|href)='([^']+)'", page)
    assert not [s for s in sources if "://" in s] and "s3://runs/gen/audio/" in page
    _, found = measured_dom(out / "index.html", tmp_path)
    assert int(found["page-overflow"]) <= 0 and found["tables-over"] == "", found
    # a training run on S3: curves and evaluator table
    train_out = tmp_path / "train-page"
    assert main(["report", "s3://runs/train", "--out", str(train_out)]) == 0
    assert "Evaluator metrics per checkpoint" in (train_out / "index.html").read_text()
    assert main(["inspect", "s3://runs/nothing-here"]) == 2
    assert "s3://runs/nothing-here does not exist" in capsys.readouterr().err
