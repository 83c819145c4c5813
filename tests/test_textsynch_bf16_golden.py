"""TextSynch bf16 fidelity measured against the official code run in bf16 (issue #25).

tests/golden_bf16/<family>/textsynch_*_bf16.safetensors holds what the official TextSynch
(jnwnlee/selva 70a8589) computes in bf16 on the fp32 fixture's weights and inputs, cast as its
demo casts (scripts/make_bf16_golden.py), once per family of CPU bf16 kernels (AMX, AVX-512
BF16; the official outputs differ between them by up to 6.3e-3). Figures in
docs/benchmarks.md ("bf16 golden").

1. Same roundings: the official MotionFormer attention is explicit bf16 math (q scaled, q k^T,
   softmax and the value sum each rounded to bf16) and its cross-attention hands SDPA a full
   (B, 1, Lq, Lk) mask. With those two substituted into our modules and the plain kernels
   (autograd on, so the CPU fast paths step aside), ours reproduces the official text features,
   `text_proj`, `mformer_t0` and `xattn_t0` bit for bit. The last step, the spatial pooling
   `nn.TransformerEncoderLayer`, is kernel-bound: the official layer itself moves by 3.7e-3 rel
   L2 between its inference fast path (what the demo runs) and its plain path, and ours (CLS row
   only) lands 4.4e-3 from the former; `sync_f` is held to that spread.
2. Our bf16 path as shipped (our SDPA and fast paths, fp32 inputs handed over) stays within
   about 2x the measured distance of the official bf16 outputs, and no further from the fp32
   official outputs than the official bf16 ones are.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from golden_support import (
    assert_bf16_pairs_with,
    find_fixtures,
    fixture_ids,
    load_fixture,
    load_official_bf16,
    rel_l2,
)
from test_textsynch_golden import config_from_fixture

import selva_core.model.motionformer as motionformer_module
import selva_core.model.textsynch as textsynch_module
from selva_core.model.motionformer import normalize_sync_frames
from selva_core.model.textsynch import TextSynch

BF16 = torch.bfloat16
REGENERATE = (
    "PYTHONPATH=<omegaconf> python scripts/make_bf16_golden.py --only textsynch "
    "--official <jnwnlee/selva at 70a8589> --golden $SELVA_GOLDEN_DIR --out tests/golden_bf16"
)
TOKENS = ("text_f_with_sup", "text_proj", "mformer_t0", "xattn_t0")

# 1. Same roundings, plain kernels: the token stages measured 0 (bit-equal) against the
#    official outputs of the CPU's own kernel family (avx512_bf16 and amx_bf16); 3e-3 is below
#    what a 1 % change of one weight makes: 4.4e-3 (the cross-attention q_proj, on xattn_t0)
#    to 2.8e-2 (text_proj.0, on text_proj).
MATCHED_TOL = 3e-3
#    sync_f after the pooling layer: measured 4.4e-3 (4.3e-3 on amx_bf16; official fast path
#    vs its own plain path: 3.7e-3); 7e-3 is 1.6x that.
MATCHED_POOL_TOL = 7e-3
# 2. Shipped bf16 path vs official bf16, relative L2; measured: text_f_with_sup 1.5e-3 (ours
#    keeps the handed-over fp32 text unrounded until the projection), text_proj 0,
#    mformer_t0 6.4e-3, xattn_t0 7.2e-3, sync_f 4.7e-3.
SHIPPED_TOL = {
    "text_f_with_sup": 3e-3,
    "text_proj": 2e-3,
    "mformer_t0": 1.3e-2,
    "xattn_t0": 1.5e-2,
    "sync_f": 1e-2,
}
# ... and its distance to the fp32 official outputs at most this factor of official bf16's
#    (measured 0.38-1.0: text_f_with_sup 6.4e-4 vs 1.7e-3, sync_f 7.3e-3 vs 7.4e-3).
NO_WORSE = 1.25

FP32_FIXTURES = find_fixtures("textsynch")


class _Functional(types.SimpleNamespace):
    """torch.nn.functional with some names replaced (set as a module's `F`)."""

    def __getattr__(self, name: str):
        return getattr(F, name)


def _explicit_attention(q, k, v, attn_mask=None, **kw):
    """The official MotionFormer attention's roundings (vit_helper.qkv_attn): q scaled first,
    then q k^T, softmax and the value sum, each in the inputs' dtype."""
    assert attn_mask is None and not kw
    sim = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return sim.softmax(dim=-1) @ v


def _full_mask_attention(q, k, v, attn_mask=None, **kw):
    """The official cross-attention's call: contiguous q/k/v and a (B, 1, Lq, Lk) bool mask."""
    mask = attn_mask.expand(q.shape[0], 1, q.shape[2], k.shape[2]).contiguous()
    return F.scaled_dot_product_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask, **kw
    )


@pytest.fixture
def official_attention(monkeypatch):
    monkeypatch.setattr(
        motionformer_module, "F", _Functional(scaled_dot_product_attention=_explicit_attention)
    )
    monkeypatch.setattr(
        textsynch_module, "F", _Functional(scaled_dot_product_attention=_full_mask_attention)
    )


def _build(fx, dtype: torch.dtype, state: dict | None = None) -> TextSynch:
    model = TextSynch(config_from_fixture(fx.config)).eval()
    model.load_state_dict(fx.state if state is None else state, strict=True)
    return model.to(dtype).requires_grad_(False)  # as build._frozen casts it


def run(model: TextSynch, fx, *, bf16_inputs: bool, plain: bool) -> dict[str, torch.Tensor]:
    """Our outputs under the fixture's names; `mformer_t0` / `xattn_t0` by forward hooks.
    `bf16_inputs`: frames and text cast as the official demo casts them (the shipped path hands
    over fp32 and the model casts); `plain`: autograd on, so the CPU fast paths step aside."""
    patches = model.config.video.num_patches
    got: dict[str, list[torch.Tensor]] = {"mformer_t0": [], "xattn_t0": []}

    def grab(name: str):
        return lambda _m, _a, output: got[name].append(output[:, :patches].detach())

    hooks = [
        model.vfeat_extractor.norm.register_forward_hook(grab("mformer_t0")),
        model.synch_text_cross_blocks[-1].register_forward_hook(grab("xattn_t0")),
    ]
    frames, text_f = normalize_sync_frames(fx.inputs["frames_u8"]), fx.inputs["text_f"]
    if bf16_inputs:
        frames, text_f = frames.to(BF16), text_f.to(BF16)
    try:
        with torch.set_grad_enabled(plain):
            text, mask = model.prepend_sup_text_tokens(text_f, fx.inputs["text_mask"])
            out = {
                "text_f_with_sup": text,
                "text_proj": model.text_proj(text.to(model.empty_string_feat.dtype)),
                "sync_f": model.encode_video_with_sync(frames, text, mask, window_chunk=None),
            }
    finally:
        for h in hooks:
            h.remove()
    out |= {name: torch.cat(parts) for name, parts in got.items()}
    assert not any(v.requires_grad for v in out.values())
    return {k: v.detach().float() for k, v in out.items()}


@pytest.fixture(scope="module", params=FP32_FIXTURES, ids=fixture_ids(FP32_FIXTURES))
def pair(request):
    fx = load_fixture(request.param)
    meta, official = load_official_bf16(request.param, REGENERATE)
    return fx, meta, official


def _far(ours: dict, official: dict, names, tol: float) -> dict[str, str]:
    dist = {k: rel_l2(ours[k], official[k].float()) for k in names}
    return {k: f"{r:.2e}" for k, r in dist.items() if r > tol}


def test_textsynch_bf16_fixture_pairs_with_the_fp32_fixture(pair):
    fx, meta, official = pair
    assert_bf16_pairs_with(fx, meta, official, set(fx.outputs) - {"text_mask_with_sup"}, REGENERATE)


def test_textsynch_bf16_same_roundings_reproduce_official_bf16(pair, official_attention):
    fx, _, official = pair
    ours = run(_build(fx, BF16), fx, bf16_inputs=True, plain=True)
    bad = _far(ours, official, TOKENS, MATCHED_TOL)
    assert not bad, f"ours vs official bf16 beyond {MATCHED_TOL:.0e} rel L2: {bad}"
    bad = _far(ours, official, ["sync_f"], MATCHED_POOL_TOL)
    assert not bad, f"sync_f vs official bf16 beyond {MATCHED_POOL_TOL:.0e} rel L2: {bad}"


def test_textsynch_bf16_shipped_path_tracks_official_bf16(pair):
    fx, _, official = pair
    ours = run(_build(fx, BF16), fx, bf16_inputs=False, plain=False)
    for name, ref16 in official.items():
        r = rel_l2(ours[name], ref16.float())
        assert r <= SHIPPED_TOL[name], (
            f"{name}: {r:.2e} from official bf16 (tol {SHIPPED_TOL[name]})"
        )
        mine32, theirs32 = rel_l2(ours[name], fx.outputs[name]), rel_l2(ref16, fx.outputs[name])
        assert mine32 <= NO_WORSE * theirs32, (
            f"{name}: ours bf16 {mine32:.2e} from fp32, official bf16 {theirs32:.2e}"
        )


def test_textsynch_bf16_check_tells_fp32_and_a_perturbed_weight_apart(pair, official_attention):
    """The same-roundings check is not passed by our model in fp32, nor by one weight off 1 %."""
    fx, _, official = pair
    fp32 = run(_build(fx, torch.float32), fx, bf16_inputs=False, plain=True)
    assert _far(fp32, official, ["mformer_t0", "xattn_t0"], 2 * MATCHED_TOL)
    key = "vfeat_extractor.blocks.0.attn.qkv.weight"
    state = {k: v * 1.01 if k == key else v for k, v in fx.state.items()}
    ours = run(_build(fx, BF16, state), fx, bf16_inputs=True, plain=True)
    assert _far(ours, official, ["mformer_t0"], MATCHED_TOL)
