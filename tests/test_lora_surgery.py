"""The flow-matching objective, the tiny LoRA trainer, and Spectral Surgery actually running:
a trained tiny adapter is edited, its calibration loss does not rise and its spectrum changes."""

import copy

import pytest
import torch
from model_support import tiny_generator

from selva_core.flow_loss import (
    FlowBatch,
    FlowLossConfig,
    drop_conditions,
    flow_matching_loss,
    sample_timesteps,
    train_lora_steps,
    training_loss,
)
from selva_core.lora import (
    SurgeryConfig,
    apply_lora,
    calibration_loss,
    factored_svd,
    load_adapter,
    lora_layers,
    read_adapter,
    save_adapter,
    spectral_surgery,
)
from selva_core.lora.surgery import reweight, sensitivities
from selva_core.model.generator import Generator

CLIPS = 16  # calibration clips in these tests (default 32), to keep the suite fast


def dataset(model: Generator, n: int, seed: int) -> FlowBatch:
    """Learnable clips: sinusoidal latents whose phase follows the text features."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    text = torch.randn(n, c.text_seq_len, c.text_dim, generator=g)
    phase = text.mean(dim=(1, 2)) * 20
    freq = torch.arange(1, c.latent_dim + 1).float() * 0.05
    steps = torch.arange(model.latent_seq_len).float()
    x1 = 1.5 * torch.sin(freq[None, None] * steps[None, :, None] + phase[:, None, None])
    clip = torch.randn(n, model.clip_seq_len, c.clip_dim, generator=g)
    sync = torch.randn(n, model.sync_seq_len, c.sync_dim, generator=g)
    return FlowBatch(x1, clip, sync, text)


def batches_of(data: FlowBatch, size: int = 4) -> list[FlowBatch]:
    return [data.select(slice(i, i + size)) for i in range(0, len(data), size)]


@pytest.fixture(scope="module")
def trained():
    """(base snapshot, trained standard rank-4 adapter model, training batches, losses)."""
    model = tiny_generator()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches_of(dataset(model, 16, 0))
    apply_lora(model, rank=4, rslora=True)
    losses = train_lora_steps(model, data, 40, lr=2e-3, seed=0)
    return base, model.eval(), data, losses


# ---- objective and trainer ---------------------------------------------------------------


def test_timestep_samplers_are_seeded_and_in_range():
    for sampler in ("uniform", "logit_normal"):
        a = sample_timesteps(2000, sampler, generator=torch.Generator().manual_seed(1))
        b = sample_timesteps(2000, sampler, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and a.dtype == torch.float32
        assert a.min() > 0 and a.max() < 1
        assert abs(float(a.median()) - 0.5) < 0.05
    wide = sample_timesteps(4000, "logit_normal", sigma=3.0, generator=torch.Generator())
    narrow = sample_timesteps(4000, "logit_normal", sigma=0.3, generator=torch.Generator())
    assert wide.std() > 2 * narrow.std()
    with pytest.raises(ValueError):
        FlowLossConfig(timestep="cosine")


def test_flow_loss_is_the_velocity_mse():
    model = tiny_generator()
    data = dataset(model, 3, 1)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(data.x1.shape, generator=g)
    t = torch.tensor([0.0, 0.4, 1.0])
    cond = model.preprocess_conditions(data.clip_f, data.sync_f, data.text_f)
    with torch.no_grad():
        per_clip = flow_matching_loss(model, data.x1, cond, x0, t, reduction="none")
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * data.x1
        x_t[2] = data.x1[2]  # t = 1 is data
        expected = (model.predict_flow(x_t, t, cond) - (data.x1 - x0)).square().mean(dim=(1, 2))
        mean = flow_matching_loss(model, data.x1, cond, x0, t)
    torch.testing.assert_close(per_clip, expected)
    torch.testing.assert_close(mean, expected.mean())


def test_cfg_dropout_replaces_video_and_text_independently():
    model = tiny_generator()
    data = dataset(model, 64, 2)
    args = (model, data.clip_f, data.sync_f, data.text_f)
    clip, sync, text, video, txt = drop_conditions(*args, 1.0, torch.Generator())
    assert video.all() and txt.all()
    assert torch.equal(clip, model.empty_clip_feat.expand_as(clip))
    assert torch.equal(sync, model.empty_sync_feat.expand_as(sync))
    assert torch.equal(text, model.empty_string_feat.expand_as(text))
    clip, sync, text, video, txt = drop_conditions(*args, 0.0, torch.Generator())
    assert not video.any() and not txt.any() and torch.equal(clip, data.clip_f)
    clip, sync, text, video, txt = drop_conditions(*args, 0.5, torch.Generator().manual_seed(3))
    assert (video & ~txt).any() and (txt & ~video).any()  # independent groups
    assert torch.equal(clip[~video], data.clip_f[~video])
    assert torch.equal(sync[video], model.empty_sync_feat.expand(int(video.sum()), *sync.shape[1:]))
    assert torch.equal(text[~txt], data.text_f[~txt])
    again = drop_conditions(*args, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(again[3], video) and torch.equal(again[4], txt)
    loss_a = training_loss(model, data.select(range(4)), generator=torch.Generator().manual_seed(5))
    loss_b = training_loss(model, data.select(range(4)), generator=torch.Generator().manual_seed(5))
    assert torch.equal(loss_a, loss_b)


def test_training_moves_only_the_adapter_and_lowers_the_loss(trained):
    base, model, _, losses = trained
    print(f"tiny LoRA training loss: first {losses[0]:.4f}, last-8 mean {sum(losses[-8:]) / 8:.4f}")
    assert sum(losses[-8:]) / 8 < losses[0] - 0.3
    for k, v in model.state_dict().items():
        key = k.replace(".base.", ".")
        if key in base:
            assert torch.equal(v, base[key]), k
    assert all(m.lora_B["default"].abs().max() > 0 for m in lora_layers(model).values())


# ---- surgery pieces ----------------------------------------------------------------------


def test_factored_svd_matches_the_dense_delta():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 40, generator=g), torch.randn(70, 5, generator=g)
    u, sigma, v = factored_svd(a, b, 2.5)
    dense = 2.5 * b.double() @ a.double()
    torch.testing.assert_close(u @ torch.diag(sigma) @ v.T, dense)
    torch.testing.assert_close(sigma, torch.linalg.svdvals(dense)[:5])
    torch.testing.assert_close(u.T @ u, torch.eye(5, dtype=torch.float64))


def test_policies_follow_the_sign_and_keep_the_l1_norm():
    sigma = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    g = torch.tensor([1.5, -0.5, 0.2, -2.0, 0.8], dtype=torch.float64)
    gd = reweight(sigma, g, SurgeryConfig(policy="gd"))
    torch.testing.assert_close(gd.sum(), sigma.sum())
    ratio = gd / sigma
    assert ratio[0] < ratio[4] < ratio[2] < ratio[1] < ratio[3]  # raises loss -> shrinks most
    sel = reweight(sigma, g, SurgeryConfig(policy="abs_select"))
    torch.testing.assert_close(sel.sum(), sigma.sum())
    ratio = sel / sigma  # |g| largest: index 3, smallest: index 2
    torch.testing.assert_close(ratio[3] / ratio[0], torch.tensor(1.25 / 1.0, dtype=ratio.dtype))
    torch.testing.assert_close(ratio[2] / ratio[0], torch.tensor(0.8 / 1.0, dtype=ratio.dtype))


def test_sensitivity_is_the_derivative_of_the_calibration_loss(trained):
    _, model, data, _ = trained
    model = copy.deepcopy(model)
    config = SurgeryConfig(num_clips=8)
    clips = FlowBatch.cat(data).select(range(8))
    layers = lora_layers(model)
    spectra = {
        n: factored_svd(*m.delta_factors("default"), m.adapters["default"].scale)
        for n, m in layers.items()
    }
    grads = sensitivities(model, "default", clips, spectra, config)
    name = "joint_blocks.1.latent_block.attn.qkv"
    u, sigma, v = spectra[name]
    layer, scale = layers[name], layers[name].adapters["default"].scale
    eps = 1e-2 * float(sigma[0])
    for k in (0, 2):
        values = []
        for sign in (1, -1):
            s = sigma.clone()
            s[k] += sign * eps
            root = (s / scale).sqrt()
            layer.set_factors("default", (root[:, None] * v.T).float(), (u * root).float())
            values.append(calibration_loss(model, clips, config))
        numeric = (values[0] - values[1]) / (2 * eps)
        assert float(grads[name][k]) == pytest.approx(numeric, rel=0.05, abs=2e-5)


# ---- surgery end to end ------------------------------------------------------------------


def test_surgery_runs_lowers_calibration_loss_and_is_recorded(trained, tmp_path):
    _, model, data, _ = trained
    model = copy.deepcopy(model)
    config = SurgeryConfig(num_clips=CLIPS)
    assert config.policy == "abs_select"  # the measured default
    before = {n: m.delta_factors("default") for n, m in lora_layers(model).items()}
    report = spectral_surgery(model, data, config)
    print(report.summary())
    assert report.num_clips == CLIPS and len(report.layers) == 7
    assert report.loss_after <= report.loss_before
    clips = FlowBatch.cat(data).select(range(CLIPS))
    assert calibration_loss(model, clips, config) == pytest.approx(report.loss_after, rel=1e-6)
    changed = 0
    for row in report.layers:
        layer = lora_layers(model)[row.layer]
        a, b = layer.delta_factors("default")
        assert a.shape == before[row.layer][0].shape  # rank kept
        assert row.kept + row.shrunk == row.rank == 4
        new = torch.tensor(row.sigma_after, dtype=torch.float64)
        old = torch.tensor(row.sigma_before, dtype=torch.float64)
        torch.testing.assert_close(new.sum(), old.sum())  # L1 preserved
        changed += int(not torch.allclose(new, old, rtol=1e-4))
        # the new factors realise U diag(sigma') V^T with the old singular vectors
        u, _, v = factored_svd(*before[row.layer], layer.adapters["default"].scale)
        expected = (u * new) @ v.T
        got = layer.adapters["default"].scale * b.double() @ a.double()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert changed == 7
    assert report.shrunk > 0
    path = tmp_path / "s.safetensors"
    save_adapter(path, model, variant="tiny")
    surgery = read_adapter(path).meta.surgery
    assert surgery["ran"] and surgery["settings"]["policy"] == "abs_select"
    assert surgery["settings"]["num_clips"] == CLIPS and surgery["settings"]["seed"] == 0
    assert surgery["layers"]["fused_blocks.0.attn.qkv"]["kept"] >= 0
    assert surgery["loss_after"] == report.loss_after


def test_both_policies_measured_on_the_same_adapter(trained):
    _, model, data, _ = trained
    results = {}
    for policy in ("gd", "abs_select"):
        report = spectral_surgery(copy.deepcopy(model), data, SurgeryConfig(policy, CLIPS))
        results[policy] = (report.loss_before, report.loss_after)
        print(f"{policy}: calibration loss {report.loss_before:.5f} -> {report.loss_after:.5f}")
    assert results["gd"][0] == results["abs_select"][0]  # same reproducible calibration
    assert results["gd"][1] != results["abs_select"][1]
    assert results["abs_select"][1] <= results["abs_select"][0]


def test_surgery_on_a_pissa_adapter_keeps_a_rank_2r_delta(tmp_path):
    model = tiny_generator()
    data = batches_of(dataset(model, 8, 4))
    apply_lora(model, rank=2, init="pissa", rslora=True)
    train_lora_steps(model, data, 6, lr=2e-3, seed=1)
    model.eval()
    report = spectral_surgery(model, data, SurgeryConfig(num_clips=8))
    assert report.loss_after <= report.loss_before
    assert all(r.rank == 4 for r in report.layers)
    assert not any(m.adapters["default"].pissa for m in lora_layers(model).values())
    path = tmp_path / "p.safetensors"
    save_adapter(path, model, variant="tiny")
    meta = read_adapter(path).meta
    assert (meta.init, meta.rank, meta.trained_rank) == ("pissa", 4, 2)
    fresh = tiny_generator()
    load_adapter(fresh, path)
    clips = FlowBatch.cat(data)
    torch.testing.assert_close(
        calibration_loss(fresh, clips, SurgeryConfig(num_clips=8)),
        report.loss_after,
        rtol=1e-5,
        atol=0,
    )
