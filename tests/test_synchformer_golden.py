"""The Synchformer video tower as MMAudio computes sync features, against the official-code
fixtures (synchformer_video_*.safetensors, golden README section 9): 16-frame windows with
stride 8, item-major chunks, MotionFormer + per-slot pooling, (B, 8*S, D) per item."""

from __future__ import annotations

import pytest
import torch
from golden_support import (
    Fixture,
    assert_golden_close,
    find_fixtures,
    fixture_ids,
    load_fixture,
    motionformer_config,
    video_frames,
)

from selva_core.model.motionformer import normalize_sync_frames, num_windows
from selva_core.model.synchformer import Synchformer, load_synchformer

FIXTURES = find_fixtures("synchformer_video")


@pytest.fixture(scope="module", params=FIXTURES, ids=fixture_ids(FIXTURES))
def golden(request) -> tuple[Fixture, Synchformer]:
    fx = load_fixture(request.param)
    model = Synchformer(motionformer_config(fx.config)).eval()
    model.load_state_dict(fx.state, strict=True)
    return fx, model


def run(model: Synchformer, fx: Fixture, window_chunk: int | None) -> dict[str, torch.Tensor]:
    """sync_f, and slot 0 of every window after the final LayerNorm (a forward hook)."""
    patches = model.config.num_patches
    slot0: list[torch.Tensor] = []
    hook = model.vfeat_extractor.norm.register_forward_hook(
        lambda module, args, out: slot0.append(out[:, :patches])
    )
    try:
        with torch.no_grad():
            frames = normalize_sync_frames(video_frames(fx))
            sync_f = model.encode_video_with_sync(frames, window_chunk=window_chunk)
    finally:
        hook.remove()
    return {"sync_f": sync_f, "mformer_t0": torch.cat(slot0)}  # chunks come item-major


def test_synchformer_video_golden_fixture_shape(golden):
    fx, model = golden
    b, t = fx.inputs["frame_index"].shape
    s = num_windows(t, model.config)
    assert s == fx.config["num_segments"]
    tokens = s * model.config.temporal_resolution
    assert fx.outputs["sync_f"].shape == (b, tokens, model.config.embed_dim)
    assert fx.outputs["mformer_t0"].shape[0] == b * s


@pytest.mark.parametrize("window_chunk", [None, 2], ids=["all_windows", "chunk2"])
def test_synchformer_video_golden_outputs(golden, window_chunk):
    """Every output, whatever the chunking (the official chunk size has no numerical effect)."""
    fx, model = golden
    got = run(model, fx, window_chunk)
    assert set(fx.outputs) == set(got)
    for name, ref in fx.outputs.items():
        assert_golden_close(got[name], ref, f"{fx.path.stem}:{name} (chunk {window_chunk})")


def test_synchformer_video_golden_through_checkpoint_loader(golden):
    """The published file holds the whole Synchformer; the loader keeps `vfeat_extractor.*`
    strictly (as MMAudio does) and the result computes the same features."""
    fx, model = golden
    extra = {
        "afeat_extractor.embeddings.cls_token": torch.zeros(1, 1, 4),
        "transformer.OFF_tok": torch.zeros(1, 1, 4),
    }
    loaded = load_synchformer(dict(fx.state) | extra, model.config)
    got = run(loaded, fx, None)["sync_f"]
    assert_golden_close(got, fx.outputs["sync_f"], "sync_f via load_synchformer")
