"""TextSynch / Synchformer structure and loading: real-size key tables, loader round trips, errors,
and input validation. Real-size models are built on the meta device; only tiny models run."""

from __future__ import annotations

import pytest
import torch
from golden_support import assert_state_matches_table, key_table, zeros_from_table

from selva_core.model.motionformer import MotionFormerConfig
from selva_core.model.synchformer import Synchformer, load_synchformer
from selva_core.model.textsynch import (
    TEXTSYNCH_PREFIXES,
    TextSynch,
    TextSynchConfig,
    load_textsynch,
    random_textsynch,
)

TABLE = "textsynch_depth1_sup5"
JUNK = {
    "afeat_extractor.blocks.0.weight": torch.zeros(2),  # the audio tower of a full Synchformer
    "transformer.layer.0.bias": torch.zeros(3),
    "module.vfeat_extractor.norm.weight": torch.zeros(4),  # does not start with a kept prefix
}


@pytest.fixture(scope="module")
def table() -> dict:
    return key_table(TABLE)


@pytest.fixture(scope="module")
def tiny() -> TextSynch:
    return random_textsynch(TextSynchConfig.tiny(), seed=3)


def tiny_inputs(batch: int = 2, frames: int = 24, text_len: int = 6, text_dim: int = 64):
    gen = torch.Generator().manual_seed(7)
    video = torch.rand(batch, frames, 3, 224, 224, generator=gen) * 2 - 1
    text = torch.randn(batch, text_len, text_dim, generator=gen)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    mask[-1, text_len // 2 :] = False
    return video, text, mask


# ---- key tables ----------------------------------------------------------------------------


def test_textsynch_real_size_keys_match_table(table):
    with torch.device("meta"):
        model = TextSynch(TextSynchConfig.depth1())
    assert_state_matches_table(model.state_dict(), table)
    assert sum(p.numel() for p in model.parameters()) == table["num_params"]
    assert all(k.startswith(TEXTSYNCH_PREFIXES) for k in model.state_dict())
    assert tuple(table["loader_kept_prefixes"]) == TEXTSYNCH_PREFIXES


def test_synchformer_keys_are_the_vfeat_extractor_subset(table):
    with torch.device("meta"):
        model = Synchformer(MotionFormerConfig())
    expected = {k for k in table["keys"] if k.startswith("vfeat_extractor.")}
    state = model.state_dict()
    assert set(state) == expected
    for k in expected:
        assert list(state[k].shape) == table["keys"][k]["shape"], k


# ---- loaders -------------------------------------------------------------------------------


def test_textsynch_loader_round_trip_real_size(table):
    sd = zeros_from_table(table) | JUNK
    model = load_textsynch(sd, TextSynchConfig.depth1())
    state = model.state_dict()
    assert set(state) == set(table["keys"])
    assert all(not t.is_meta and t.device.type == "cpu" for t in state.values())
    assert float(model.empty_string_feat.abs().sum()) == 0
    assert not model.empty_string_feat.requires_grad and not model.training


def test_textsynch_loader_from_file_keeps_values(tmp_path, tiny):
    path = tmp_path / "video_enc_tiny.pth"
    torch.save(tiny.state_dict() | JUNK, path)
    loaded = load_textsynch(path, TextSynchConfig.tiny())
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    video, text, mask = tiny_inputs(1, 16)
    with torch.no_grad():
        assert torch.equal(loaded(video, text, mask), tiny(video, text, mask))


def test_textsynch_loader_names_missing_key_and_file(tmp_path, tiny):
    sd = tiny.state_dict()
    del sd["synch_text_cross_blocks.0.attn.k_norm.weight"]
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"broken\.pth.*k_norm\.weight"):
        load_textsynch(path, TextSynchConfig.tiny())


def test_textsynch_loader_names_shape_mismatch(table):
    sd = zeros_from_table(table)
    sd["sup_text_feat"] = torch.zeros(4, 768)
    with pytest.raises(ValueError, match=r"sup_text_feat.*\(4, 768\)"):
        load_textsynch(sd, TextSynchConfig.depth1())


def test_textsynch_loader_rejects_non_checkpoint(tmp_path):
    path = tmp_path / "error_page.pth"
    path.write_text("<html>rate limited</html>")
    with pytest.raises(ValueError, match="error_page.pth"):
        load_textsynch(path, TextSynchConfig.tiny())
    with pytest.raises(FileNotFoundError):
        load_textsynch(tmp_path / "absent.pth", TextSynchConfig.tiny())


def test_synchformer_loader_keeps_only_vfeat_extractor(table):
    sd = zeros_from_table(table) | JUNK  # text layers and junk must all be dropped
    model = load_synchformer(sd)
    assert set(model.state_dict()) == {k for k in table["keys"] if k.startswith("vfeat_")}
    del sd["vfeat_extractor.temp_embed"]
    with pytest.raises(ValueError, match="vfeat_extractor.temp_embed"):
        load_synchformer(sd)


# ---- behaviour of the tiny models ----------------------------------------------------------


def test_random_textsynch_is_deterministic_and_uses_text(tiny):
    again = random_textsynch(TextSynchConfig.tiny(), seed=3)
    for k, v in tiny.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    video, text, mask = tiny_inputs()
    with torch.no_grad():
        out = tiny(video, text, mask)
        other = tiny(video, torch.roll(text, 1, dims=0), torch.roll(mask, 1, dims=0))
    assert out.shape == (2, 16, 64) and torch.isfinite(out).all()
    assert 0.1 < float(out.std()) < 10
    assert (out - other).abs().amax() > 1e-2  # the cross block is not the identity


def test_textsynch_window_chunk_invariance_tiny(tiny):
    video, text, mask = tiny_inputs(2, 32)  # 3 windows per item, 6 in all
    with torch.no_grad():
        ref = tiny(video, text, mask, window_chunk=None)
        for chunk in (1, 4, 100):
            out = tiny(video, text, mask, window_chunk=chunk)
            assert (out - ref).abs().amax() <= 1e-5 * ref.abs().amax(), chunk


def test_textsynch_windows_are_segment_major(tiny):
    """Item i's segment s equals encoding frames [8s, 8s+16) of item i alone."""
    video, text, mask = tiny_inputs(2, 32)  # 3 windows
    with torch.no_grad():
        out = tiny(video, text, mask)
        seg = tiny(video[1:, 8:24], text[1:], mask[1:])
    torch.testing.assert_close(out[1:, 8:16], seg, rtol=1e-5, atol=1e-5)


def test_textsynch_backward_reaches_every_trainable_parameter():
    model = random_textsynch(TextSynchConfig.tiny(), seed=5).train()
    video, text, mask = tiny_inputs(1, 16)
    model(video, text, mask).square().mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "empty_string_feat" not in trainable
    assert "vfeat_extractor.patch_embed.proj.weight" not in trainable  # unused 2-D conv
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert not no_grad


def test_textsynch_empty_text(tiny):
    feat, mask = tiny.empty_text(3)
    assert feat.shape == (3, 1, 64) and mask.shape == (3, 1) and mask.all()
    assert torch.equal(feat[2, 0], tiny.empty_string_feat[0])


def test_synchformer_runs():
    cfg = MotionFormerConfig(embed_dim=64, num_heads=1, depth=1)
    model = Synchformer(cfg, window_chunk=2).eval()
    video, _, _ = tiny_inputs(2, 24)
    with torch.no_grad():
        out = model(video)
        whole = model(video, window_chunk=None)
    assert out.shape == (2, 16, 64) and torch.isfinite(out).all()
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 24, 3, 112, 112), "224"),
        ((1, 24, 3, 224, 200), "224"),
        ((1, 24, 1, 224, 224), "224"),
        ((1, 15, 3, 224, 224), "at least 16 frames"),
        ((24, 3, 224, 224), r"\(B, T, C, H, W\)"),
    ],
)
def test_bad_frames_raise_value_error(tiny, shape, message):
    video = torch.zeros(shape)
    text, mask = torch.zeros(1, 4, 64), torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        tiny(video, text, mask)
    with pytest.raises(ValueError, match=message):
        Synchformer(MotionFormerConfig(embed_dim=64, num_heads=1, depth=1))(video)


def test_bad_text_or_dtype_raise_value_error(tiny):
    video = torch.zeros(2, 16, 3, 224, 224)
    with pytest.raises(ValueError, match="text features"):
        tiny(video, torch.zeros(1, 4, 64), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="uint8"):
        tiny(video.to(torch.uint8), torch.zeros(2, 4, 64), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="window_chunk"):
        tiny(video, torch.zeros(2, 4, 64), torch.ones(2, 4, dtype=torch.bool), window_chunk=0)
