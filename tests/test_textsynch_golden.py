"""TextSynch against the official-code fixtures (textsynch_*.safetensors), golden README §2."""

from __future__ import annotations

import pytest
import torch
from golden_support import (
    Fixture,
    assert_golden_close,
    find_fixtures,
    fixture_ids,
    load_fixture,
    rel_l2,
)

from selva_core.model.motionformer import MotionFormerConfig, normalize_sync_frames
from selva_core.model.textsynch import TextSynch, TextSynchConfig

FIXTURES = find_fixtures("textsynch")


def config_from_fixture(cfg: dict) -> TextSynchConfig:
    video = MotionFormerConfig(
        embed_dim=cfg["embed_dim"],
        num_heads=cfg["num_heads"],
        depth=cfg["depth"],
        mlp_ratio=cfg["mlp_ratio"],
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        patch_size_temp=cfg["patch_size_temp"],
        num_frames=cfg["temporal_resolution"] * cfg["patch_size_temp"],
        eps=cfg["layer_norm_eps"],
    )
    return TextSynchConfig(
        video=video,
        text_dim=cfg["text_dim"],
        num_sup_text_tokens=cfg["num_sup_text_tokens"],
        xattn_depth=cfg["xattn_depth"],
    )


@pytest.fixture(scope="module", params=FIXTURES, ids=fixture_ids(FIXTURES))
def golden(request) -> tuple[Fixture, TextSynch]:
    fx = load_fixture(request.param)
    model = TextSynch(config_from_fixture(fx.config)).eval()
    model.load_state_dict(fx.state, strict=True)
    return fx, model


def frames_of(fx: Fixture) -> torch.Tensor:
    return normalize_sync_frames(fx.inputs["frames_u8"])


def run_with_intermediates(
    model: TextSynch, fx: Fixture, window_chunk: int | None = None
) -> dict[str, torch.Tensor]:
    """All fixture outputs; the debugging ones (slot 0 of every window) come from forward hooks."""
    patches = model.config.video.num_patches
    got: dict[str, torch.Tensor] = {}

    def grab(name: str):
        def hook(module, args, output):
            got.setdefault(name, []).append(output[:, :patches])

        return hook

    hooks = [
        model.vfeat_extractor.norm.register_forward_hook(grab("mformer_t0")),
        model.synch_text_cross_blocks[-1].register_forward_hook(grab("xattn_t0")),
    ]
    try:
        with torch.no_grad():
            text_f, mask = model.prepend_sup_text_tokens(
                fx.inputs["text_f"], fx.inputs["text_mask"]
            )
            got["text_f_with_sup"], got["text_mask_with_sup"] = text_f, mask
            got["text_proj"] = model.text_proj(text_f)
            got["sync_f"] = model.encode_video_with_sync(
                frames_of(fx), text_f, mask, window_chunk=window_chunk
            )
    finally:
        for h in hooks:
            h.remove()
    for name in ("mformer_t0", "xattn_t0"):  # one entry per chunk, windows item-major
        got[name] = torch.cat(got[name])
    return got


def test_textsynch_golden_fixture_shape(golden):
    fx, model = golden
    b, t = fx.inputs["frames_u8"].shape[:2]
    s = fx.config["num_segments"]
    assert (t - 16) // 8 + 1 == s
    assert fx.outputs["sync_f"].shape == (b, s * 8, model.config.width)


def test_textsynch_golden_outputs(golden):
    fx, model = golden
    got = run_with_intermediates(model, fx)
    assert set(fx.outputs) <= set(got), f"fixture outputs not covered: {set(fx.outputs) - set(got)}"
    for name, ref in fx.outputs.items():
        assert_golden_close(got[name], ref, f"{fx.path.stem}:{name}")


@pytest.mark.parametrize("window_chunk", [1, 3])
def test_textsynch_golden_window_chunk_invariance(golden, window_chunk):
    fx, model = golden
    whole = run_with_intermediates(model, fx, window_chunk=None)
    chunked = run_with_intermediates(model, fx, window_chunk=window_chunk)
    for name in ("sync_f", "mformer_t0", "xattn_t0"):
        assert_golden_close(chunked[name], fx.outputs[name], f"{name} chunk {window_chunk}")
        assert rel_l2(chunked[name], whole[name]) < 1e-6, name


def test_textsynch_golden_forward_matches_two_step(golden):
    fx, model = golden
    with torch.no_grad():
        out = model(frames_of(fx), fx.inputs["text_f"], fx.inputs["text_mask"], window_chunk=2)
    assert_golden_close(out, fx.outputs["sync_f"], "forward sync_f")


def test_textsynch_golden_text_mask_matters(golden):
    """Flipping the padded positions of item 1 on must change only item 1's features."""
    fx, model = golden
    mask = fx.inputs["text_mask"].clone()
    assert not mask.all(), "fixture is expected to hold a padded item"
    mask[:] = True
    with torch.no_grad():
        out = model(frames_of(fx), fx.inputs["text_f"], mask)
    ref = fx.outputs["sync_f"]
    padded = ~fx.inputs["text_mask"].all(dim=1)
    assert rel_l2(out[padded], ref[padded]) > 1e-3
    assert_golden_close(out[~padded], ref[~padded], "unpadded items")
