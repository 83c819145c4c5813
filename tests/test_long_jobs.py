"""Long videos and object masks through the Ray jobs (issue 11): a 60 s video is cut into
windows by `extract`, trained on window by window, and generated into one joined track.

One 60 s synthetic video (a square sliding over a dark frame, silent for 30 s then a tone)
and the `tiny` model keep this fast; the code path is the one real 8 s windows take.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from video_factory import AudioSpec, square_position, write_video

from selva_core.long import plan_windows, seam_report, seam_spans, window_seed
from selva_core.long.windows import latent_quantum
from selva_core.variants import get_spec
from selva_ray.extract import ExtractConfig, run_extract
from selva_ray.generate import GenerateConfig, run_generate
from selva_ray.io.feature_schema import read_features, read_tensor

W, H = 96, 72
MASKS = ["plain", "ones", "blank", "small"]
LONG = 60.0
STEPS = 2


@pytest.fixture(scope="module")
def cluster(shared_ray):
    return shared_ray


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("long-jobs")
    video = write_video(
        d / "long.mp4",
        duration=LONG,
        fps=25,
        size=(W, H),
        pattern="square",
        audio=AudioSpec(onset=30.0, channels=1),
    )
    band = np.full((H, W), 255, np.uint8)
    _, y, side = square_position(0, W, H)
    band[y - 2 : y + side + 2] = 0  # blanks the square's whole path
    masks = {"blank": band, "ones": np.full((H, W), 255, np.uint8)}
    masks["small"] = np.full((H // 2, W), 255, np.uint8)
    paths = {}
    for name, array in masks.items():
        paths[name] = d / f"{name}.png"
        Image.fromarray(array, mode="L").save(paths[name])
    manifest = d / "catalog.jsonl"
    manifest.write_text(json.dumps({"id": "long", "video": "long.mp4", "prompt": "a whistle"}))
    # the last 8 s of the video, as 2 s windows: the catalog-input path of generate, cheaply
    tail = d / "tail.jsonl"
    tail.write_text(
        json.dumps({"id": "tail", "video": "long.mp4", "prompt": "a tone", "start": 52})
    )
    return {"video": video, "manifest": manifest, "tail": tail, **paths}


@pytest.fixture(scope="module")
def extracted(cluster, files, tmp_path_factory):
    output = tmp_path_factory.mktemp("long-features")
    summary = run_extract(
        ExtractConfig(
            input=str(files["manifest"]),
            output=str(output),
            variant="tiny",
            with_audio_latents=True,
            storage_dtype="float32",
            batch_size=4,
            progress=False,
        )
    )
    return output, summary


def expected_windows():
    quantum = latent_quantum(get_spec("tiny").sequence(8.0))
    return plan_windows(LONG, 8.0, 1.0, quantum=quantum)


def test_extract_cuts_the_long_video_into_window_rows(extracted, files):
    output, summary = extracted
    windows = expected_windows()
    # stride 7 s on the 32 ms latent grid: 8 windows cover 0-56.8 s, the 9th ends at 60 s
    assert len(windows) == 9 and windows[-1].end == pytest.approx(LONG)
    table = read_features(str(output))
    rows = {r["id"]: r for r in table.drop_columns(["sync_f", "text_f"]).to_pylist()}
    wins = sorted((r for r in rows.values() if r["parent_id"] == "long"), key=lambda r: r["id"])
    assert [r["id"] for r in wins] == [f"long#w{k:03d}" for k in range(9)]
    for r, w in zip(wins, windows, strict=True):
        assert r["window_index"] == w.index and r["window_count"] == 9
        assert (r["window_start"], r["window_end"]) == pytest.approx((w.start, w.end))
        assert r["start"] == pytest.approx(w.start) and r["duration"] == pytest.approx(8.0)
        assert r["parent_duration"] == pytest.approx(LONG)
        assert r["sync_len"] == 192 and r["latent_len"] == 250  # a whole 8 s window each
    assert (summary.catalog, summary.ok, summary.failed) == (1, 9, 0)
    meta = json.loads((output / "_meta.json").read_text())
    assert meta["settings"]["window"] == 8.0 and meta["settings"]["overlap"] == 1.0


def test_window_rows_carry_their_own_audio(extracted):
    output, _ = extracted
    table = read_features(str(output))
    ids = table["id"].to_pylist()
    latent = read_tensor(table, "latent_mean")
    first, last = latent[ids.index("long#w000")], latent[ids.index("long#w008")]
    mid = latent[ids.index("long#w001")]
    assert torch.allclose(first, mid, atol=1e-3)  # both silent (the tone starts at 30 s)
    assert (first - last).abs().max() > 0.1  # the last window holds the tone


def _objects(values: list) -> np.ndarray:
    """A Ray Data-like batch column: one object per row (arrays stay whole)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def test_masks_change_sync_features_and_a_full_mask_does_not(files):
    """Through the extract job's own stages (decode with the mask column, the encoder actor
    class) on 1.28 s of the video: no Ray needed for that."""
    from selva_ray.io.feature_schema import FeatureLayout
    from selva_ray.stages.decode import decode_batch
    from selva_ray.stages.encode import FeatureEncoder

    base = {"source": str(files["video"]), "prompt": "a whistle", "start": 0.0}
    base.update(duration=1.28, shard="s", row=0, seed=None, negative_prompt=None)
    rows = [{**base, "id": k, "mask": str(files[k]) if k != "plain" else None} for k in MASKS]
    batch = {k: _objects([r.get(k) for r in rows]) for k in rows[0]}
    decoded = decode_batch(
        batch, variant="tiny", max_duration=8.0, frame_rule="official", audio_rate=None
    )
    status = dict(zip(decoded["id"], decoded["status"], strict=True))
    assert status == {"plain": "ok", "ones": "ok", "blank": "ok", "small": "error"}
    msg = decoded["message"][MASKS.index("small")]
    assert str(files["small"]) in msg and str(files["video"]) in msg  # names both files
    assert f"{W}x{H // 2}" in msg and f"{W}x{H}" in msg
    layout = FeatureLayout.for_run(get_spec("tiny"), max_duration=8.0, storage_dtype="float32")
    encoder = FeatureEncoder(layout=layout, device="cpu")
    out = encoder({k: _objects(v) for k, v in decoded.items()})
    sync = dict(zip(out["id"], map(torch.from_numpy, out["sync_f"]), strict=True))
    digest = dict(zip(out["id"], out["mask_digest"], strict=True))
    assert torch.equal(sync["ones"], sync["plain"])  # a full-ones mask changes nothing
    assert (sync["blank"] - sync["plain"]).abs().max() > 1e-3  # blanking the object does
    assert digest["plain"] is None and digest["ones"] and digest["blank"]
    assert digest["ones"] != digest["blank"]


def test_catalog_mask_column_is_resolved_and_checked(files, tmp_path):
    from selva_ray.io.catalog import read_catalog

    manifest = files["video"].parent / "masks.csv"
    manifest.write_text(
        "id,video,prompt,mask\n"
        "a,long.mp4,x,blank.png\n"
        "b,long.mp4,x,\n"
        f"c,long.mp4,x,{tmp_path / 'elsewhere.png'}\n"
    )
    records, problems = read_catalog(str(manifest))
    masks = {r.id: r.mask for r in records}
    assert masks == {"a": str(files["blank"]), "b": None}
    assert [p.id for p in problems] == ["c"] and "column 'mask'" in problems[0].message
    assert "allowed roots" in problems[0].message


def test_extract_rerun_skips_finished_windows(cluster, extracted, files):
    output, _ = extracted
    summary = run_extract(
        ExtractConfig(
            input=str(files["manifest"]),
            output=str(output),
            variant="tiny",
            with_audio_latents=True,
            storage_dtype="float32",
            batch_size=4,
            progress=False,
        )
    )
    assert (summary.ok, summary.skipped) == (0, 9)


@pytest.fixture(scope="module")
def generated(cluster, extracted, files, tmp_path_factory):
    features, _ = extracted
    runs = {}
    for name, kw in {
        "continue": {"input": str(features), "mux": True},
        # DeSync scores the joined track in the first run; the others compare tracks only
        "crossfade": {"input": str(features), "join": "crossfade", "desync": False},
        "tail-1": {
            "input": str(files["tail"]),
            "window": 2.0,
            "overlap": 0.5,
            "actors": 1,
            "desync": False,
        },
        "tail-2": {
            "desync": False,
            "input": str(files["tail"]),
            "window": 2.0,
            "overlap": 0.5,
            "actors": 2,
            "encoder_actors": 2,
            "batch_size": 2,  # windows spread over batches and actors
        },
    }.items():
        output = tmp_path_factory.mktemp(f"long-{name}")
        summary = run_generate(
            GenerateConfig(
                output=str(output),
                variant="tiny",
                steps=STEPS,
                progress=False,
                **{"batch_size": 4, **kw},
            )
        )
        runs[name] = (output, summary)
    return runs


def _track(output, clip_id="long"):
    """The results row of a clip and its track as float32 in [-1, 1] (24-bit FLAC)."""
    import av

    results = pq.read_table(output / "results").to_pylist()
    row = next(r for r in results if r["id"] == clip_id)
    with av.open(str(output / row["audio_path"])) as c:
        stream = c.streams.audio[0]
        rate = stream.codec_context.sample_rate
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(stream)])
    wav = torch.from_numpy(samples.astype(np.float64) / 2.0**31).float()
    return row, wav, rate


def test_generate_joins_one_track_of_exactly_the_video_duration(generated):
    output, summary = generated["continue"]
    assert summary.ok == 1 and summary.failed == 0
    row, wav, rate = _track(output)
    assert rate == 16000 and wav.shape == (int(LONG * rate),)
    assert row["duration"] == pytest.approx(LONG) and row["windows"] == 9
    assert row["join"] == "continue" and row["seed"] == 42
    assert row["desync_s"] is not None  # DeSync scored the joined track
    timings = json.loads(row["window_timings"])
    assert [t["index"] for t in timings] == list(range(9))
    assert [t["seed"] for t in timings] == [window_seed(42, k) for k in range(9)]
    assert all(t["t_sampling"] > 0 and t["t_vocoder"] > 0 for t in timings)
    import av

    with av.open(str(output / row["video_path"])) as c:
        assert c.streams.audio and c.streams.video
        assert float(c.duration / av.time_base) == pytest.approx(LONG, abs=0.1)


def test_same_track_on_one_or_two_actors(generated):
    """The catalog-input path: windows decoded by separate tasks, encoded on one or two
    encoder actors in batches of 4 or 2, generated on one or two generator actors."""
    row1, wav1, rate = _track(generated["tail-1"][0], "tail")
    row2, wav2, _ = _track(generated["tail-2"][0], "tail")
    assert generated["tail-2"][1].ok == 1
    assert row1["windows"] == row2["windows"] == 6  # 52-60 s as 2 s windows, stride 1.472 s
    assert wav1.shape == (8 * rate,) and torch.isfinite(wav1).all() and wav1.std() > 1e-4
    assert row1["start"] == pytest.approx(52.0) and row1["duration"] == pytest.approx(8.0)
    # the same windows, seeds and joins; only the encoder's batching differs (batched text
    # encoding rounds differently in the last bits), so the tracks agree to float rounding
    print("tail max |diff|", float((wav1 - wav2).abs().max()))
    assert (wav1 - wav2).abs().max() <= 1e-4  # measured 2.4e-6
    assert (wav1 - wav2).norm() <= 1e-5 * wav1.norm()  # measured 7.9e-7


def test_seams_are_clean_in_both_join_modes(generated):
    windows = expected_windows()
    for name in ("continue", "crossfade"):
        row, wav, rate = _track(generated[name][0])
        report = seam_report(wav, rate, seam_spans(windows, row["join"]))
        print(name, json.dumps(report.as_dict()))
        assert report.clean, (name, report)
        assert row["seam_worst"] == pytest.approx(report.worst, rel=0.05, abs=0.05)


def test_train_takes_each_window_as_a_sample(cluster, extracted):
    from selva_ray.train.data import (
        ClipSet,
        check_windows,
        clip_dataset,
        inspect_features,
        list_clips,
        split_ids,
    )

    output, _ = extracted
    info = inspect_features(str(output))
    assert (info.window, info.overlap) == (8.0, 1.0)
    check_windows(info, None, None)
    check_windows(info, 8.0, 1.0)
    with pytest.raises(ValueError, match="windows of 8 s"):
        check_windows(info, 4.0, None)
    listing = list_clips(info)
    assert listing.usable == [f"long#w{k:03d}" for k in range(9)]
    # windows of one video never straddle the split
    groups = {**listing.groups, "other": None}
    train, val = split_ids([*listing.usable, "other"], 0.5, groups)
    assert sorted([train, val], key=len)[0] == ["other"]
    clips = ClipSet.from_batches(clip_dataset(info, listing.usable).iter_batches(batch_size=None))
    assert clips.ids == listing.usable and clips.latent.shape == (9, 250, 20)
    assert bool((clips.lengths == 250).all())
    assert (clips.latent[0] - clips.latent[-1]).abs().max() > 0.1  # its own audio each


def _window_batch(indices: list[int], *, count: int = 3, bad: int | None = None) -> dict:
    """A Ray Data batch of window rows of one video 'v' (features 2x4, sync length 2)."""
    rows = [
        {
            "id": f"v#{k}",
            "parent_id": "v",
            "window_index": k,
            "window_count": count,
            "window_start": 7.0 * k,
            "window_end": 7.0 * k + 8.0,
            "start": 7.0 * k,
            "parent_duration": 22.0,
            "shard": 0,
            "row": 0,
            "source": "/videos/v.mp4",
            "prompt": "rain",
            "negative_prompt": "",
            "seed": 42,
            "input_hash": "h",
            "name": "v",
            "cfg": 4.5,
            "steps": 2,
            "decode_s": 0.5,
            "features_s": float("nan"),
            "status": "error" if k == bad else "ok",
            "stage": "decode" if k == bad else None,
            "error_type": "VideoError" if k == bad else None,
            "message": "cannot decode" if k == bad else None,
            "sync_f": np.full((2, 4), k, np.float32),
            "sync_len": 2,
        }
        for k in indices
    ]
    return {key: np.array([r[key] for r in rows], dtype=object) for key in rows[0]}


def test_the_window_assembler_emits_each_video_once_in_window_order():
    """Windows arrive in any order and in any batches; the video leaves as one row when its
    last window is in, its features stacked by index and each window's seed named."""
    from selva_ray.generate.assemble import WindowAssembler

    assembler = WindowAssembler(tensors=("sync_f",), lengths=("sync_len",))
    assert dict(assembler(_window_batch([2, 0]))) == {}  # window 1 still missing
    out = assembler(_window_batch([1]))
    assert out["id"] == ["v"] and out["status"] == ["ok"]
    assert out["start"] == [0.0] and out["duration"] == [22.0]
    assert [float(w[0, 0]) for w in out["sync_f"][0]] == [0.0, 1.0, 2.0]
    assert out["sync_len"][0].tolist() == [2, 2, 2]
    assert out["decode_s"] == [1.5] and np.isnan(out["features_s"][0])
    windows = json.loads(out["windows_json"][0])
    assert [w["seed"] for w in windows] == [window_seed(42, k) for k in range(3)]
    assert [w["t_features"] for w in windows] == [None] * 3
    assert assembler.pending == {}

    failed = WindowAssembler(tensors=("sync_f",), lengths=("sync_len",))(
        _window_batch([0, 1, 2], bad=1)
    )
    assert failed["status"] == ["error"] and failed["stage"] == ["decode"]
    assert failed["message"] == ["window 1 (7.000 s): cannot decode"]


def test_the_window_assembler_worker_loads_no_torch():
    """The assembler actor only routes rows: its module must not pull in torch (about 1.6 CPU-s
    and 300 MB in each run's worker) nor the model code."""
    import subprocess
    import sys

    code = (
        "import sys; import selva_ray.generate.assemble; "
        "print(sorted(m for m in ('torch', 'selva_core.long', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
