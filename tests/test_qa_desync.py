"""DeSync in the `qa` job: the tiny Synchformer scores every clip of >= 4.8 s on a model actor
of a real local Ray cluster, exactly as `desync_score` scores the same decoded inputs; shorter
clips get null; clips that cannot be prepared become error rows of stage "desync"; the model
and its weights are part of the folder's settings."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from video_factory import AudioSpec, write_video

from selva_core.model.desync import desync_score, load_desync_model
from selva_core.qa import QAThresholds
from selva_core.video.decode import decode_clip
from selva_ray.cli import main
from selva_ray.io.output_dir import OutputDir, SettingsMismatchError
from selva_ray.io.results_schema import read_results
from selva_ray.qa import QAConfig, run_qa
from selva_ray.stages.decode import read_source_audio
from selva_ray.stages.desync import (
    DESYNC_INPUT_FIELDS,
    NO_INPUTS,
    DesyncActor,
    DesyncSettings,
    actor_kwargs,
    decode_inputs,
    encode_inputs,
    prepare_desync_inputs,
)
from selva_ray.stages.results import STAGE_SCHEMA

LOW = 0.05  # under the 0.2 s class grid step: every nonzero score crosses it


@pytest.fixture(scope="module")
def cluster(shared_ray):
    return shared_ray


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("desync-catalog")
    small = {"fps": 25, "size": (64, 48), "pattern": "noise"}
    write_video(root / "long.mp4", duration=10.0, audio=AudioSpec(freq=330), seed=1, **small)
    flac = AudioSpec(codec="flac", sample_rate=44100, channels=1, freq=1200, amplitude=0.3)
    write_video(root / "mid.mkv", duration=7.0, audio=flac, seed=2, **small)
    write_video(root / "short.mp4", duration=3.0, audio=AudioSpec(), seed=3, **small)
    # the audio measures fine, the video cannot be decoded into sync frames
    write_video(root / "wide.mp4", duration=5.0, size=(8200, 16), audio=AudioSpec())
    rows = [
        {"video": "long.mp4", "prompt": "ten seconds", "id": "long"},
        {"video": "mid.mkv", "prompt": "from 1.5 s", "id": "mid", "start": 1.5},
        {"video": "short.mp4", "prompt": "too short to score", "id": "short"},
        {"video": "wide.mp4", "prompt": "too wide", "id": "wide"},
    ]
    manifest = root / "catalog.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="module")
def desync_run(cluster, catalog, tmp_path_factory):
    output = tmp_path_factory.mktemp("desync-run")
    config = QAConfig(
        input=str(catalog),
        output=str(output),
        thresholds=QAThresholds(max_abs_desync_s=LOW),
        desync_variant="tiny",
        device="cpu",
        actors=1,
        desync_batch_size=2,
        shard_size=2,
        progress=False,
    )
    return output, config, run_qa(config)


def test_qa_job_scores_desync_like_desync_score(desync_run, catalog):
    output, _, summary = desync_run
    assert (summary.ok, summary.failed) == (3, 1)
    assert summary.errors_by_stage == {"desync": 1}
    rows = {r["id"]: r for r in read_results(str(output)).to_pylist()}
    assert sorted(rows) == ["long", "mid", "short"]
    assert rows["short"]["desync_s"] is None and "desync" not in rows["short"]["qa_flags"]

    # the same clips scored directly: decoded with the Synchformer's frame transform, the
    # audio as the QA job reads it, at its own rate; desync_score resamples and cuts to 8 s
    model = load_desync_model("tiny")
    root = catalog.parent
    clips = (("long", "long.mp4", 0.0, 10.0), ("mid", "mid.mkv", 1.5, 5.5))
    for clip_id, name, start, window in clips:
        frames = decode_clip(root / name, start=start, max_duration=8.0, family="mmaudio")
        audio, rate = read_source_audio(str(root / name), start, 600.0)
        assert audio.shape[0] / rate == pytest.approx(window, abs=0.05)
        want = desync_score(model, frames.sync_frames, torch.from_numpy(audio), sample_rate=rate)
        got = rows[clip_id]["desync_s"]
        assert got is not None and got == pytest.approx(want, abs=1e-6), clip_id
        assert 0.0 <= got <= 2.0
        # flags: recomputed by the actor with the run's thresholds
        assert ("desync" in rows[clip_id]["qa_flags"]) == (abs(got) > LOW)
    assert summary.flags.get("desync", 0) >= 1, "no clip crossed a 0.05 s DeSync threshold"
    assert rows["mid"]["sample_rate"] == 44100 and rows["long"]["t_qa"] > 0

    errors = {r["id"]: r for r in pq.read_table(output / "errors").to_pylist()}
    assert sorted(errors) == ["wide"]
    assert errors["wide"]["stage"] == "desync"
    assert errors["wide"]["error_type"] == "UnsupportedResolutionError"
    assert "wide.mp4" in errors["wide"]["message"]


def test_meta_names_the_desync_model_and_other_models_are_refused(desync_run, catalog):
    output, config, _ = desync_run
    meta = OutputDir(str(output), kind="results").read_meta()
    desync = meta["settings"]["desync"]
    assert desync["variant"] == "tiny" and desync["weights"].startswith("tiny-")
    assert desync["weights"] == DesyncSettings("tiny").fingerprint()
    assert desync["span_s"] == 8.0 and desync["precision"] == "fp32"
    # same settings: nothing to redo
    again = run_qa(config)
    assert (again.ok, again.failed, again.skipped, again.failed_before) == (0, 0, 3, 1)
    # without DeSync, or with another precision: refused, naming what differs
    for other in (
        QAConfig(input=config.input, output=config.output, thresholds=config.thresholds,
                 desync_variant=None, progress=False),
        QAConfig(input=config.input, output=config.output, thresholds=config.thresholds,
                 desync_variant="tiny", desync_precision="bf16", progress=False),
    ):  # fmt: skip
        with pytest.raises(SettingsMismatchError, match="desync"):
            run_qa(other)


def test_missing_synchformer_weights_is_a_one_line_error(catalog, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["qa", "--input", str(catalog), "--output", str(out),
                 "--weights-dir", str(tmp_path / "no-weights"), "--offline"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "synchformer_state_dict.pth" in err and "Traceback" not in err
    assert not (out / "_meta.json").exists()  # nothing claimed before the model is there
    with pytest.raises(SystemExit) as refused:  # now refused while parsing the flags
        main(["qa", "--input", str(catalog), "--output", str(out),
              "--desync-variant", "huge"])  # fmt: skip
    assert refused.value.code == 2 and "unknown variant 'huge'" in capsys.readouterr().err


def test_actor_isolates_a_clip_it_cannot_score():
    """Rows as the measure stage hands them over: a damaged input fails alone (stage desync),
    a clip without inputs gets null, an earlier failure passes through untouched."""
    actor = DesyncActor(
        **actor_kwargs(DesyncSettings("tiny"), device="cpu", thresholds=QAThresholds().describe())
    )
    schema = pa.schema([*STAGE_SCHEMA, *DESYNC_INPUT_FIELDS])
    base = {name: None for name in schema.names}
    ok = {"status": "ok", "stage": "", "error_type": "", "message": "", "qa_flags": []}
    rows = [
        base | ok | {"id": "damaged", "source": "a.mp4", "desync_frames": b"\x00" * 1000,
                     "desync_audio": b"\x00" * 400, "silence_ratio": 0.9},
        base | ok | NO_INPUTS | {"id": "short", "source": "b.mp4", "silence_ratio": 0.9,
                                 "t_qa": 0.5},
        base | NO_INPUTS | {"id": "bad", "source": "c.mp4", "status": "error",
                            "stage": "decode", "error_type": "X", "message": "m"},
    ]  # fmt: skip
    out = actor(pa.Table.from_pylist(rows, schema=schema))
    assert out.schema.equals(STAGE_SCHEMA)
    got = {r["id"]: r for r in out.to_pylist()}
    assert got["damaged"]["status"] == "error" and got["damaged"]["stage"] == "desync"
    assert "damaged" in got["damaged"]["message"]
    assert got["short"]["status"] == "ok" and got["short"]["desync_s"] is None
    assert got["short"]["qa_flags"] == ["silence"] and got["short"]["t_qa"] >= 0.5
    assert got["bad"]["stage"] == "decode" and got["bad"]["message"] == "m"


def test_desync_inputs_are_the_synchformer_frames_and_16k_audio(catalog):
    """What the measure tasks ship to the actors (through Arrow bytes) is the MMAudio-family
    sync stream of the clip's window and its audio resampled as `desync_score` would."""
    from selva_core.compat import torchaudio_functional

    path = str(catalog.parent / "mid.mkv")
    audio, rate = read_source_audio(path, 1.5, 600.0)
    cells = encode_inputs(prepare_desync_inputs(path, 1.5, None, audio, rate))
    inputs = decode_inputs(cells["desync_frames"], cells["desync_audio"])
    want = decode_clip(path, start=1.5, max_duration=8.0, family="mmaudio").sync_frames
    assert inputs.frames.dtype == torch.uint8 and torch.equal(inputs.frames, want)
    assert inputs.frames.shape[0] == pytest.approx(5.5 * 25, abs=2)
    full = torchaudio_functional().resample(torch.from_numpy(audio), rate, 16000)
    assert inputs.audio.shape[0] == pytest.approx(5.5 * 16000, abs=400)
    torch.testing.assert_close(inputs.audio, full[: inputs.audio.shape[0]], atol=1e-5, rtol=0)
    # squashing instead of cropping (the SelVA sync stream) gives other frames
    squashed = decode_clip(path, start=1.5, max_duration=8.0, family="selva").sync_frames
    assert not torch.equal(squashed, inputs.frames)
    # under 4.8 s: nothing to ship
    assert prepare_desync_inputs(path, 3.0, None, audio[: int(4.0 * rate)], rate) is None
