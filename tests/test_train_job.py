"""The LoRA training job on a real local Ray cluster (Ray Train V2, gloo, CPU), trained on
features that the real extraction job computes from videos written here.

The data set is learnable: four classes, each with its own prompt, its own video content and
its own tone in the audio track (so the target latent is a function of the conditions). Some
clips are shorter than the training duration (masked loss), one has no audio at all.
"""

import json
import warnings
from pathlib import Path

import pytest
import torch
from video_factory import AudioSpec, write_video

from selva_core.build import load_generator
from selva_core.flow_loss import flow_matching_loss
from selva_core.lora import BaseMismatchWarning, load_adapter, merge_lora, read_adapter
from selva_core.lora.surgery import SurgeryConfig, calibration_loss
from selva_core.pipeline import Features, Pipeline, PipelineConfig
from selva_ray.extract import ExtractConfig, run_extract
from selva_ray.io.feature_schema import FeatureLayout, feature_files
from selva_ray.io.output_dir import OutputDir
from selva_ray.train import (
    FeatureFolderError,
    TrainConfig,
    TrainConfigError,
    TrainFailed,
    run_train,
)
from selva_ray.train.data import ClipSet, FeatureInfo, _read_parts, inspect_features, split_ids

CLASSES = {  # prompt: tone (Hz)
    "a low hum": 150.0,
    "a mid beep": 700.0,
    "a high whistle": 2400.0,
    "a bright buzz": 4000.0,
}
MAX_DURATION = 2.0
LEARN_STEPS = 40
SHORT = dict(steps=8, save_every=3, eval_every=4, preview_clips=0, surgery=False)


@pytest.fixture(scope="module")
def cluster(shared_ray):
    return shared_ray


@pytest.fixture(scope="module")
def features(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    lines = ["video,prompt,id"]
    for c, (prompt, freq) in enumerate(CLASSES.items()):
        for i in range(4):
            path = root / f"class{c}_{i}.mp4"
            write_video(
                path,
                duration=2.0 if i < 3 else 1.2,  # one short clip per class
                fps=25,
                size=(64, 48),
                pattern="noise",
                seed=c,
                audio=AudioSpec(freq=freq, sample_rate=16000, channels=1, onset=0.1 * i),
            )
            lines.append(f"{path},{prompt},c{c}-{i}")
    silent = write_video(root / "silent.mp4", duration=2.0, fps=25, size=(64, 48))
    lines.append(f"{silent},no sound at all,silent")
    (root / "clips.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("features")
    summary = run_extract(
        ExtractConfig(
            input=str(root / "clips.csv"),
            output=str(out),
            variant="tiny",
            with_audio_latents=True,
            max_duration=MAX_DURATION,
            batch_size=8,
            shard_size=9,
            progress=False,
        )
    )
    assert summary.ok == 17 and summary.failed == 0
    return out


def config(features: Path, output: Path, **kw) -> TrainConfig:
    base = dict(
        features=str(features),
        output=str(output),
        rank=8,
        batch_size=4,
        lr=2e-3,
        warmup=5,
        val_fraction=0.25,
        seed=7,
        progress_every_s=1e9,
    )
    base.update(kw)
    return TrainConfig(**base)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in metrics(run) if r.get("loss") is not None]


@pytest.fixture(scope="module")
def learned(features, tmp_path_factory):
    """One learning run per init, made on first use."""
    runs = {}

    def get(init: str) -> Path:
        if init not in runs:
            out = tmp_path_factory.mktemp(f"learn-{init}")
            extra = dict(preview_clips=1, surgery=True) if init == "pissa" else {}
            kw = dict(init=init, steps=LEARN_STEPS, eval_every=20, save_every=20)
            run_train(config(features, out, **(kw | extra)))
            runs[init] = out
        return runs[init]

    return get


@pytest.fixture(scope="module")
def baseline(features, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    run_train(config(features, out, init="pissa", **SHORT))
    return out


# ---- no Ray Train needed ----------------------------------------------------------------------


def test_masked_loss_counts_only_valid_frames():
    """A clip's loss is the mean error over its valid frames; padding adds nothing to it."""
    gen = load_generator("tiny", duration=MAX_DURATION)
    n, c = gen.latent_seq_len, gen.latent_dim
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(2, n, c, generator=g), torch.randn(2, n, c, generator=g)
    lengths = torch.tensor([n, 20])
    cond = gen.preprocess_conditions(
        gen.empty_clip_feat[None].expand(2, gen.clip_seq_len, -1),
        torch.randn(2, gen.sync_seq_len, 64, generator=g),
        torch.randn(2, 77, 64, generator=g),
    )
    t = torch.tensor([0.3, 0.6])
    masked = flow_matching_loss(gen, x1, cond, x0, t, reduction="none", lengths=lengths)
    x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
    per_frame = (gen.predict_flow(x_t, t, cond) - (x1 - x0)).square().mean(dim=2)
    assert torch.allclose(masked, torch.stack([per_frame[0].mean(), per_frame[1, :20].mean()]))
    far = x1.clone()
    far[1, 20:] = 100.0  # absurd values in the padding
    unmasked = flow_matching_loss(gen, far, cond, x0, t, reduction="none")
    still = flow_matching_loss(gen, far, cond, x0, t, reduction="none", lengths=lengths)
    assert unmasked[1] > 100 * masked[1] and still[1] < 2 * masked[1]


def test_split_is_stable_and_by_clip_id():
    ids = [f"clip-{i}" for i in range(40)]
    train, val = split_ids(ids, 0.2)
    assert len(val) == 8 and not set(train) & set(val) and set(train) | set(val) == set(ids)
    assert split_ids(list(reversed(ids)), 0.2) == (train, val)
    assert split_ids(ids[:2], 0.2)[1] and split_ids(ids, 0.0) == (sorted(ids), [])


def test_schedule_counts_optimizer_steps():
    from selva_ray.train.loop import lr_factor, timestep_sampler

    cfg = TrainConfig("f", "o", steps=100, warmup=10, lr_schedule="cosine", grad_accum=4)
    f = lr_factor(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(99) < 0.01
    assert lr_factor(TrainConfig("f", "o", warmup=0))(1234) == 1.0
    cur = TrainConfig("f", "o", steps=100, timesteps="curriculum")
    assert [timestep_sampler(cur, s) for s in (0, 59, 60)] == [
        "logit_normal",
        "logit_normal",
        "uniform",
    ]


def test_augmentations_are_wired_and_split_independent():
    """Mixup and latent noise change the targets, and a clip's inputs depend only on
    (seed, step, position): the same whether its worker runs 1 or 4 positions."""
    from selva_ray.train.loop import _micro_batch, _TrainTensors, mixup_plan

    g = torch.Generator().manual_seed(1)
    n, length, c = 6, 30, 4
    x1_all = torch.randn(n, length, c, generator=g)
    conds = [torch.randn(n, 5, 3, generator=g) for _ in range(3)]
    lengths = torch.tensor([30, 30, 12, 30, 20, 30])
    empty = {"clip": torch.zeros(1, 3), "sync": torch.zeros(1, 3), "text": torch.zeros(5, 3)}
    idx = torch.tensor([4, 0, 2, 5])
    data = _TrainTensors(x1_all, *conds, lengths, empty)

    def inputs(cfg, positions):
        mix = mixup_plan(cfg, 3)
        return _micro_batch(cfg, 3, positions, idx, mix, data)

    plain = TrainConfig("f", "o", batch_size=4, cfg_dropout=0.0)
    augmented = TrainConfig("f", "o", batch_size=4, cfg_dropout=0.0, mixup=0.4, latent_noise=0.2)
    a, b = inputs(plain, [0, 1, 2, 3]), inputs(augmented, [0, 1, 2, 3])
    assert torch.equal(a["x0"], b["x0"]) and torch.equal(a["t"], b["t"])
    assert not torch.allclose(a["x1"], b["x1"])
    assert torch.all(b["x1"][0, 20:] == 0)  # padding stays zero (clip 4 has 20 frames)
    halves = [inputs(augmented, [0, 1]), inputs(augmented, [2, 3])]
    for key in b:
        assert torch.equal(b[key], torch.cat([h[key] for h in halves])), key
    dropped = inputs(TrainConfig("f", "o", batch_size=4, cfg_dropout=1.0), [0, 1, 2, 3])
    assert torch.all(dropped["text_f"] == 0) and torch.all(dropped["sync_f"] == 0)


def test_features_without_audio_latents_are_refused(tmp_path, capsys):
    from selva_core.variants import get_spec
    from selva_ray.cli import main

    folder = tmp_path / "no-latents"
    layout = FeatureLayout.for_run(get_spec("tiny"), max_duration=2.0, with_audio_latents=False)
    OutputDir(str(folder)).claim(layout.describe())
    with pytest.raises(FeatureFolderError, match="--with-audio-latents"):
        run_train(config(folder, tmp_path / "run"))
    code = main(["train", "--features", str(folder), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    # a folder extract takes (it refuses to add latents to the folder without them)
    assert f"selva-ray extract --input CATALOG --output {folder}-latents --variant tiny" in err
    assert not (tmp_path / "run").exists()


def test_unusable_settings_are_refused(features, tmp_path):
    with pytest.raises(TrainConfigError, match="multiple of --workers"):
        run_train(config(features, tmp_path / "a", batch_size=3, workers=2))
    with pytest.raises(FeatureFolderError, match="variant"):
        run_train(config(features, tmp_path / "a", variant="tiny_44k"))
    with pytest.raises(FeatureFolderError, match="larger than|global batch"):
        run_train(config(features, tmp_path / "a", batch_size=16))
    with pytest.raises(TrainConfigError, match="another job"):
        run_train(config(features, features))  # never write a run into the features folder
    with pytest.raises(TrainConfigError, match="no run to resume"):
        run_train(config(features, tmp_path / "b", resume=True))


def test_private_cluster_runs_without_the_placement_group_cleaner():
    """Ray Train's PlacementGroupCleaner finds Ray with address "auto" (another Ray on the
    host: a traceback in every run); on the private cluster it is left out, the rest kept.
    Fails too when Ray Train stops adding it under that name (then the filter is dead code)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from selva_ray.train.job import _without_pg_cleaner

    trainer = TorchTrainer(lambda _: None, scaling_config=ray.train.ScalingConfig(num_workers=1))
    before = [type(cb).__name__ for cb in trainer._create_default_callbacks()]
    assert "PlacementGroupCleanerCallback" in before
    _without_pg_cleaner(trainer)
    after = [type(cb).__name__ for cb in trainer._create_default_callbacks()]
    assert after == [name for name in before if name != "PlacementGroupCleanerCallback"]


def test_own_local_cluster_runs_without_the_cleaner_and_the_preemption_watcher(baseline, cluster):
    """The suite's cluster is this process's own one-node `ray.init()` (as a notebook's is):
    a run on it started neither Ray Train helper (nothing outlives this process, no node can
    be drained under it) and left the watcher's variable as it found it; the controller and
    the workers did run there."""
    import os

    import ray

    from selva_ray.runner.connect import connect
    from selva_ray.train.job import PREEMPTION_WATCHER

    assert connect(progress=False).ends_with_driver
    names = {a["ActorClassName"] for a in ray._private.state.actors().values()}
    assert {"TrainController", "RayTrainWorker"} <= names, names
    assert not names & {"PlacementGroupCleaner", "PreemptionWatcher"}, names
    assert PREEMPTION_WATCHER not in os.environ


# ---- training runs ----------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["standard", "pissa"])
def test_it_learns(learned, init):
    run = learned(init)
    summary = json.loads((run / "summary.json").read_text())
    first, last = summary["first_val_loss"], summary["final_val_loss"]
    assert last <= 0.7 * first, f"{init}: validation loss {first:.4f} -> {last:.4f}"
    assert summary["steps"] == LEARN_STEPS and summary["num_val"] == 4
    split = json.loads((run / "split.json").read_text())
    assert split["silent"] == ["silent"] and len(split["train"]) == 12
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(LEARN_STEPS + 1))
    assert all({"loss", "grad_norm", "lr", "clips_per_s"} <= set(r) for r in rows if r["step"] > 0)
    assert rows[1]["lr"] == pytest.approx(2e-3 / 5)  # warmup counts optimizer steps
    assert (run / "loss.png").stat().st_size > 1000


def test_eval_writes_previews_with_metrics(learned):
    run = learned("pissa")
    step_dir = run / "eval" / f"step_{LEARN_STEPS}"
    report = json.loads((step_dir / "metrics.json").read_text())
    (clip,) = report["clips"]
    for key in (
        "hf_energy_ratio",
        "spectral_centroid_hz",
        "spectral_rolloff_hz",
        "spectral_flatness",
        "temporal_variance",
        "lsd_db",
        "mcd_db",
        "band_correlation",
    ):
        assert key in clip, key
    assert 0 <= clip["hf_energy_ratio"] <= 1 and clip["lsd_db"] > 0
    assert report["mean"]["mcd_db"] == pytest.approx(clip["mcd_db"])  # one clip: its own
    stem = clip["id"]
    for name in (f"{stem}.flac", f"{stem}.reference.flac", f"{stem}.png"):
        assert (step_dir / name).stat().st_size > 0
    assert (run / "eval" / "step_0" / "metrics.json").exists()


@pytest.fixture(scope="module")
def two_workers(features, tmp_path_factory):
    """The baseline's global batch on 2 workers with 2 accumulated micro-batches each; one
    worker dies (os._exit) after step 5, the run survives it (FailureConfig) and continues
    from the step-3 checkpoint. One run serves both tests below, to keep the suite short."""
    out = tmp_path_factory.mktemp("two-workers")
    settings = SHORT | dict(workers=2, grad_accum=2, surgery=True)  # 2 x 2 micro-batches of 1
    summary = run_train(
        config(features, out, init="pissa", fail_at_step=5, max_failures=1, **settings)
    )
    return out, summary


def test_two_workers_equal_one_worker(baseline, two_workers):
    out, _ = two_workers
    one, two = losses(baseline), losses(out)
    assert [s for s, _ in two] == [s for s, _ in one] == list(range(1, 9))
    for (_, a), (_, b) in zip(one, two, strict=True):
        assert b == pytest.approx(a, rel=1e-4)
    a_file = read_adapter(baseline / "adapter.safetensors")
    b_file = read_adapter(out / "adapter.safetensors")
    assert b_file.factors.keys() == a_file.factors.keys()
    # Adam amplifies fp32 roundoff (the two runs sum their gradients in other orders): with
    # losses equal to 1e-7, the layers' deltas measured 3.6e-6 to 7.4e-5 apart (relative L2)
    # over runs, and one element of 6.6e-3 moved by 3.5e-5, so an element-wise bound fails by
    # chance. An adapter two steps behind (the step-6 checkpoint) is 0.30-0.33 away.
    for layer in a_file.factors:
        a, b = a_file.delta(layer), b_file.delta(layer)
        assert float((b - a).norm() / a.norm()) <= 1e-3, layer


def test_interrupted_run_resumes_exactly(features, baseline, tmp_path_factory):
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(TrainFailed, match="--resume"):
        run_train(config(features, out, init="pissa", fail_at_step=5, max_failures=0, **SHORT))
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4, 5]
    with pytest.raises(TrainConfigError, match="already holds"):
        run_train(config(features, out, init="pissa", **SHORT))
    with pytest.raises(TrainConfigError, match="lr"):
        run_train(config(features, out, init="pissa", resume=True, lr=1e-3, **SHORT))
    summary = run_train(config(features, out, init="pissa", resume=True, **SHORT))
    assert summary.details["resumed_from"] == [3]
    assert losses(out) == losses(baseline)  # exactly: steps 4-5 are redone bit for bit
    a = read_adapter(baseline / "adapter.safetensors").tensors()
    b = read_adapter(out / "adapter.safetensors").tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_worker_killed_mid_run_is_survived(two_workers):
    out, summary = two_workers
    assert "step 5" in (out / ".fail_injected").read_text()  # a worker really died
    assert summary.steps == 8 and summary.status == "complete"
    assert summary.details["resumed_from"] == [3]  # the restarted group took the checkpoint
    assert [s for s, _ in losses(out)] == list(range(1, 9))  # each step recorded once
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*"))[-1] == "step_000008"
    assert (out / "adapter.safetensors").exists()


def test_adapter_changes_generation_and_surgery_helps(learned, features):
    run = learned("pissa")
    split = json.loads((run / "split.json").read_text())
    info = inspect_features(str(features))
    clips = _clips(info, split["val"][:1])
    pipe = Pipeline(PipelineConfig("tiny"))
    feats = Features(
        variant="tiny",
        prompt=clips.prompts[0],
        duration=float(clips.durations[0]),
        sync_f=clips.sync_f[0][: int(clips.sync_lengths[0])],
        text_f=clips.text_f[0],
    )
    base = pipe.generate(feats, seed=3, steps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseMismatchWarning)  # trained on this very base
        file = load_adapter(pipe.generator, run / "adapter.safetensors")
    assert file.meta.training["steps"] == LEARN_STEPS and file.meta.training["lr"] == 2e-3
    assert file.meta.training["extra"]["config"]["init"] == "pissa"
    adapted = pipe.generate(feats, seed=3, steps=8)
    change = (adapted - base).norm() / base.norm()
    assert change > 0.05, f"adapter barely changes the audio ({change:.4f})"
    merge_lora(pipe.generator)
    merged = pipe.generate(feats, seed=3, steps=8)
    assert (merged - adapted).norm() / adapted.norm() < 1e-3

    summary = json.loads((run / "summary.json").read_text())["surgery"]
    assert summary["ran"]
    assert summary["calibration_loss_after"] <= summary["calibration_loss_before"]
    # the files themselves: the surgery adapter scores no worse on the calibration clips
    train = _clips(info, split["train"])
    scores = {}
    for name in ("adapter.safetensors", "adapter.surgery.safetensors"):
        gen = load_generator("tiny", duration=MAX_DURATION)
        calib = _calibration(train, gen)
        load_adapter(gen, run / name)
        cfg = SurgeryConfig(num_clips=len(calib), seed=7)
        scores[name] = calibration_loss(gen, calib, cfg)
    assert scores["adapter.surgery.safetensors"] <= scores["adapter.safetensors"] + 1e-6
    assert scores["adapter.safetensors"] == pytest.approx(
        summary["calibration_loss_before"], rel=1e-4
    )


def _clips(info: FeatureInfo, ids: list[str]) -> ClipSet:
    batch = {"path": feature_files(info.path)}
    rows = _read_parts(
        batch,
        root=info.path,
        columns=info.columns(),
        keep=frozenset(ids),
        tensors=info.tensor_columns(),
    )
    return ClipSet.from_batches([rows])


def _calibration(clips: ClipSet, generator):
    from selva_core.flow_loss import FlowBatch
    from selva_ray.train.data import normalized_targets

    clips = clips.select(list(range(min(32, len(clips)))))
    clip_f, sync_f, text_f = clips.conditions(generator)
    x1 = normalized_targets(clips.latent, clips.lengths, generator)
    return FlowBatch(x1, clip_f, sync_f, text_f, clips.lengths)


def test_trained_adapter_loads_in_the_generation_job(learned, features, tmp_path):
    """The adapter file a run writes is what `selva-ray generate --adapter` reads: on the same
    features it changes the tracks, and at strength 0 it gives the tracks of no adapter."""
    import av
    import numpy as np

    from selva_ray.generate import GenerateConfig, run_generate

    adapter = learned("pissa") / "adapter.safetensors"

    def tracks(name: str, adapters: list[str]) -> dict[str, np.ndarray]:
        out = tmp_path / name
        summary = run_generate(
            GenerateConfig(
                input=str(features),
                output=str(out),
                variant="tiny",
                steps=2,
                adapters=adapters,
                batch_size=8,
                progress=False,
            )
        )
        assert summary.failed == 0 and summary.ok == 17
        found = {}
        for path in sorted((out / "audio").iterdir()):
            with av.open(str(path)) as c:
                frames = [f.to_ndarray().reshape(-1) for f in c.decode(c.streams.audio[0])]
            found[path.stem] = np.concatenate(frames).astype(np.float64)
        return found

    base = tracks("base", [])
    adapted = tracks("adapted", [str(adapter)])
    off = tracks("off", [f"{adapter}@0"])
    assert base.keys() == adapted.keys() == off.keys()
    for cid, wav in base.items():
        assert np.array_equal(off[cid], wav), f"{cid}: strength 0 changed the track"
    changes = [np.linalg.norm(adapted[c] - w) / np.linalg.norm(w) for c, w in base.items()]
    assert min(changes) > 0.01, f"the adapter barely changes some tracks: {min(changes):.4f}"
