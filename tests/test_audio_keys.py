"""Audio codec: real-size state-dict tables, checkpoint loaders, and module behaviour.

Real-size modules are built on the meta device (no memory, no init). The loader round trips
materialise one real-size checkpoint at a time (about 0.5 GB) and free it afterwards.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from golden_support import (
    assert_golden_close,
    assert_state_matches_table,
    find_fixtures,
    key_table,
    load_fixture,
    zeros_from_table,
)

from selva_core.audio.bigvgan import (
    BIGVGAN_16K,
    BIGVGAN_CONFIGS,
    BIGVGAN_TINY_16K,
    BIGVGAN_V2_44K,
    BigVGAN,
    BigVGANConfig,
    bigvgan_from_state,
    fold_weight_norm,
    load_bigvgan_16k,
    load_bigvgan_v2,
    random_vocoder,
)
from selva_core.audio.mel import MEL_16K, MEL_44K, MelConverter
from selva_core.audio.vae import (
    VAE,
    VAE_16K,
    VAE_44K,
    VAE_CONFIGS,
    DiagonalGaussian,
    MPConv1d,
    VAEConfig,
    latent_to_sequence,
    load_vae,
    random_vae,
    sequence_to_latent,
)

VOCODER_TABLES = {"bigvgan_16k": BIGVGAN_16K, "bigvgan_v2_44k": BIGVGAN_V2_44K}
VAE_TABLES = {"vae_16k": VAE_16K, "vae_44k": VAE_44K}


def _meta_from_table(table: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v["shape"], device="meta") for k, v in table["keys"].items()}


def _fixture(prefix: str):
    return load_fixture(find_fixtures(prefix)[0])


# --- real-size key tables ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VAE_TABLES))
def test_vae_module_matches_table(name: str) -> None:
    with torch.device("meta"):
        vae = VAE(VAE_TABLES[name])
    assert_state_matches_table(vae.state_dict(), key_table(name))


@pytest.mark.parametrize("name", sorted(VAE_TABLES))
def test_vae_decoder_only_keys(name: str) -> None:
    table = key_table(name)
    with torch.device("meta"):
        vae = VAE(VAE_TABLES[name], decoder_only=True)
    expected = {k for k in table["keys"] if not k.startswith("encoder.")}
    assert set(vae.state_dict()) == expected


@pytest.mark.parametrize("name", sorted(VOCODER_TABLES))
def test_bigvgan_module_matches_table(name: str) -> None:
    with torch.device("meta"):
        model = BigVGAN(VOCODER_TABLES[name])
    assert_state_matches_table(model.state_dict(), key_table(f"{name}_after_weight_norm_removal"))


@pytest.mark.parametrize("name", sorted(VOCODER_TABLES))
def test_bigvgan_presets_match_official_configs(name: str) -> None:
    ours = VOCODER_TABLES[name]
    official = BigVGANConfig.from_dict(key_table(f"{name}_checkpoint")["config"])
    if official.sampling_rate is None:  # the 16k yml does not state it
        official = replace(official, sampling_rate=ours.sampling_rate)
    assert official == ours


def test_vae_44k_loader_round_trip_meta() -> None:
    """The 1.2 GB 44k VAE is checked with meta tensors: keys and shapes only."""
    vae = load_vae(_meta_from_table(key_table("vae_44k")), VAE_44K)
    assert vae.weight_norm_removed
    assert_state_matches_table(vae.state_dict(), key_table("vae_44k"))


def test_vae_16k_loader_round_trip_zeros() -> None:
    table = key_table("vae_16k")
    state = zeros_from_table(table)
    state["decoder.conv_in.weight"].fill_(1.0)  # one nonzero conv to check the fold's value
    vae = load_vae(state, VAE_16K)
    assert_state_matches_table(vae.state_dict(), table)
    fan_in = 20 * 3
    expected = 1.0 / (math.sqrt(fan_in) + 1e-4 * math.sqrt(fan_in))
    torch.testing.assert_close(
        vae.decoder.conv_in.weight, torch.full((1536, 20, 3), expected), rtol=1e-6, atol=0
    )
    assert float(vae.decoder.conv_out.weight.abs().max()) == 0.0  # 0 / (0 + eps) stays 0
    del state, vae
    gc.collect()


@pytest.mark.parametrize("name", sorted(VOCODER_TABLES))
def test_bigvgan_checkpoint_round_trip(name: str) -> None:
    """The checkpoint-form table loads; with g = v = 1 every folded row is 1/sqrt(row size)."""
    config = VOCODER_TABLES[name]
    checkpoint = key_table(f"{name}_checkpoint")
    state = zeros_from_table(checkpoint)
    for key, value in state.items():
        if key.endswith((".weight_g", ".weight_v")):
            value.fill_(1.0)
    model = bigvgan_from_state(config, state, source=name)
    plain = model.state_dict()
    assert_state_matches_table(plain, key_table(f"{name}_after_weight_norm_removal"))
    for key in ("conv_pre.weight", "ups.0.0.weight", "resblocks.17.convs2.2.weight"):
        weight = plain[key]
        expected = torch.full_like(weight, 1.0 / math.sqrt(weight[0].numel()))
        torch.testing.assert_close(weight, expected, rtol=1e-6, atol=0)
    assert "conv_post.bias" in plain if config.use_bias_at_final else "conv_post.bias" not in plain
    del state, model, plain
    gc.collect()


def test_bigvgan_accepts_parametrization_names() -> None:
    fx = _fixture("bigvgan16k")
    renamed = {
        k.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1"
        ): v
        for k, v in fx.group("ckpt").items()
    }
    assert any("parametrizations" in k for k in renamed)
    folded = fold_weight_norm(renamed)
    for key, ref in fx.state.items():
        assert torch.equal(folded[key], ref), key


# --- file loaders and their errors ------------------------------------------------------------


def test_load_bigvgan_16k_file(tmp_path: Path) -> None:
    fx = _fixture("bigvgan16k")
    path = tmp_path / "best_netG.pt"
    torch.save({"generator": fx.group("ckpt"), "optim_g": {}}, path)
    model = load_bigvgan_16k(path, BigVGANConfig.from_dict(fx.config))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    with torch.no_grad():
        assert_golden_close(model(fx.inputs["mel"]), fx.outputs["wav"], "wav")


def test_load_bigvgan_v2_directory(tmp_path: Path) -> None:
    fx = _fixture("bigvgan44k")
    hub_config = {**fx.config, "batch_size": 4, "learning_rate": 1e-4, "fmax": None}
    (tmp_path / "config.json").write_text(json.dumps(hub_config))
    torch.save({"generator": fx.group("ckpt")}, tmp_path / "bigvgan_generator.pt")
    model = load_bigvgan_v2(tmp_path)
    assert model.config.use_tanh_at_final is False and model.config.use_bias_at_final is False
    with torch.no_grad():
        assert_golden_close(model(fx.inputs["mel"]), fx.outputs["wav"], "wav")


def test_bigvgan_incomplete_checkpoint_names_file_and_keys(tmp_path: Path) -> None:
    fx = _fixture("bigvgan16k")
    state = dict(fx.group("ckpt"))
    del state["conv_post.bias"]
    state["conv_extra.bias"] = torch.zeros(1)
    path = tmp_path / "broken_netG.pt"
    torch.save({"generator": state}, path)
    with pytest.raises(RuntimeError) as err:
        load_bigvgan_16k(path, BigVGANConfig.from_dict(fx.config))
    message = str(err.value)
    assert str(path) in message and "conv_post.bias" in message and "conv_extra.bias" in message


def test_bigvgan_half_weight_norm_pair_is_reported(tmp_path: Path) -> None:
    fx = _fixture("bigvgan16k")
    state = dict(fx.group("ckpt"))
    del state["ups.2.0.weight_v"]
    path = tmp_path / "best_netG.pt"
    torch.save({"generator": state}, path)
    with pytest.raises(RuntimeError, match="ups.2.0.weight_g") as err:
        load_bigvgan_16k(path, BigVGANConfig.from_dict(fx.config))
    assert str(path) in str(err.value)


def test_bigvgan_file_without_generator_entry(tmp_path: Path) -> None:
    path = tmp_path / "best_netG.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(RuntimeError, match="generator") as err:
        load_bigvgan_16k(path, BIGVGAN_TINY_16K)
    assert str(path) in str(err.value)


def test_bigvgan_shape_mismatch_is_reported() -> None:
    fx = _fixture("bigvgan16k")
    wrong = BigVGANConfig.from_dict({**fx.config, "num_mels": 100})
    with pytest.raises(RuntimeError, match=r"conv_pre\.weight"):
        bigvgan_from_state(wrong, fx.state, source="fixture")


def test_load_vae_file_and_errors(tmp_path: Path) -> None:
    fx = _fixture("vae")
    config = VAEConfig.from_dict(fx.config)
    good = tmp_path / "v1-16.pth"
    torch.save(fx.state, good)
    vae = load_vae(good, config, decoder_only=True)
    assert vae.encoder is None and not vae.training
    with torch.no_grad():
        assert_golden_close(vae.decode(fx.inputs["z"]), fx.outputs["recon"], "recon")

    broken_state = dict(fx.state)
    del broken_state["decoder.mid.attn_1.qkv.weight"]
    broken_state["decoder.extra.weight"] = torch.zeros(1)
    broken = tmp_path / "v1-16-broken.pth"
    torch.save(broken_state, broken)
    with pytest.raises(RuntimeError) as err:
        load_vae(broken, config)
    message = str(err.value)
    assert str(broken) in message
    assert "decoder.mid.attn_1.qkv.weight" in message and "decoder.extra.weight" in message

    with pytest.raises(RuntimeError, match="data_mean"):
        load_vae(fx.state, VAE_CONFIGS["tiny_44k"])  # 128-band statistics vs an 80-band file


# --- behaviour: mel front end -----------------------------------------------------------------


@pytest.mark.parametrize("config", [MEL_16K, MEL_44K], ids=["16k", "44k"])
def test_mel_bf16_runs_stft_in_fp32(config, monkeypatch) -> None:
    mel = MelConverter(config).to(torch.bfloat16)
    assert mel.mel_basis.dtype == torch.float32 and mel.hann_window.dtype == torch.float32

    seen = []
    real_stft = torch.stft

    def spy(x, *args, **kwargs):
        seen.append((x.dtype, kwargs["window"].dtype))
        return real_stft(x, *args, **kwargs)

    monkeypatch.setattr(torch, "stft", spy)
    wav = (
        torch.rand(2, config.sampling_rate // 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ).to(torch.bfloat16)
    out = mel(wav)
    assert seen == [(torch.float32, torch.float32)]
    assert out.dtype == torch.bfloat16
    reference = MelConverter(config)(wav.float())
    assert torch.equal(out, reference.to(torch.bfloat16))


def test_mel_shapes_clamp_and_unbatched() -> None:
    mel = MelConverter(MEL_16K)
    wav = torch.randn(3, 16000, generator=torch.Generator().manual_seed(1)) * 0.3
    out = mel(wav)
    assert out.shape == (3, 80, MEL_16K.num_frames(16000)) == (3, 80, 62)
    assert torch.equal(mel(wav[1]), out[1])
    loud = wav.clone()
    loud[:, 100:200] = 5.0
    assert torch.equal(mel(loud), mel(loud.clamp(-1, 1)))
    assert not torch.equal(mel(loud), out)


# --- behaviour: VAE ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_16k", "tiny_44k"])
def test_vae_shapes(name: str) -> None:
    config = VAE_CONFIGS[name]
    vae = random_vae(config, seed=3)
    mel = vae.data_mean + vae.data_std * torch.randn(2, config.data_dim, 40)
    with torch.no_grad():
        posterior = vae.encode(mel)
        assert posterior.mean.shape == posterior.logvar.shape == (2, config.embed_dim, 20)
        sequence = latent_to_sequence(posterior.mode())
        assert sequence.shape == (2, 20, config.embed_dim)
        recon = vae.decode(sequence_to_latent(sequence))
    assert recon.shape == mel.shape
    assert torch.isfinite(recon).all() and 0.1 < float(recon.std()) < 100


def test_vae_bf16_decode_close_to_fp32() -> None:
    vae = random_vae("tiny_16k", seed=4)
    z = torch.randn(1, 20, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = vae.decode(z)
        got = vae.to(torch.bfloat16).decode(z.bfloat16())
    assert got.dtype == torch.bfloat16
    assert float((got.float() - ref).norm() / ref.norm()) < 3e-2


def test_diagonal_gaussian_seeded_sampling() -> None:
    moments = torch.randn(2, 8, 5, generator=torch.Generator().manual_seed(0))
    moments[:, 4:] = moments[:, 4:] * 40  # some log-variances beyond the clamp
    post = DiagonalGaussian(moments)
    assert torch.equal(post.mode(), moments[:, :4])
    assert float(post.logvar.max()) <= 20 and float(post.logvar.min()) >= -30
    a = post.sample(torch.Generator().manual_seed(7))
    b = post.sample(torch.Generator().manual_seed(7))
    c = post.sample(torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, post.mean + post.std * noise)


def test_vae_decoder_only_and_weight_norm_guard() -> None:
    full = random_vae("tiny_16k", seed=5)
    light = random_vae("tiny_16k", seed=5, decoder_only=True)
    assert not any(k.startswith("encoder.") for k in light.state_dict())
    for key, value in light.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    with pytest.raises(RuntimeError, match="decoder_only"):
        light.encode(torch.zeros(1, 80, 8))

    raw = VAE(VAE_CONFIGS["tiny_16k"])
    with pytest.raises(RuntimeError, match="remove_weight_norm"):
        raw.decode(torch.zeros(1, 20, 4))
    raw.remove_weight_norm()
    once = raw.decoder.conv_in.weight.clone()
    raw.remove_weight_norm()  # a second call must not normalise again
    assert torch.equal(raw.decoder.conv_in.weight, once)
    assert all(m.weight_norm_removed for m in raw.modules() if isinstance(m, MPConv1d))


def test_random_vae_is_deterministic() -> None:
    a, b = random_vae("tiny_44k", seed=1), random_vae("tiny_44k", seed=1)
    c = random_vae("tiny_44k", seed=2)
    sa, sc = a.state_dict(), c.state_dict()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in sa.items())
    assert not torch.equal(sa["decoder.conv_in.weight"], sc["decoder.conv_in.weight"])
    assert torch.equal(sa["data_mean"], sc["data_mean"])  # kept official statistics


# --- behaviour: vocoder -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_16k", "tiny_44k"])
def test_random_vocoder_is_deterministic_and_unsaturated(name: str) -> None:
    config = BIGVGAN_CONFIGS[name]
    mel = -2 + torch.randn(2, config.num_mels, 8, generator=torch.Generator().manual_seed(0))
    a, b = random_vocoder(config, seed=11), random_vocoder(config, seed=11)
    with torch.no_grad():
        wav = a(mel)
        assert torch.equal(wav, b(mel))
    assert wav.shape == (2, 1, 8 * config.hop_length)
    assert float(wav.abs().max()) <= 1.0
    assert float(wav.std()) > 0.03  # not silent
    assert float((wav.abs() > 0.99).float().mean()) < 0.02  # not saturated
    ref = BigVGAN(config).state_dict()
    for key, value in a.state_dict().items():
        if key.endswith(".filter"):
            assert torch.equal(value, ref[key]), key


def test_bigvgan_config_validation_and_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="halves to 0"):
        BigVGANConfig(upsample_initial_channel=32)  # six halvings of 32 leave no channel
    with pytest.raises(ValueError, match="resblock"):
        BigVGANConfig(resblock="2")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**BIGVGAN_V2_44K.__dict__, "num_gpus": 0, "seed": 1234}))
    assert BigVGANConfig.from_json(path) == BIGVGAN_V2_44K
    assert BIGVGAN_16K.hop_length == 256 and BIGVGAN_V2_44K.hop_length == 512


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_codec_chain_shapes(mode: str) -> None:
    """waveform -> mel -> latent -> mel -> waveform with the tiny codecs of one audio mode."""
    mel_config = MEL_16K if mode == "16k" else MEL_44K
    vae = random_vae(f"tiny_{mode}", seed=0)
    vocoder = random_vocoder(BIGVGAN_CONFIGS[f"tiny_{mode}"], seed=0)
    assert vocoder.config.hop_length == mel_config.hop_size
    seconds = 0.5
    wav = torch.rand(1, int(seconds * mel_config.sampling_rate)) * 0.2 - 0.1
    with torch.no_grad():
        mel = MelConverter(mel_config)(wav)
        frames = mel_config.num_frames(wav.shape[-1]) // 2 * 2  # the VAE halves time
        latent = vae.encode(mel[..., :frames]).mode()
        assert latent.shape == (1, vae.config.embed_dim, frames // 2)
        audio = vocoder(vae.decode(latent))
    assert audio.shape == (1, 1, frames * mel_config.hop_size)
