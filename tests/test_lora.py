"""LoRA layers on the generator: target matching and real-size counts, init modes (standard,
rsLoRA scale, faithful PiSSA), strength, stacking, merge/unmerge, dtypes and base weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from model_support import random_flow_batch, tiny_generator
from torch import nn

from selva_core.build import load_generator, random_generator
from selva_core.lora import (
    LoRAConfig,
    LoRALinear,
    LoRATargetError,
    apply_lora,
    base_state_dict,
    compute_pissa_init,
    find_targets,
    load_base_weights,
    lora_layers,
    lora_parameters,
    merge_lora,
    principal_factors,
    randomized_svd,
    remove_lora,
    set_strength,
    target_matches,
    unmerge_lora,
)
from selva_core.model.generator import Generator
from selva_core.variants import get_spec

# fp32 forward of the whole tiny generator; PiSSA moves s*B0@A0 out of W and back in.
PISSA_INIT_TOLERANCE = 1e-5


def inputs(model: Generator, batch: int = 2, seed: int = 0):
    b = random_flow_batch(model, batch, seed)
    t = torch.rand(batch, generator=torch.Generator().manual_seed(seed + 1000))
    return b.x1, b.clip_f, b.sync_f, b.text_f, t


@torch.no_grad()
def run(model: Generator, args) -> torch.Tensor:
    return model(*args)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def randomize_b(model: nn.Module, adapter: str = "default", seed: int = 1, std: float = 0.05):
    """Stand-in for training: a non-zero B so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model, adapter).values():
            b = m.lora_B[adapter]
            b.add_(torch.randn(b.shape, generator=g) * std)


# ---- target matching and counts ------------------------------------------------------------


def test_targets_match_whole_dotted_components():
    assert target_matches("joint_blocks.0.latent_block.attn.qkv", "attn.qkv")
    assert target_matches("fused_blocks.3.attn.qkv", "qkv")
    assert not target_matches("blocks.0.attn.xqkv", "qkv")
    assert not target_matches("blocks.0.attn.qkv_proj", "qkv")
    assert not target_matches("qkv", "attn.qkv")
    assert target_matches("joint_blocks.2.text_block.linear1", "joint_blocks.*.text_block.linear1")
    assert not target_matches("fused_blocks.2.linear1", "text_block.linear1")

    model = nn.Sequential()
    model.add_module("xqkv", nn.Linear(4, 4))
    model.add_module("conv", nn.Conv1d(4, 4, 3))
    with pytest.raises(LoRATargetError, match="qkv"):
        apply_lora(model, targets=("qkv",))
    layers, skipped = find_targets(model, ["conv"])
    assert layers == [] and skipped == ["conv"]


@pytest.mark.parametrize(
    "variant, qkv, linear1, conv_linear1, adaln",
    [("small_16k", 20, 3, 15, 21), ("medium_44k", 20, 3, 15, 21), ("large_44k", 35, 6, 27, 36)],
)
def test_real_size_target_counts(variant, qkv, linear1, conv_linear1, adaln):
    spec = get_spec(variant)
    with torch.device("meta"):
        model = Generator(spec.generator_config, spec.sequence())
    assert len(find_targets(model, ["attn.qkv"])[0]) == qkv
    layers, skipped = find_targets(model, ["linear1"])
    # Only the text-stream linear1 is an nn.Linear; the rest are ChannelLastConv1d.
    assert len(layers) == linear1 and all(".text_block." in n for n in layers)
    assert len(skipped) == conv_linear1
    assert len(find_targets(model, ["adaLN_modulation.1"])[0]) == adaln
    applied = apply_lora(model, targets=("attn.qkv", "linear1", "adaLN_modulation.1"), rank=2)
    assert applied.count == qkv + linear1 + adaln


def test_adapter_parameter_count_small_16k_rank16():
    spec = get_spec("small_16k")
    with torch.device("meta"):
        model = Generator(spec.generator_config, spec.sequence())
    applied = apply_lora(model, rank=16)
    h = spec.generator_config.hidden_dim
    assert applied.count == 20
    # r * (in + out) per layer: 20 * 16 * (448 + 1344)
    assert sum(p.numel() for p in lora_parameters(model)) == 20 * 16 * (h + 3 * h) == 573_440
    assert all(p.is_meta and p.dtype == torch.float32 for p in lora_parameters(model))


# ---- init modes ----------------------------------------------------------------------------


def test_standard_init_leaves_output_exact_and_is_reproducible():
    model = tiny_generator()
    args = inputs(model)
    ref = run(model, args)
    applied = apply_lora(model, rank=4)
    assert applied.count == 7 and applied.config.scale == 2.0  # alpha defaults to 2 * rank
    assert torch.equal(run(model, args), ref)  # B = 0
    again = tiny_generator()
    apply_lora(again, rank=4)
    a1 = [m.lora_A["default"] for m in lora_layers(model).values()]
    a2 = [m.lora_A["default"] for m in lora_layers(again).values()]
    assert all(torch.equal(x, y) for x, y in zip(a1, a2, strict=True))
    assert not torch.equal(a1[0], a1[1])  # per-layer seeds
    assert all(p.requires_grad for p in lora_parameters(model))
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".base." in n)
    # Kaiming-uniform(a=sqrt(5)) bound is 1/sqrt(fan_in)
    assert 0.5 / 128**0.5 < a1[0].abs().max() <= 1 / 128**0.5


def test_scales():
    assert LoRAConfig(rank=16).scale == 2.0
    assert LoRAConfig(rank=16, rslora=True).scale == pytest.approx(32 / 4)
    assert LoRAConfig(rank=16, alpha=16, rslora=True).scale == pytest.approx(4.0)
    assert LoRAConfig(rank=8, alpha=4).scale == 0.5
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(init="pissa", dropout=0.1)


def test_dropout_acts_on_the_lora_input_only():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = LoRALinear(copy.deepcopy(base))
    layer.add_adapter("d", 4, 0.5, dropout=0.5)
    with torch.no_grad():
        layer.lora_B["d"].normal_()
    a, b = layer.lora_A["d"], layer.lora_B["d"]
    x = torch.randn(32, 16)
    layer.train()
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    expected = base(x) + 0.5 * F.linear(F.linear(F.dropout(x, 0.5, True), a), b)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    layer.eval()
    torch.testing.assert_close(layer(x), base(x) + 0.5 * F.linear(F.linear(x, a), b))


def test_pissa_init_reproduces_the_base_model():
    model = tiny_generator()
    args = inputs(model)
    ref = run(model, args)
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith("qkv")}
    applied = apply_lora(model, rank=4, init="pissa", rslora=True)
    s = applied.config.scale
    assert s == pytest.approx(8 / 2)
    err = rel(run(model, args), ref)
    print(f"PiSSA init relative output error (fp32): {err:.3g}")
    assert err < PISSA_INIT_TOLERANCE

    name = "joint_blocks.1.latent_block.attn.qkv"
    layer = lora_layers(model)[name]
    w = weights[name]
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    a0, b0 = layer.pissa_A0["default"], layer.pissa_B0["default"]
    principal = u[:, :4] @ torch.diag(sv[:4]) @ vh[:4]
    # faithful: singular values divided by the scale, so s * B0 @ A0 is the principal part
    torch.testing.assert_close(s * b0 @ a0, principal, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.linalg.svdvals(b0 @ a0)[:4], sv[:4] / s)
    # the residual base holds exactly the trailing spectrum
    torch.testing.assert_close(
        torch.linalg.svdvals(layer.base.weight)[:-4], sv[4:], atol=1e-5, rtol=1e-4
    )
    assert torch.equal(layer.lora_A["default"], a0) and torch.equal(layer.lora_B["default"], b0)


def test_pissa_init_is_deterministic_and_can_be_broadcast():
    model, other = tiny_generator(), tiny_generator()
    config = LoRAConfig(rank=4, init="pissa")
    first = compute_pissa_init(model, config)
    second = compute_pissa_init(model, config)
    assert all(torch.equal(first[n].a0, second[n].a0) for n in first)
    assert all(torch.equal(first[n].b0, second[n].b0) for n in first)
    # "rank 0 computes, everyone else receives": identical resulting models
    apply_lora(model, config)
    apply_lora(other, config, pissa_init={n: copy.deepcopy(f) for n, f in first.items()})
    for (n, p), (_, q) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    untouched = tiny_generator()
    with pytest.raises(ValueError, match="do not match"):
        apply_lora(untouched, LoRAConfig(rank=4, init="pissa", rslora=True), pissa_init=first)
    assert not lora_layers(untouched)  # validated before any layer changed
    with pytest.raises(ValueError, match="already exists"):
        apply_lora(model, config)


def test_randomized_svd_is_seeded_and_accurate_on_a_decaying_spectrum():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(96, 40, generator=g))
    v, _ = torch.linalg.qr(torch.randn(64, 40, generator=g))
    spectrum = 0.7 ** torch.arange(40.0)
    w = u @ torch.diag(spectrum) @ v.T
    r1 = randomized_svd(w, 6, niter=4, seed=3)
    r2 = randomized_svd(w, 6, niter=4, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(r1, r2, strict=True))
    torch.testing.assert_close(r1[1], spectrum[:6], rtol=1e-4, atol=1e-6)
    fast = principal_factors(w, 6, 2.0, niter=4, seed=3)
    full = principal_factors(w, 6, 2.0)
    torch.testing.assert_close(fast.b0 @ fast.a0, full.b0 @ full.a0, rtol=1e-3, atol=1e-5)


# ---- strength, stacking, merge --------------------------------------------------------------


def test_strength_zero_is_exactly_the_base_and_one_the_trained_model():
    model = tiny_generator()
    args = inputs(model)
    ref = run(model, args)
    apply_lora(model, rank=4)
    randomize_b(model)
    trained = run(model, args)
    assert rel(trained, ref) > 1e-2
    set_strength(model, 0.0)
    assert torch.equal(run(model, args), ref)
    set_strength(model, 1.0)
    assert torch.equal(run(model, args), trained)


def test_live_pissa_strength_interpolates_the_delta_against_the_original_weight():
    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    w = base.weight.detach().clone()
    layer = LoRALinear(copy.deepcopy(base))
    layer.add_adapter("p", 3, 1.5)
    f = principal_factors(w, 3, 1.5)
    layer.init_pissa("p", f.a0, f.b0)
    with torch.no_grad():
        layer.lora_A["p"].add_(0.1 * torch.randn(3, 24))
        layer.lora_B["p"].add_(0.1 * torch.randn(40, 3))
    a, b = layer.delta_factors("p")
    assert a.shape == (6, 24) and b.shape == (40, 6)  # rank-2r delta on the original weight
    delta = 1.5 * b @ a
    x = torch.randn(5, 24)
    for k in (0.0, 0.3, 1.0):
        layer.set_strength("p", k)
        expected = F.linear(x, w + k * delta, base.bias)
        torch.testing.assert_close(layer(x), expected, atol=2e-5, rtol=1e-5)
        layer.merge()
        torch.testing.assert_close(layer(x), expected, atol=2e-5, rtol=1e-5)
        layer.unmerge()


def test_stacked_adapters_add_their_scaled_deltas():
    torch.manual_seed(0)
    base = nn.Linear(10, 8)
    layer = LoRALinear(copy.deepcopy(base))
    layer.add_adapter("a", 2, 1.0)
    layer.add_adapter("b", 3, 0.5)
    with torch.no_grad():
        layer.lora_B["a"].normal_()
        layer.lora_B["b"].normal_()
    layer.set_strength("a", 0.25)
    layer.set_strength("b", -1.0)
    d_a = layer.lora_B["a"] @ layer.lora_A["a"]
    d_b = 0.5 * layer.lora_B["b"] @ layer.lora_A["b"]
    x = torch.randn(4, 10)
    expected = F.linear(x, base.weight + 0.25 * d_a - d_b, base.bias)
    torch.testing.assert_close(layer(x), expected)


def test_merge_unmerge_round_trip():
    model = tiny_generator()
    args = inputs(model)
    apply_lora(model, rank=4)
    apply_lora(model, rank=2, adapter="second", seed=5)
    randomize_b(model)
    randomize_b(model, "second", seed=2)
    set_strength(model, 0.7, "second")
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    unmerged = run(model, args)
    merge_lora(model)
    assert all(s.merged for m in lora_layers(model).values() for s in m.adapters.values())
    merged = run(model, args)
    err = rel(merged, unmerged)
    print(f"merged vs unmerged relative error: {err:.3g}")
    assert err < 1e-5
    set_strength(model, 0.0, "second")  # re-merges at the new strength
    set_strength(model, 0.7, "second")
    unmerge_lora(model)
    for n, p in model.state_dict().items():
        assert torch.equal(p, before[n]), n  # merge kept a copy: exact
    assert torch.equal(run(model, args), unmerged)
    merge_lora(model, keep_copy=False)
    unmerge_lora(model)  # subtracts: exact up to fp32 rounding
    for n, p in model.state_dict().items():
        torch.testing.assert_close(p, before[n], atol=1e-6, rtol=0, msg=n)


# ---- dtype, device, base weights -----------------------------------------------------------


def test_lora_parameters_keep_their_dtype_on_casts_but_follow_devices():
    model = load_generator("tiny", duration=2.0, dtype=torch.bfloat16)
    apply_lora(model, rank=4)
    assert all(p.dtype == torch.float32 for p in lora_parameters(model))
    model.to(torch.float16).to(torch.bfloat16)
    layer = next(iter(lora_layers(model).values()))
    assert layer.base.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in lora_parameters(model))
    randomize_b(model)
    args = inputs(model)
    out = model(*args)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    grads = [p.grad for p in lora_parameters(model)]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    model.to("meta")
    assert all(p.is_meta and p.dtype == torch.float32 for p in lora_parameters(model))
    assert layer.base.weight.is_meta
    bf16 = tiny_generator()
    apply_lora(bf16, rank=4, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in lora_parameters(bf16))


def test_published_weights_load_into_a_wrapped_model():
    published = tiny_generator().state_dict()
    model = random_generator("tiny", seed=99)
    model.set_sequence(get_spec("tiny").sequence(2.0))
    apply_lora(model, rank=4, targets=("attn.qkv", "linear1"))
    load_base_weights(model, published)
    assert base_state_dict(model).keys() == published.keys()
    for k, v in base_state_dict(model).items():
        assert torch.equal(v, published[k]), k
    reference = tiny_generator()
    args = inputs(model)
    assert torch.equal(run(model.eval(), args), run(reference, args))
    with pytest.raises(RuntimeError, match="missing"):
        load_base_weights(model, {k: v for k, v in published.items() if "qkv" not in k})


def test_remove_lora_gives_back_plain_linears():
    model = tiny_generator()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, init="pissa")
    apply_lora(model, rank=2, adapter="extra", targets=("linear1",))
    remove_lora(model)
    assert not lora_layers(model)
    assert model.state_dict().keys() == reference.keys()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, reference[k], atol=1e-6, rtol=0, msg=k)
    assert type(model.joint_blocks[0].latent_block.attn.qkv) is nn.Linear
