"""CLIP / flan-T5 conditioning encoders: tiny random builds, real-format loading, prompt rules."""

from __future__ import annotations

import logging
import unicodedata

import open_clip
import pytest
import torch

from selva_core.conditioning import (
    CLIP_KEY,
    T5_KEY,
    PromptError,
    clean_prompt,
    load_clip,
    load_t5,
    validate_prompts,
)
from selva_core.conditioning.clip import (
    TinyClipConfig,
    clip_tokenizer,
    load_open_clip,
    normalize_frames,
    save_clip_folder,
    tiny_clip,
)
from selva_core.conditioning.t5 import load_t5_folder, save_t5_folder, tiny_t5
from selva_core.variants import TINY_CLIP_DIM, TINY_T5_DIM, get_spec
from selva_core.weights import CATALOG, MissingWeightsError, UntrustedCheckpointError, WeightStore

LONG = " ".join(f"word{i}" for i in range(200))  # far past CLIP's 77 tokens
NON_ASCII = "café — 狗叫"


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny")


@pytest.fixture(scope="module")
def t5():
    return load_t5("tiny")


def _frames(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return normalize_frames(torch.rand(n, 3, 384, 384, generator=g))


# ---- CLIP text ------------------------------------------------------------------------------


def test_tiny_clip_text_shape_norm_and_dims(clip):
    feats = clip.encode_text(["a dog barks", "rain on a tin roof", ""])
    assert feats.shape == (3, 77, TINY_CLIP_DIM)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3, 77), atol=1e-5, rtol=0)
    # What the generator consumes: text_dim per token, clip_dim per frame.
    gen_cfg = get_spec("tiny").generator_config
    assert clip.text_dim == gen_cfg.text_dim == TINY_CLIP_DIM
    assert clip.clip_dim == gen_cfg.clip_dim == TINY_CLIP_DIM


def test_real_clip_dims_match_generator():
    # DFN5B is open_clip's ViT-H-14-378(-quickgelu) architecture; text width and embed dim must be
    # the generator's text_dim / clip_dim (1024) since encode_text skips text_projection.
    cfg = open_clip.get_model_config("ViT-H-14-378-quickgelu")
    gen_cfg = get_spec("small_16k").generator_config
    assert cfg["text_cfg"]["width"] == gen_cfg.text_dim == 1024
    assert cfg["embed_dim"] == gen_cfg.clip_dim == 1024
    assert cfg["text_cfg"]["context_length"] == gen_cfg.text_seq_len == 77


def test_tiny_clip_deterministic_and_prompt_sensitive(clip):
    rng_before = torch.get_rng_state()
    again = tiny_clip(TinyClipConfig(width=TINY_CLIP_DIM, embed_dim=TINY_CLIP_DIM))
    assert torch.equal(torch.get_rng_state(), rng_before), "building must not move the global RNG"
    prompts = ["a dog barks", "a cat meows"]
    a, b = clip.encode_text(prompts), again.encode_text(prompts)
    assert torch.equal(a, b)
    assert (a[0] - a[1]).abs().max() > 1e-2
    # Causal text tower: the shared first tokens ("<sot> a") give identical states.
    torch.testing.assert_close(a[0, :2], a[1, :2])
    assert not torch.equal(tiny_clip(seed=7).encode_text(prompts[:1]), a[:1])


def test_clip_rows_do_not_depend_on_batch(clip):
    both = clip.encode_text(["a", "a much longer prompt about a train"])
    alone0 = clip.encode_text(["a"])
    alone1 = clip.encode_text(["a much longer prompt about a train"])
    torch.testing.assert_close(both[0], alone0[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(both[1], alone1[0], atol=1e-6, rtol=0)


def test_clip_matches_official_patched_encode_text(clip):
    """Our text path equals open_clip's own encode_text minus pooling/projection (the patch)."""
    m = clip.model
    ids, _ = clip.tokenize(["a dog barks in the rain"])
    x = m.token_embedding(ids) + m.positional_embedding
    x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
    ref = torch.nn.functional.normalize(x, dim=-1)
    torch.testing.assert_close(clip.encode_text(["a dog barks in the rain"]), ref)
    # And the pooled+projected official CLIP embedding is something else entirely.
    pooled = m.encode_text(ids, normalize=True)
    assert pooled.shape == (1, clip.clip_dim)


def test_outputs_are_normal_tensors(clip, t5):
    feats = clip.encode_text(["a dog"])
    frames = clip.encode_frames(_frames(2))
    hidden, mask = t5.encode(["a dog"])
    w = torch.ones((), requires_grad=True)
    for t in (feats, frames, hidden):
        assert not t.is_inference() and not t.requires_grad
        (t * w).sum().backward()  # usable inside training code
        t.add_(1.0)  # and mutable in place
    assert not mask.is_inference() and mask.dtype == torch.bool
    assert w.grad is not None


def test_encoders_stay_in_eval(clip, t5):
    parent = torch.nn.ModuleDict({"clip": clip, "t5": t5}).train()
    assert not any(m.training for m in parent["clip"].modules())
    assert not any(m.training for m in parent["t5"].modules())


def test_empty_batch(clip, t5):
    assert clip.encode_text([]).shape == (0, 77, TINY_CLIP_DIM)
    hidden, mask = t5.encode([])
    assert hidden.shape == (0, 0, TINY_T5_DIM) and mask.shape == (0, 0)


# ---- CLIP frames ----------------------------------------------------------------------------


def test_tiny_clip_frames(clip):
    frames = _frames(5)
    out = clip.encode_frames(frames)
    assert out.shape == (5, TINY_CLIP_DIM)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(clip.encode_frames(frames, batch_size=2), out, atol=1e-6, rtol=0)
    batched = clip.encode_frames(torch.stack([frames, frames.flip(0)]))
    assert batched.shape == (2, 5, TINY_CLIP_DIM)
    torch.testing.assert_close(batched[1], out.flip(0), atol=1e-6, rtol=0)
    assert (out[0] - out[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="frames"):
        clip.encode_frames(torch.zeros(5, 384, 384))


# ---- T5 -------------------------------------------------------------------------------------


def test_tiny_t5_shapes_mask_and_batch_independence(t5):
    prompts = ["dog", "a much longer prompt about a train passing"]
    hidden, mask = t5.encode(prompts)
    lens = [len(p.encode()) + 1 for p in prompts]  # ByT5: one token per byte, plus </s>
    assert hidden.shape == (2, max(lens), TINY_T5_DIM)
    assert mask.dtype == torch.bool
    assert mask.sum(1).tolist() == lens
    assert not mask[0, lens[0] :].any() and mask[1].all()
    assert hidden.std() > 0.1  # O(1) activations, not a degenerate model
    for i, p in enumerate(prompts):
        alone, alone_mask = t5.encode([p])
        assert alone_mask.all() and alone.shape[1] == lens[i]
        # Padding only lengthens masked reductions: float rounding (~4 ulp), scale-relative 1e-6.
        diff = (hidden[i, : lens[i]] - alone[0]).abs().max()
        assert diff <= 1e-6 * alone.abs().max(), diff


def test_tiny_t5_deterministic(t5):
    before = torch.get_rng_state()
    other = tiny_t5()
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(other.encode(["rain"])[0], t5.encode(["rain"])[0])
    assert not torch.equal(tiny_t5(seed=3).encode(["rain"])[0], t5.encode(["rain"])[0])


def test_t5_long_prompt_truncated(t5, caplog):
    prompt = "x" * 600
    (count,) = t5.count_tokens([prompt])
    assert (count.tokens, count.limit, count.dropped) == (601, 512, 89)
    with caplog.at_level(logging.WARNING, logger="selva_core.conditioning.prompts"):
        hidden, mask = t5.encode([prompt])
    assert hidden.shape == (1, 512, TINY_T5_DIM) and mask.all()
    assert "89 token(s) dropped" in caplog.text and "512-token limit" in caplog.text
    # Truncation keeps the head: a longer tail changes nothing.
    torch.testing.assert_close(t5.encode(["x" * 700])[0], hidden, atol=1e-6, rtol=0)


# ---- real tokenizer and real-format loading ------------------------------------------------


def test_real_clip_tokenizer_offline_and_truncation(clip, caplog):
    tok = clip_tokenizer()
    assert isinstance(tok, open_clip.tokenizer.SimpleTokenizer) and tok.context_length == 77
    ids = tok(["a dog", LONG])
    assert ids.shape == (2, 77)
    sot, eot = tok.sot_token_id, tok.eot_token_id
    assert ids[0, :4].tolist() == [sot, 320, 1929, eot] and not ids[0, 4:].any()
    assert ids[1, 0] == sot and ids[1, -1] == eot and ids[1].ne(0).all()

    short, long_ = clip.count_tokens(["a dog", LONG])
    assert (short.tokens, short.truncated) == (4, False)
    assert long_.tokens > 77 and long_.dropped == long_.tokens - 77
    with caplog.at_level(logging.WARNING, logger="selva_core.conditioning.prompts"):
        a = clip.encode_text([LONG])
    assert f"{long_.dropped} token(s) dropped" in caplog.text
    # Official truncation keeps the first 76 tokens, so extra tail text changes nothing.
    torch.testing.assert_close(clip.encode_text([LONG + " and more words"]), a)


def test_clip_real_loader_reads_hub_folder(clip, tmp_path):
    folder = save_clip_folder(
        clip, tmp_path / "clip", TinyClipConfig(TINY_CLIP_DIM, TINY_CLIP_DIM).model_cfg()
    )
    assert (folder / "open_clip_config.json").is_file()
    assert (folder / "open_clip_model.safetensors").is_file()
    loaded = load_open_clip(folder)
    prompts = ["a dog barks", "", NON_ASCII]
    assert torch.equal(loaded.encode_text(prompts), clip.encode_text(prompts))
    frames = _frames(3, seed=1)
    assert torch.equal(loaded.encode_frames(frames), clip.encode_frames(frames))
    assert not loaded.model.attn_mask.is_meta
    assert loaded.model.attn_mask[0, 1] == float("-inf") and loaded.model.attn_mask[1, 0] == 0

    # The published repo ships only open_clip_pytorch_model.bin: read with weights_only=True.
    (folder / "open_clip_model.safetensors").unlink()
    torch.save(clip.model.state_dict(), folder / "open_clip_pytorch_model.bin")
    from_bin = load_open_clip(folder)
    assert torch.equal(from_bin.encode_text(prompts), clip.encode_text(prompts))

    # A .bin holding arbitrary pickled objects is refused, not executed.
    torch.save({"x": torch.zeros(1), "evil": _Pickled()}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(UntrustedCheckpointError):
        load_open_clip(folder)


class _Pickled:
    pass


def test_clip_hf_hub_name_from_cache_offline(clip, tmp_path):
    # Hugging Face cache layout: refs/main names the snapshot folder holding the files.
    repo = tmp_path / "hf" / "models--apple--DFN5B-CLIP-ViT-H-14-384"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    cfg = TinyClipConfig(TINY_CLIP_DIM, TINY_CLIP_DIM).model_cfg()
    save_clip_folder(clip, repo / "snapshots" / commit, cfg)
    enc = load_open_clip("hf-hub:apple/DFN5B-CLIP-ViT-H-14-384", cache_dir=tmp_path / "hf")
    assert torch.equal(enc.encode_text(["a dog"]), clip.encode_text(["a dog"]))
    with pytest.raises(MissingWeightsError, match="HF_HUB_OFFLINE"):
        load_open_clip("hf-hub:apple/not-cached", cache_dir=tmp_path / "hf")


def test_load_clip_real_spec_through_store(clip, tmp_path):
    entry = CATALOG[CLIP_KEY]
    folder = tmp_path / "weights" / "hub" / entry.repo_id
    save_clip_folder(clip, folder, TinyClipConfig(TINY_CLIP_DIM, TINY_CLIP_DIM).model_cfg())
    store = WeightStore(tmp_path / "weights", allow_download=False, cache_dir=tmp_path / "hf")
    enc = load_clip("small_16k", store)
    assert torch.equal(enc.encode_text(["a dog"]), clip.encode_text(["a dog"]))


def test_t5_real_loader_reads_hub_folder(t5, tmp_path):
    folder = save_t5_folder(t5, tmp_path / "t5")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    loaded = load_t5_folder(folder)
    prompts = ["dog", "a much longer prompt", NON_ASCII]
    (h0, m0), (h1, m1) = t5.encode(prompts), loaded.encode(prompts)
    assert torch.equal(m0, m1)
    torch.testing.assert_close(h1, h0, atol=0, rtol=0)

    # Through the store, as the real spec resolves it.
    entry = CATALOG[T5_KEY]
    save_t5_folder(t5, tmp_path / "weights" / "hub" / entry.repo_id)
    store = WeightStore(tmp_path / "weights", allow_download=False, cache_dir=tmp_path / "hf")
    via_store = load_t5("small_16k", store)
    torch.testing.assert_close(via_store.encode(prompts)[0], h0, atol=0, rtol=0)


def test_offline_without_files_names_path_and_command(tmp_path):
    store = WeightStore(tmp_path / "w", allow_download=False, cache_dir=tmp_path / "hf")
    with pytest.raises(MissingWeightsError) as err:
        load_clip("small_16k", store)
    msg = str(err.value)
    assert str(tmp_path / "w" / "hub" / "apple") in msg and "weights download" in msg
    assert CLIP_KEY in msg
    with pytest.raises(MissingWeightsError, match=T5_KEY):
        load_t5("mmaudio_small_16k", store)


# ---- prompts --------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", "   ", "\t\n", "\x00\x07 "])
def test_empty_positive_prompt(prompt, t5):
    with pytest.raises(PromptError) as err:
        validate_prompts(["a dog", prompt], family="selva")
    assert err.value.prompt == prompt and "empty positive prompt" in err.value.reason
    assert isinstance(err.value, ValueError)
    # MMAudio's demo accepts an empty prompt; any family accepts an empty negative.
    assert validate_prompts([prompt], family="mmaudio") == [""]
    assert validate_prompts([prompt], family="selva", negative=True) == [""]
    with pytest.raises(PromptError):
        t5.encode([prompt])
    hidden, mask = t5.encode([prompt], allow_empty=True)
    assert mask.tolist() == [[True]]  # only </s>


def test_empty_clip_prompt_is_the_official_negative(clip):
    neg = clip.encode_text(["", "  \n "])
    torch.testing.assert_close(neg[0], neg[1], atol=0, rtol=0)
    ids, (count,) = clip.tokenize([""])
    assert ids[0, :2].tolist() == [49406, 49407] and not ids[0, 2:].any()
    assert (count.prompt, count.tokens) == ("", 2)


def test_non_ascii_prompts(clip, t5):
    assert validate_prompts([NON_ASCII]) == [NON_ASCII]
    decomposed = "cafe\u0301 — 狗叫"
    assert clean_prompt(decomposed) == NON_ASCII == unicodedata.normalize("NFC", decomposed)
    assert clean_prompt("dog\x00 barks\x1b\n\tloudly\ud800") == "dog barks loudly"
    torch.testing.assert_close(
        clip.encode_text([decomposed]), clip.encode_text([NON_ASCII]), atol=0, rtol=0
    )
    # CLIP's byte-level BPE has no unknown token: each CJK character costs 1-3 tokens.
    (count,) = clip.count_tokens([NON_ASCII])
    assert count.tokens == 2 + 7
    # A lone surrogate would crash the CLIP tokenizer's UTF-8 encode; cleaning removes it.
    assert clip.encode_text(["dog\ud800"]).shape == (1, 77, TINY_CLIP_DIM)
    hidden, mask = t5.encode([NON_ASCII])
    assert mask.sum() == len(NON_ASCII.encode()) + 1  # ByT5: bytes + </s>
    assert torch.isfinite(hidden).all()


def test_prompt_type_errors(clip):
    with pytest.raises(TypeError, match="list of prompts"):
        clip.encode_text("a dog")
    with pytest.raises(PromptError, match="expected a str"):
        validate_prompts(["ok", None])
    with pytest.raises(ValueError, match="family"):
        validate_prompts(["ok"], family="audioldm")


# ---- precision ------------------------------------------------------------------------------


def test_bf16_and_fp16(clip, t5):
    prompts = ["a dog barks", NON_ASCII]
    ref = clip.encode_text(prompts)
    bf = load_clip("tiny", dtype=torch.bfloat16)
    out = bf.encode_text(prompts)
    assert out.dtype == torch.bfloat16 and bf.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0)
    # open_clip's own bf16 precision: LayerNorms stay fp32 (LayerNormFp32), matmuls in bf16.
    assert bf.model.ln_final.weight.dtype == torch.float32
    assert bf.model.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.bfloat16
    frames = _frames(2)
    fb = bf.encode_frames(frames)
    assert fb.dtype == torch.bfloat16
    torch.testing.assert_close(fb.float(), clip.encode_frames(frames), atol=0.05, rtol=0)

    h_ref, mask = t5.encode(prompts)
    t5_bf = load_t5("tiny", dtype=torch.bfloat16)
    h_bf, m_bf = t5_bf.encode(prompts)
    assert h_bf.dtype == torch.bfloat16 and torch.equal(m_bf, mask)
    err = (h_bf.float() - h_ref)[mask].abs().max()
    assert err < 0.15, err
    t5_half = load_t5("tiny", dtype=torch.float16)
    wo = t5_half.model.encoder.block[0].layer[1].DenseReluDense.wo.weight
    assert wo.dtype == torch.float32  # transformers keeps T5's `wo` in fp32 for fp16
    h_half, _ = t5_half.encode(prompts)
    assert torch.isfinite(h_half).all()
    with pytest.raises(ValueError, match="dtype"):
        load_t5("tiny", dtype=torch.float64)
