"""The full Synchformer and the DeSync score against av-benchmark's code
(synchformer_desync_*.safetensors, golden README section 10): spectrogram, audio and video
features, offset logits, offset classes, and the per-window, per-clip and dataset scores."""

from __future__ import annotations

import re

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

from selva_core.model.ast import AudioTowerConfig
from selva_core.model.desync import (
    DesyncConfig,
    DesyncResult,
    DesyncSynchformer,
    SyncMelConfig,
    class_grid,
    desync_from_state_dict,
    desync_metric,
    desync_score,
)
from selva_core.model.motionformer import normalize_sync_frames

FIXTURES = find_fixtures("synchformer_desync")

# README section 10's exceptions to the general check.
SPEC_TOL = {"rel_tol": 1e-5, "abs_peak_tol": 2e-4}
LOGIT_TOL = {"rel_tol": 5e-5, "peak_tol": 1e-4}


def desync_config(cfg: dict) -> DesyncConfig:
    """Our config from the fixture's `config` metadata (all sizes read from it)."""
    m = cfg["aud_mel"]
    fixed = {"center": True, "mel_scale": "htk", "norm": None, "power": 2.0, "pad_mode": "reflect"}
    assert {k: m[k] for k in fixed} == fixed and m["window"].startswith("hann (periodic)"), m
    audio = AudioTowerConfig(
        hidden_size=cfg["dim"],
        num_heads=cfg["aud_heads"],
        depth=cfg["aud_depth"],
        intermediate_size=cfg["aud_intermediate_size"],
        num_mel_bins=cfg["aud_num_mel_bins"],
        max_spec_t=cfg["aud_max_spec_t"],
        patch_size=cfg["aud_patch_size"],
        frequency_stride=cfg["aud_frequency_stride"],
        time_stride=cfg["aud_time_stride"],
        layer_norm_eps=cfg["aud_layer_norm_eps"],
        agg_eps=cfg["agg_layer_norm_eps"],
    )
    mel = SyncMelConfig(
        sample_rate=m["sample_rate"],
        n_fft=m["n_fft"],
        win_length=m["win_length"],
        hop_length=m["hop_length"],
        n_mels=m["n_mels"],
        f_min=m["f_min"],
        f_max=m["f_max"],
        log_offset=cfg["aud_log_offset"],
        norm_mean=cfg["aud_norm_mean"],
        norm_std=cfg["aud_norm_std"],
    )
    grid = cfg["class_grid"]
    assert grid["leftmost"] == -grid["rightmost"] and grid["grid_size"] == cfg["num_classes"]
    config = DesyncConfig(
        video=motionformer_config(cfg, "desync"),
        audio=audio,
        mel=mel,
        offset_heads=cfg["tr_heads"],
        offset_layers=cfg["tr_layers"],
        offset_eps=cfg["tr_layer_norm_eps"],
        num_classes=cfg["num_classes"],
        max_offset=float(grid["rightmost"]),
        window_segments=cfg["window_segments"],
        fps=cfg["fps"],
        audio_window=cfg["aud_segment_size"],
        audio_hop=cfg["aud_step_size"],
    )
    assert config.num_positions == cfg["tr_pos_len"]
    assert audio.time_patches == cfg["aud_time_patches"]
    assert audio.freq_patches == cfg["aud_freq_patches"]
    return config


@pytest.fixture(scope="module", params=FIXTURES, ids=fixture_ids(FIXTURES))
def golden(request) -> tuple[Fixture, DesyncSynchformer, dict]:
    """Model loaded strictly from `state.*`, and one end-to-end run with every intermediate."""
    fx = load_fixture(request.param)
    model = DesyncSynchformer(desync_config(fx.config)).eval()
    model.load_state_dict(fx.state, strict=True)

    captured: dict[str, list[torch.Tensor]] = {"mformer": [], "ast": []}
    patches = model.config.video.num_patches
    hooks = [
        model.vfeat_extractor.norm.register_forward_hook(
            lambda mod, args, out: captured["mformer"].append(out[:, :patches])
        ),
        model.afeat_extractor.ast.layernorm.register_forward_hook(
            lambda mod, args, out: captured["ast"].append(out)
        ),
    ]
    try:
        with torch.no_grad():
            frames = normalize_sync_frames(video_frames(fx))
            spec = model.audio_spectrogram(fx.inputs["wav"])
            audio = model.audio_features(spec)
            video = model.video_features(frames, window_chunk=None)
            logits = model.window_logits(video, audio)
    finally:
        for h in hooks:
            h.remove()
    b, s = video.shape[:2]
    first_window = torch.arange(b) * s  # windows run item-major
    got = {
        "audio_spec": spec,
        "audio_feats": audio,
        "video_feats": video,
        "mformer_t0_s0": torch.cat(captured["mformer"])[first_window],
        "ast_tokens_s0": torch.cat(captured["ast"])[first_window],
        "logits_first": logits[:, 0],
        "logits_last": logits[:, 1],
        "result": DesyncResult.from_logits(logits, model.config),
    }
    return fx, model, got


def test_desync_golden_fixture_layout(golden):
    fx, model, got = golden
    cfg = model.config
    b, t = fx.inputs["frame_index"].shape
    duration = fx.config["duration"]
    assert t == int(cfg.fps * duration) == fx.config["num_frames"]
    assert fx.inputs["wav"].shape == (b, int(cfg.mel.sample_rate * duration))
    assert got["video_feats"].shape[1] == got["audio_feats"].shape[1] == fx.config["num_segments"]


def test_desync_golden_mel_tables(golden):
    """Our periodic Hann window and HTK filterbank against the official transform's buffers."""
    fx, model, _ = golden
    mel = fx.group("melspec")
    assert torch.equal(model.mel.window, mel["spectrogram.window"])
    assert_golden_close(model.mel.filterbank, mel["mel_scale.fb"], "mel filterbank", rel_tol=1e-7)


def test_desync_golden_audio_spectrogram(golden):
    fx, _, got = golden
    assert_golden_close(got["audio_spec"], fx.outputs["audio_spec"], "audio_spec", **SPEC_TOL)


@pytest.mark.parametrize("name", ["ast_tokens_s0", "audio_feats", "mformer_t0_s0", "video_feats"])
def test_desync_golden_features(golden, name):
    fx, _, got = golden
    assert_golden_close(got[name], fx.outputs[name], f"{fx.path.stem}:{name}")


def test_desync_golden_offset_transformer_on_official_features(golden):
    """The offset transformer alone, fed the stored features (README: isolates it from the
    upstream noise that its sharp attention amplifies)."""
    fx, model, _ = golden
    o = fx.outputs
    with torch.no_grad():
        logits = model.window_logits(o["video_feats"], o["audio_feats"])
    assert_golden_close(logits[:, 0], o["logits_first"], "logits_first (stored feats)", **LOGIT_TOL)
    assert_golden_close(logits[:, 1], o["logits_last"], "logits_last (stored feats)", **LOGIT_TOL)
    assert torch.equal(logits.argmax(-1), o["offset_idx"])


def test_desync_golden_logits_and_scores(golden):
    fx, model, got = golden
    o = fx.outputs
    for name in ("logits_first", "logits_last"):
        assert_golden_close(got[name], o[name], f"{fx.path.stem}:{name}", **LOGIT_TOL)
    r: DesyncResult = got["result"]
    assert torch.equal(class_grid(model.config), o["class_grid"])
    assert torch.equal(r.offset_idx, o["offset_idx"])
    assert torch.equal(r.offset_sec, o["offset_sec"])  # signed grid values, exactly
    assert torch.equal(r.per_window, o["desync_per_window"])
    assert r.per_clip == pytest.approx(o["desync_per_clip"].double().tolist(), abs=1e-6)
    metric = desync_metric(r)
    assert metric == pytest.approx(float(o["desync"]), abs=1e-6)
    assert metric == pytest.approx(fx.config["desync_official_float64"], abs=1e-12)


def test_desync_golden_public_score_of_one_clip(golden):
    """`desync_score` on one uint8 clip and its waveform (the QA entry point), with chunked video
    windows, gives the clip's official score."""
    fx, model, _ = golden
    frames, wav = video_frames(fx)[0], fx.inputs["wav"][0]
    score = desync_score(model, frames, wav, max_duration=fx.config["duration"], window_chunk=8)
    assert score == pytest.approx(float(fx.outputs["desync_per_clip"][0]), abs=1e-6)


def test_desync_golden_strict_loader_and_real_size_layout(golden):
    """The state dict loads through our strict loader, and the real-size model has the same key
    names (layer indices aside) as the fixture, i.e. as `synchformer_state_dict.pth`."""
    fx, model, _ = golden
    loaded = desync_from_state_dict(dict(fx.state), model.config)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, fx.state[k]), k
    assert torch.equal(loaded.mel.filterbank, model.mel.filterbank)

    with torch.device("meta"):
        real = DesyncSynchformer(DesyncConfig())
    real_state = real.state_dict()

    def pattern(key: str) -> str:
        return re.sub(r"\.\d+\.", ".N.", key)

    assert {pattern(k) for k in real_state} == {pattern(k) for k in fx.state}
    shapes = {
        "transformer.pos_emb_cfg.pos_emb": (1, 198, 768),
        "transformer.off_head.weight": (21, 768),
        "afeat_extractor.ast.embeddings.position_embeddings": (1, 74, 768),
        "afeat_extractor.ast.encoder.layer.11.intermediate.dense.weight": (3072, 768),
        "afeat_extractor.freq_attn_agg.linear1.weight": (3072, 768),
        "vfeat_extractor.blocks.11.mlp.fc1.weight": (3072, 768),
        "transformer.blocks.2.mlp.0.weight": (3072, 768),
        "vproj.weight": (768, 768),
    }
    assert {k: tuple(real_state[k].shape) for k in shapes} == shapes
    assert "transformer.blocks.3.ln1.weight" not in real_state
