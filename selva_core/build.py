"""Build ready-to-run modules for a model spec: published weights, or seeded random for `tiny`.

Every builder returns a frozen module in eval mode on the requested device and dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .audio import bigvgan, vae
from .audio.mel import MEL_16K, MEL_44K, MelConverter
from .checkpoint import check_state
from .model.generator import DERIVED_KEYS, Generator
from .model.motionformer import MotionFormerConfig
from .model.synchformer import Synchformer, load_synchformer
from .model.textsynch import TextSynch, TextSynchConfig, load_textsynch, random_textsynch
from .random_init import randomize_
from .variants import TINY_SYNC_DIM, TINY_T5_DIM, ModelSpec, get_spec
from .weights import WeightStore, load_verified

# Fixed seeds so every process (Ray actor, train rank) builds identical tiny weights.
TINY_SEEDS = {"generator": 1235, "sync_encoder": 1236, "vae": 1237, "vocoder": 1238}


def _generator_rules(name: str, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
    """Extras drawn as the golden fixtures did: statistics and learned empty features."""
    if name == "latent_mean":
        return torch.randn(t.shape, generator=gen) * 0.5
    if name == "latent_std":
        return 0.5 + torch.rand(t.shape, generator=gen)
    if name in ("empty_string_feat", "empty_clip_feat", "empty_sync_feat"):
        return torch.randn(t.shape, generator=gen)
    return None


def random_generator(spec: ModelSpec | str, seed: int = TINY_SEEDS["generator"]) -> Generator:
    """A generator with O(1) random weights (the official init would output zeros)."""
    spec = get_spec(spec)
    model = Generator(spec.generator_config, spec.sequence())
    return randomize_(model, seed, rules=[_generator_rules])


def generator_from_state_dict(
    spec: ModelSpec | str, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> Generator:
    """Build on the meta device (no init cost, no double memory), then assign the weights."""
    spec = get_spec(spec)
    with torch.device("meta"):
        model = Generator(spec.generator_config, spec.sequence())
    weights = {k: v for k, v in state_dict.items() if k not in DERIVED_KEYS}
    flags = f"{spec.family}, {spec.size}, {spec.mode}{', v2' if spec.v2 else ''}"
    check_state(model, weights, source, note=f" {spec.name} ({flags})")
    model.load_weights(weights, assign=True)
    return model


def load_generator(
    spec: ModelSpec | str,
    store: WeightStore | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    duration: float = 8.0,
) -> Generator:
    """The generator for a variant, in eval mode, on `device` in `dtype`."""
    spec = get_spec(spec)
    if spec.is_tiny:
        model = random_generator(spec)
    else:
        store = store or WeightStore()
        path = store.resolve(spec.generator_weights)
        model = generator_from_state_dict(
            spec, load_verified(store, spec.generator_weights), source=str(path)
        )
    model.set_sequence(spec.sequence(duration))
    return _frozen(model, dtype, device)


def _frozen(module: nn.Module, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_sync_encoder(
    spec: ModelSpec | str,
    store: WeightStore | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    window_chunk: int | None = 1,
) -> TextSynch | Synchformer:
    """TextSynch for SelVA variants, the plain Synchformer video tower for MMAudio ones."""
    spec = get_spec(spec)
    if spec.is_tiny:
        config = TextSynchConfig.tiny(width=TINY_SYNC_DIM, text_dim=TINY_T5_DIM)
        if spec.uses_text_sync:
            model = random_textsynch(config, seed=TINY_SEEDS["sync_encoder"])
        else:
            model = Synchformer(config.video)
            randomize_(model, TINY_SEEDS["sync_encoder"])
    else:
        store = store or WeightStore()
        key = "textsynch" if spec.uses_text_sync else "synchformer"
        state = load_verified(store, key)
        if spec.uses_text_sync:
            model = load_textsynch(state, TextSynchConfig.depth1())
        else:
            model = load_synchformer(state, MotionFormerConfig())
    model.window_chunk = window_chunk
    return _frozen(model, dtype, device)


def load_vae(
    spec: ModelSpec | str,
    store: WeightStore | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    with_encoder: bool = False,
) -> vae.VAE:
    """The latent codec; the encoder is only kept when audio must be encoded (training)."""
    spec = get_spec(spec)
    if spec.is_tiny:
        model = vae.random_vae(
            vae.VAE_CONFIGS[f"tiny_{spec.mode}"],
            TINY_SEEDS["vae"],
            decoder_only=not with_encoder,
        )
    else:
        store = store or WeightStore()
        state = load_verified(store, f"vae_{spec.mode}")
        model = vae.load_vae(state, vae.VAE_CONFIGS[spec.mode], decoder_only=not with_encoder)
    return _frozen(model, dtype, device)


def load_vocoder(
    spec: ModelSpec | str,
    store: WeightStore | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> bigvgan.BigVGAN:
    """BigVGAN (16 kHz, Make-An-Audio 2) or BigVGAN-v2 (44.1 kHz, NVIDIA's hub release)."""
    spec = get_spec(spec)
    if spec.is_tiny:
        config = bigvgan.BIGVGAN_TINY_16K if spec.mode == "16k" else bigvgan.BIGVGAN_TINY_44K
        model = bigvgan.random_vocoder(config, TINY_SEEDS["vocoder"])
    else:
        store = store or WeightStore()
        if spec.mode == "16k":
            model = bigvgan.load_bigvgan_16k(store.resolve("bigvgan_16k"))
        else:
            model = bigvgan.load_bigvgan_v2(store.resolve("bigvgan_v2_44k"))
    return _frozen(model, dtype, device)


def mel_converter(spec: ModelSpec | str, device: torch.device | str = "cpu") -> MelConverter:
    """The log-mel front end (no weights; always computes in fp32)."""
    spec = get_spec(spec)
    return MelConverter(MEL_16K if spec.mode == "16k" else MEL_44K).to(device).eval()


def encoder_fingerprint(
    spec: ModelSpec | str, store: WeightStore | None = None, *, with_vae: bool = False
) -> str:
    """A short hash naming the exact feature-encoder weights, stored beside every feature.

    Published files are identified by their digests (cached per file by the store); tiny
    variants by their seeds and the code version that draws them.
    """
    import hashlib
    import json

    from . import __version__
    from .weights import HubSnapshot

    spec = get_spec(spec)
    if spec.is_tiny:
        payload: dict = {"variant": spec.name, "seeds": TINY_SEEDS, "code": __version__}
    else:
        store = store or WeightStore()
        keys = [k for k in spec.weight_keys if k.startswith(("textsynch", "synchformer"))]
        keys += ["clip_dfn5b"] + (["flan_t5_base"] if spec.uses_text_sync else [])
        keys += [f"vae_{spec.mode}"] if with_vae else []
        payload = {}
        for key in keys:
            path = store.resolve(key)
            if isinstance(store.entry(key), HubSnapshot):
                files = sorted(
                    p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts
                )
                payload[key] = {str(p.relative_to(path)): store.digest(p) for p in files}
            else:
                payload[key] = store.digest(path)
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
