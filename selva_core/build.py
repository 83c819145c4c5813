"""Build ready-to-run modules for a model spec: published weights, or seeded random for `tiny`."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .model.generator import Generator
from .random_init import randomize_
from .variants import ModelSpec, get_spec
from .weights import WeightsError, WeightStore, load_verified

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
    try:
        model.load_weights(state_dict, assign=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{source} does not match generator {spec.name} ({spec.family}, {spec.size}, "
            f"{spec.mode}{', v2' if spec.v2 else ''}): {exc}"
        ) from exc
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
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
