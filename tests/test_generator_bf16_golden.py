"""bf16 fidelity measured against the official code run in bf16 (issue #25).

tests/golden_bf16/<family>/ holds what the official generator (jnwnlee/selva 70a8589) computes
in bf16 on the fp32 golden fixtures' weights and inputs, cast as its demo.py casts
(scripts/make_bf16_golden.py), once per family of CPU bf16 kernels (AMX, AVX-512 BF16): the
official outputs themselves differ between families by more than the checks allow, so a machine
is compared with its own family's. Three checks, figures in docs/benchmarks.md ("bf16 golden"):

1. Same network: ours in bf16 with the official demo's three roundings (t and the timestep table
   in bf16, a bf16 Euler state) and the plain kernels (autograd on, so the CPU fast paths step
   aside) reproduces every official bf16 output. Measured: bit for bit, at 1 and 2 threads, on
   avx512_bf16 (Zen 4) and on amx_bf16 (Sapphire Rapids), each against its own family's.
   Anything that changes one bf16 rounding shows: the fused fast paths alone move the flow by
   7.8e-3, our model in fp32 by 1.6e-2, a 1 % change of one weight by >= 9e-3.
2. Our bf16 path as shipped (fast paths on, fp32 timestep table and Euler state) stays within
   about 2x the measured distance of the official bf16 outputs, and no further from the fp32
   official outputs than the official bf16 ones are.
3. v2: the official bf16 demo rounds v2's timestep table (arguments up to 1e4 rad) to bf16 and
   its flow is 0.68 rel L2 from its own fp32 output; ours keeps that table fp32 and stays at
   1.5e-2. So for v2 our shipped path is held to the fp32 fixture, not to the official bf16.
"""

from __future__ import annotations

import pytest
import torch
from golden_support import (
    assert_bf16_pairs_with,
    find_fixtures,
    fixture_ids,
    load_fixture,
    load_official_bf16,
    rel_l2,
)

from selva_core.model.generator import Generator, GeneratorConfig
from selva_core.sampling import SamplerConfig, sample_latents

BF16 = torch.bfloat16
REGENERATE = (
    "python scripts/make_bf16_golden.py --official <jnwnlee/selva at 70a8589> "
    "--golden $SELVA_GOLDEN_DIR --out tests/golden_bf16"
)
CONDS = ("cond_clip_f", "cond_sync_f", "cond_text_f", "cond_clip_f_c", "cond_text_f_c")
FLOWS = ("flow", "flow_uncond_negtext")
SAMPLES = ("sample_negtext", "sample_negtext_unnorm", "sample_emptystr")

# 1. Same roundings, plain kernels: measured 0 (bit-equal) against the official outputs of the
#    CPU's own kernel family (across families the official outputs differ by up to 8.5e-3 on
#    the flows, 1.8e-2 on the samples, so one set cannot serve both); 3e-3, 2.6x below the
#    smallest real divergence measured (7.8e-3: our CPU fast paths alone).
MATCHED_TOL = 3e-3
# 2. Shipped bf16 path vs official bf16, relative L2; measured on the v1 fixture:
#    conditions <= 4.2e-4, flows 9.6e-3, samples 1.74e-2.
SHIPPED_TOL = {"cond": 2e-3, "flow": 2e-2, "sample": 3.5e-2}
# ... and its distance to the fp32 official outputs at most this factor of official bf16's
#    (measured 0.98-1.00 on v1: flows 1.63e-2 both, samples 2.83e-2 vs 2.88e-2).
NO_WORSE = 1.25
# 3. v2 against fp32: ours measured flows 1.5e-2, samples 2.5e-2; official bf16 0.68 / 0.33.
V2_FP32_TOL = {"flow": 3e-2, "sample": 5e-2}

FP32_FIXTURES = find_fixtures("generator_")


def _kind(name: str) -> str:
    return "cond" if name.startswith("cond_") else "flow" if name in FLOWS else "sample"


def _build(fx, dtype: torch.dtype, state: dict | None = None) -> Generator:
    cfg = fx.config
    model = Generator(GeneratorConfig.from_dict(cfg)).eval()
    model.update_seq_lengths(cfg["latent_seq_len"], cfg["clip_seq_len"], cfg["sync_seq_len"])
    model.load_weights(fx.state if state is None else state)
    return model.to(dtype).requires_grad_(False)


def _conditions_and_flows(model: Generator, i: dict) -> tuple[dict, object, object]:
    """The condition and flow outputs both paths share, with the conditions (prompt and
    negative text) their sampling goes on from."""
    cond = model.preprocess_conditions(i["clip_f"], i["sync_f"], i["text_f"])
    out = {n: getattr(cond, n[5:]) for n in CONDS}
    out["flow"] = model(i["latent"], i["clip_f"], i["sync_f"], i["text_f"], i["t"])
    neg = model.empty_conditions(i["latent"].shape[0], negative_text_f=i["neg_text_f"])
    out["flow_uncond_negtext"] = model.predict_flow(i["latent"], i["t"], neg)
    return out, cond, neg


def shipped_outputs(model: Generator, fx) -> dict[str, torch.Tensor]:
    """Our bf16 path as the pipeline runs it: fp32 inputs handed over, fp32 Euler state."""
    i, cfg = fx.inputs, fx.config
    b = i["latent"].shape[0]
    with torch.no_grad():
        out, cond, neg = _conditions_and_flows(model, i)
        sampler = SamplerConfig(cfg["num_steps"], cfg["cfg_strength"], batch_cfg=False)
        x = sample_latents(model, cond, neg, i["x0"], sampler)
        out["sample_negtext"] = x
        out["sample_negtext_unnorm"] = model.unnormalize(x)
        out["sample_emptystr"] = sample_latents(
            model, cond, model.empty_conditions(b), i["x0"], sampler
        )
    return {k: v.float() for k, v in out.items()}


def official_rounding_outputs(model: Generator, fx) -> dict[str, torch.Tensor]:
    """Our network with the official bf16 demo's roundings: t and the timestep table rounded to
    bf16 (its `.to(bfloat16)` casts the table; its ODE wrapper gives t the latent dtype), the
    Euler state, CFG mix and un-normalisation in bf16. Autograd on: the plain kernels."""
    i, cfg = fx.inputs, fx.config
    model.t_embed.freqs = model.t_embed.freqs.to(BF16).float()
    i = {k: v.to(BF16) if v.is_floating_point() else v for k, v in i.items()}
    b, w, steps = i["latent"].shape[0], cfg["cfg_strength"], cfg["num_steps"]
    with torch.enable_grad():
        out, cond, neg = _conditions_and_flows(model, i)
        ts = torch.linspace(0, 1, steps + 1)
        for name, empty in (("negtext", neg), ("emptystr", model.empty_conditions(b))):
            x = i["x0"]
            for k in range(steps):
                t = ts[k] * torch.ones(b, dtype=BF16)
                v_c = model.predict_flow(x, t, cond).to(BF16)  # no-op for a bf16 model
                v_u = model.predict_flow(x, t, empty).to(BF16)
                x = x + (ts[k + 1] - ts[k]) * (w * v_c + (1 - w) * v_u)
            assert x.dtype == BF16
            out[f"sample_{name}"] = x
            if name == "negtext":
                out["sample_negtext_unnorm"] = x * model.latent_std.to(BF16) + model.latent_mean.to(
                    BF16
                )
    assert not any(v.requires_grad for v in out.values())
    return {k: v.detach().float() for k, v in out.items()}


@pytest.fixture(scope="module", params=FP32_FIXTURES, ids=fixture_ids(FP32_FIXTURES))
def pair(request):
    fx = load_fixture(request.param)
    meta, official = load_official_bf16(request.param, REGENERATE)
    return fx, meta, official


def test_golden_bf16_fixture_pairs_with_the_fp32_fixture(pair):
    fx, meta, official = pair
    assert_bf16_pairs_with(fx, meta, official, set(fx.outputs), REGENERATE)


@torch.no_grad()
def test_golden_bf16_same_roundings_reproduce_official_bf16(pair):
    fx, _, official = pair
    ours = official_rounding_outputs(_build(fx, BF16), fx)
    worst = {k: rel_l2(ours[k], official[k].float()) for k in official}
    bad = {k: f"{r:.2e}" for k, r in worst.items() if r > MATCHED_TOL}
    assert not bad, f"ours vs official bf16 beyond {MATCHED_TOL:.0e} rel L2: {bad}"


def test_golden_bf16_shipped_path_tracks_official_bf16(pair):
    fx, _, official = pair
    ours = shipped_outputs(_build(fx, BF16), fx)
    v2 = bool(fx.config["v2"])
    for name, ref16 in official.items():
        kind = _kind(name)
        ref32 = fx.outputs[name]
        mine32, theirs32 = rel_l2(ours[name], ref32), rel_l2(ref16, ref32)
        if v2 and kind != "cond":
            # official bf16 v2 is far off its own fp32 (bf16 timestep table); ours is not
            assert theirs32 > 0.2, f"{name}: official bf16 v2 now {theirs32:.2e} from fp32"
            assert mine32 <= V2_FP32_TOL[kind], f"{name}: ours bf16 {mine32:.2e} from fp32"
            continue
        r = rel_l2(ours[name], ref16.float())
        assert r <= SHIPPED_TOL[kind], (
            f"{name}: {r:.2e} from official bf16 (tol {SHIPPED_TOL[kind]})"
        )
        assert mine32 <= NO_WORSE * theirs32, (
            f"{name}: ours bf16 {mine32:.2e} from fp32, official bf16 {theirs32:.2e}"
        )


def test_golden_bf16_check_tells_fp32_and_a_perturbed_weight_apart(pair):
    """The same-roundings check is not passed by our model in fp32, nor by one weight off 1 %."""
    fx, _, official = pair
    fp32 = official_rounding_outputs(_build(fx, torch.float32), fx)
    assert rel_l2(fp32["flow"], official["flow"].float()) > 2 * MATCHED_TOL
    key = "joint_blocks.0.latent_block.attn.qkv.weight"
    state = {k: v * 1.01 if k == key else v for k, v in fx.state.items()}
    ours = official_rounding_outputs(_build(fx, BF16, state), fx)
    assert rel_l2(ours["flow"], official["flow"].float()) > 2 * MATCHED_TOL
