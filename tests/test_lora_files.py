"""Adapter files: safetensors + JSON metadata, PiSSA saved as a rank-2r delta on the original
base, strength and stacking from files, base-hash warnings, legacy `.pt` conversion and refusal
of pickled code."""

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from model_support import random_flow_batch, tiny_generator
from safetensors import safe_open

from selva_core.build import load_generator
from selva_core.flow_loss import FlowLossConfig, train_lora_steps
from selva_core.lora import (
    AdapterFormatError,
    BaseMismatchWarning,
    apply_lora,
    base_fingerprint,
    load_adapter,
    lora_layers,
    merge_lora,
    read_adapter,
    save_adapter,
    set_strength,
    unmerge_lora,
)
from selva_core.lora.adapter_file import METADATA_KEY
from selva_core.model.generator import Generator
from selva_core.variants import get_spec
from selva_core.weights import UntrustedCheckpointError

# A file-loaded PiSSA delta is applied to W, the trained model ran W_res + s*B@A: same maths,
# different fp32 rounding.
PISSA_FILE_TOLERANCE = 1e-5
TRAINING = {"lr": 1e-3, "batch_size": 2, "seed": 0, "steps": 3, "timestep": "logit_normal"}


@torch.no_grad()
def run(model: Generator, seed: int = 7) -> torch.Tensor:
    b = random_flow_batch(model, 2, seed)
    t = torch.tensor([0.3, 0.8])
    return model(b.x1, b.clip_f, b.sync_f, b.text_f, t)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def trained(init: str = "standard", rank: int = 4, steps: int = 3) -> Generator:
    model = tiny_generator()
    apply_lora(model, rank=rank, init=init, rslora=True)
    train_lora_steps(
        model,
        [random_flow_batch(model, 2, 1)],
        steps,
        lr=3e-2,
        seed=0,
        config=FlowLossConfig(cfg_dropout=0),
    )
    return model.eval()


def header(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        return json.loads(f.metadata()[METADATA_KEY]), shapes


def test_standard_adapter_round_trip_with_metadata(tmp_path):
    model = trained()
    path = tmp_path / "a.safetensors"
    save_adapter(path, model, variant="tiny", training=TRAINING)
    meta, shapes = header(path)
    assert meta["format_version"] == 1
    assert (meta["family"], meta["variant"], meta["init"]) == ("selva", "tiny", "standard")
    assert meta["targets"] == ["attn.qkv"] and meta["rank"] == 4 and meta["rslora"] is True
    assert meta["alpha"] == 8.0 and meta["scale"] == pytest.approx(4.0)
    assert meta["training"]["lr"] == 1e-3 and meta["training"]["batch_size"] == 2
    assert meta["training"]["seed"] == 0 and meta["training"]["steps"] == 3
    assert meta["training"]["extra"] == {"timestep": "logit_normal"}
    assert meta["surgery"] == {"ran": False}
    assert meta["base_hash"] == base_fingerprint(tiny_generator(), list(lora_layers(model)))
    assert meta["base_hash"].startswith("sha256:")
    name = "joint_blocks.0.latent_block.attn.qkv"
    assert shapes[f"{name}.lora_A"] == (4, 128) and shapes[f"{name}.lora_B"] == (384, 4)
    assert len(shapes) == 2 * 7

    fresh = tiny_generator()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same base: no mismatch warning
        load_adapter(fresh, path)
    assert torch.equal(run(fresh), run(model))
    with pytest.raises(ValueError, match="training record needs"):
        save_adapter(tmp_path / "b.safetensors", model, training={"lr": 1.0})


def test_pissa_adapter_is_a_small_delta_that_reproduces_trained_and_base(tmp_path):
    model = trained("pissa")
    base_out = run(tiny_generator())
    trained_out = run(model)
    assert rel(trained_out, base_out) > 1e-3  # training moved the model
    path = tmp_path / "pissa.safetensors"
    file = save_adapter(path, model, variant="tiny", training=TRAINING)
    meta, shapes = header(path)
    assert meta["init"] == "pissa" and meta["trained_rank"] == 4 and meta["rank"] == 8
    assert meta["scale"] == pytest.approx(4.0) and meta["alpha"] == pytest.approx(8 * 2**0.5)
    assert all(k.endswith((".lora_A", ".lora_B")) for k in shapes)  # no base weights
    assert file.num_parameters == 7 * 8 * (128 + 384)
    assert meta["base_hash"] == base_fingerprint(tiny_generator(), list(file.factors))

    fresh = tiny_generator()
    load_adapter(fresh, path)
    err = rel(run(fresh), trained_out)
    print(f"PiSSA file at k=1 vs trained model: {err:.3g}")
    assert err < PISSA_FILE_TOLERANCE
    set_strength(fresh, 0.0)
    assert torch.equal(run(fresh), base_out)
    at_zero = tiny_generator()
    load_adapter(at_zero, path, strength=0.0)
    assert torch.equal(run(at_zero), base_out)


def test_stacked_file_adapters_with_their_own_strengths(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_adapter(a, trained(), variant="tiny")
    save_adapter(b, trained("pissa", rank=2), variant="tiny")
    model = tiny_generator()
    load_adapter(model, a, adapter="a", strength=0.5)
    load_adapter(model, b, adapter="b", strength=1.5)
    stacked = run(model)
    ref = tiny_generator()
    fa, fb = read_adapter(a), read_adapter(b)
    with torch.no_grad():
        for name, m in ref.named_modules():
            if name in fa.factors:
                m.weight += 0.5 * fa.delta(name) + 1.5 * fb.delta(name)
    assert rel(stacked, run(ref)) < 1e-5
    with pytest.raises(ValueError, match="already holds"):
        load_adapter(model, a, adapter="b")
    merge_lora(model)
    assert rel(run(model), stacked) < 1e-5
    unmerge_lora(model)
    set_strength(model, 0.0, "a")
    set_strength(model, 0.0, "b")
    assert torch.equal(run(model), run(tiny_generator()))


def test_loading_onto_other_base_weights_warns_but_works(tmp_path):
    path = tmp_path / "a.safetensors"
    save_adapter(path, trained(), variant="tiny")
    other = tiny_generator()
    with torch.no_grad():
        other.fused_blocks[0].attn.qkv.weight.mul_(1.01)
    with pytest.warns(BaseMismatchWarning, match="trained on base"):
        load_adapter(other, path)
    assert "default" in lora_layers(other)["fused_blocks.0.attn.qkv"].adapters
    # fp32 and bf16 copies of the same checkpoint share a fingerprint
    bf16 = load_generator("tiny", duration=2.0, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_adapter(bf16, path)
    spec = get_spec("small_16k")
    with torch.device("meta"):
        wrong = Generator(spec.generator_config, spec.sequence())
    with pytest.raises(AdapterFormatError, match="another variant"):
        load_adapter(wrong, path)  # layer shapes differ: an error, not just a warning
    assert not lora_layers(wrong)


def test_adapter_file_size_small_16k_rank16(tmp_path):
    spec = get_spec("small_16k")
    with torch.device("meta"):
        model = Generator(spec.generator_config, spec.sequence())
    apply_lora(model, rank=16)
    for m in lora_layers(model).values():  # materialise only the adapter
        m.lora_A.to_empty(device="cpu")
        m.lora_B.to_empty(device="cpu")
        for p in (*m.lora_A.values(), *m.lora_B.values()):
            torch.nn.init.normal_(p)
    expected = 20 * 16 * (448 + 1344)
    for dtype, nbytes in ((torch.float32, 4), (torch.bfloat16, 2)):
        path = tmp_path / f"small_{nbytes}.safetensors"
        file = save_adapter(path, model, variant="small_16k", dtype=dtype)
        assert file.num_parameters == expected == 573_440
        size = path.stat().st_size
        print(f"small_16k r16 attn.qkv adapter: {expected} params, {size} bytes ({dtype})")
        assert expected * nbytes < size < expected * nbytes + 32_000
    meta, _ = header(tmp_path / "small_4.safetensors")
    assert meta["base_hash"] is None  # no base weights on the meta device


def test_unsupported_format_version_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "future.safetensors"
    save_file(
        {"x.lora_A": torch.zeros(1, 2), "x.lora_B": torch.zeros(2, 1)},
        str(path),
        metadata={METADATA_KEY: json.dumps({"format_version": 99})},
    )
    with pytest.raises(AdapterFormatError, match="format_version"):
        read_adapter(path)
    save_file({"x.lora_A": torch.zeros(1, 2)}, str(path))
    with pytest.raises(AdapterFormatError, match="metadata"):
        read_adapter(path)


# ---- the earlier .pt format ------------------------------------------------------------------


def test_legacy_standard_pt_loads(tmp_path):
    base = tiny_generator()
    g = torch.Generator().manual_seed(0)
    names = list(lora_layers(trained()))
    sd = {}
    for n in names:
        sd[f"{n}.lora_A"] = torch.randn(4, 128, generator=g) * 0.1
        sd[f"{n}.lora_B"] = torch.randn(384, 4, generator=g) * 0.1
    meta = {
        "variant": "tiny",
        "rank": 4,
        "alpha": 0,
        "target": "attn.qkv",
        "steps": 100,
        "init_mode": "standard",
        "use_rslora": False,
        "timestep_mode": "uniform",
    }
    path = tmp_path / "adapter_final.pt"
    torch.save({"state_dict": sd, "meta": meta}, path)
    file = read_adapter(path)
    assert file.meta.source == "legacy-pt" and file.meta.scale == 2.0  # alpha 0 meant 2*rank
    assert file.meta.training["extra"]["timestep_mode"] == "uniform"
    load_adapter(base, path)
    ref = tiny_generator()
    with torch.no_grad():
        for n in names:
            ref.get_submodule(n).weight += 2.0 * sd[f"{n}.lora_B"] @ sd[f"{n}.lora_A"]
    assert rel(run(base), run(ref)) < 1e-5
    torch.save(sd, tmp_path / "bare.pt")  # a raw state dict: old loader defaults (alpha = rank)
    assert read_adapter(tmp_path / "bare.pt").meta.scale == 1.0


def test_legacy_pissa_pt_with_residual_weights_converts_to_a_delta(tmp_path):
    """The old trainer's PiSSA: A0 = sqrt(S) V^T, B0 = U sqrt(S) (no division by the scale),
    W_res = W - s * B0 A0 saved as `linear.weight` next to the trained lora_A/lora_B."""
    base = tiny_generator()
    rank, alpha = 4, 8.0
    s = alpha / rank**0.5
    g = torch.Generator().manual_seed(0)
    sd, trained_weights = {}, {}
    for n, m in base.named_modules():
        if not n.endswith("attn.qkv"):
            continue
        u, sv, vh = torch.linalg.svd(m.weight.detach(), full_matrices=False)
        a0 = sv[:rank].sqrt()[:, None] * vh[:rank]
        b0 = u[:, :rank] * sv[:rank].sqrt()
        w_res = m.weight.detach() - s * b0 @ a0
        a = a0 + 0.02 * torch.randn(a0.shape, generator=g)
        b = b0 + 0.02 * torch.randn(b0.shape, generator=g)
        sd.update(
            {
                f"{n}.lora_A": a,
                f"{n}.lora_B": b,
                f"{n}.linear.weight": w_res,
                f"{n}.linear.bias": m.bias.detach().clone(),
            }
        )
        trained_weights[n] = w_res + s * b @ a
    meta = {
        "rank": rank,
        "alpha": alpha,
        "use_rslora": True,
        "init_mode": "pissa",
        "target": ["attn.qkv"],
        "variant": "tiny",
    }
    path = tmp_path / "old_pissa.pt"
    torch.save({"state_dict": sd, "meta": meta}, path)
    with pytest.raises(AdapterFormatError, match="base model"):
        read_adapter(path)
    load_adapter(base, path)
    ref = tiny_generator()
    with torch.no_grad():
        for n, w in trained_weights.items():
            ref.get_submodule(n).weight.copy_(w)
    err = rel(run(base), run(ref))
    print(f"legacy PiSSA .pt converted vs legacy trained model: {err:.3g}")
    assert err < 1e-5
    layer = lora_layers(base)["fused_blocks.0.attn.qkv"]
    assert layer.adapters["default"].rank == 2 * rank


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_in_a_pt_adapter_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "adapter_final.pt"
    sd = {"fused_blocks.0.attn.qkv.lora_A": torch.zeros(4, 128)}
    torch.save({"state_dict": sd, "meta": {"rank": 4}, "payload": _Exploit(marker)}, path)
    with pytest.raises(UntrustedCheckpointError, match="adapter_final.pt"):
        read_adapter(path)
    model = tiny_generator()
    with pytest.raises(UntrustedCheckpointError):
        load_adapter(model, path)
    assert not marker.exists()
    assert not lora_layers(model)
