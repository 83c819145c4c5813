"""Audio codec modules against fixtures computed by the official SelVA code.

Every module is built from its fixture's `config` metadata and every `out.*` tensor is compared
with the fixture README's tolerance (rel_l2 <= 1e-5, peak <= 2e-5 of max|ref|).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from golden_support import (
    Fixture,
    assert_golden_close,
    find_fixtures,
    fixture_ids,
    load_fixture,
)

from selva_core.audio.alias_free import kaiser_sinc_filter
from selva_core.audio.bigvgan import BigVGAN, BigVGANConfig, bigvgan_from_state
from selva_core.audio.mel import MelConfig, MelConverter
from selva_core.audio.vae import VAE, VAEConfig, load_vae

MEL = find_fixtures("mel")
VAE_FIXTURES = find_fixtures("vae")
VOCODERS = find_fixtures("bigvgan")

# Tight bound for tensors we compute from first principles (filterbanks, folded weights).
EXACTISH = dict(rel_tol=1e-6, peak_tol=1e-6)


def _check_outputs(fx: Fixture, produce: dict[str, Callable[[], torch.Tensor]]) -> None:
    """Every stored output must have a producer (new outputs fail loudly) and must match."""
    assert fx.outputs, f"{fx.path.name}: no out.* tensors"
    unknown = sorted(set(fx.outputs) - set(produce))
    assert not unknown, f"{fx.path.name}: no producer for outputs {unknown}"
    for name, ref in fx.outputs.items():
        with torch.no_grad():
            assert_golden_close(produce[name](), ref, f"{fx.path.name}:out.{name}")


@pytest.mark.parametrize("path", MEL, ids=fixture_ids(MEL))
def test_mel_golden(path: Path) -> None:
    fx = load_fixture(path)
    mel = MelConverter(MelConfig.from_dict(fx.config))
    # Our Slaney filterbank (no librosa) and window against the official buffers.
    assert_golden_close(mel.mel_basis, fx.state["mel_basis"], "mel_basis", **EXACTISH)
    assert_golden_close(mel.hann_window, fx.state["hann_window"], "hann_window", **EXACTISH)
    assert set(mel.state_dict()) == set(fx.state)
    _check_outputs(fx, {"mel": lambda: mel(fx.inputs["wav"])})


@pytest.mark.parametrize("path", VAE_FIXTURES, ids=fixture_ids(VAE_FIXTURES))
def test_vae_golden(path: Path) -> None:
    fx = load_fixture(path)
    config = VAEConfig.from_dict(fx.config)
    vae = load_vae(fx.state, config)  # strict load of the raw weights, then the fold

    folded = vae.state_dict()
    assert set(folded) == set(fx.group("normed"))
    for key, ref in fx.group("normed").items():
        assert_golden_close(folded[key], ref, f"normed.{key}", **EXACTISH)

    # The raw weights really are raw: folding is what makes them match `normed.*`.
    raw = fx.state["decoder.conv_in.weight"]
    assert not torch.allclose(raw, fx.group("normed")["decoder.conv_in.weight"])

    posterior = vae.encode(fx.inputs["mel"])
    _check_outputs(
        fx,
        {
            "mean": lambda: posterior.mean,
            "logvar": lambda: posterior.logvar,
            "recon": lambda: vae.decode(fx.inputs["z"]),
            "recon_of_mean": lambda: vae.decode(posterior.mode()),
        },
    )


@pytest.mark.parametrize("path", VAE_FIXTURES, ids=fixture_ids(VAE_FIXTURES))
def test_vae_decoder_only_golden(path: Path) -> None:
    fx = load_fixture(path)
    vae = load_vae(fx.state, VAEConfig.from_dict(fx.config), decoder_only=True)
    assert vae.encoder is None
    with torch.no_grad():
        assert_golden_close(vae.decode(fx.inputs["z"]), fx.outputs["recon"], "recon")


@pytest.mark.parametrize("path", VAE_FIXTURES, ids=fixture_ids(VAE_FIXTURES))
def test_vae_statistics_golden(path: Path) -> None:
    """data_mean / data_std come from our code, not from the checkpoint."""
    fx = load_fixture(path)
    vae = VAE(VAEConfig.from_dict(fx.config))
    assert torch.equal(vae.data_mean, fx.state["data_mean"])
    assert torch.equal(vae.data_std, fx.state["data_std"])


@pytest.mark.parametrize("path", VOCODERS, ids=fixture_ids(VOCODERS))
def test_bigvgan_golden(path: Path) -> None:
    fx = load_fixture(path)
    config = BigVGANConfig.from_dict(fx.config)
    assert config.hop_length * fx.inputs["mel"].shape[-1] == fx.outputs["wav"].shape[-1]

    from_plain = bigvgan_from_state(config, fx.state, source=path.name)
    from_checkpoint = bigvgan_from_state(config, fx.group("ckpt"), source=path.name)

    # Our weight-norm fold of ckpt.* reproduces the official removal (state.*).
    folded = from_checkpoint.state_dict()
    assert set(folded) == set(fx.state)
    for key, ref in fx.state.items():
        assert_golden_close(folded[key], ref, f"fold {key}", **EXACTISH)

    for model in (from_plain, from_checkpoint):
        _check_outputs(fx, {"wav": lambda m=model: m(fx.inputs["mel"])})


@pytest.mark.parametrize("path", VOCODERS, ids=fixture_ids(VOCODERS))
def test_bigvgan_filters_golden(path: Path) -> None:
    """The anti-aliasing filters our module computes equal the official persistent buffers."""
    fx = load_fixture(path)
    ours = BigVGAN(BigVGANConfig.from_dict(fx.config)).state_dict()
    filters = [k for k in fx.state if k.endswith(".filter")]
    per_stage = sum(2 * len(d) for d in fx.config["resblock_dilation_sizes"])
    activations = len(fx.config["upsample_rates"]) * per_stage + 1  # + activation_post
    assert len(filters) == 2 * activations  # one up- and one down-sampling filter each
    for key in filters:
        assert torch.equal(ours[key], fx.state[key]), key
    assert torch.equal(kaiser_sinc_filter(0.25, 0.3, 12), fx.state[filters[0]])
