"""Small shared builders for tests of the generator and of LoRA."""

from __future__ import annotations

import torch

from selva_core.build import load_generator
from selva_core.flow_loss import FlowBatch
from selva_core.model.generator import Generator


def tiny_generator(duration: float = 2.0) -> Generator:
    """The tiny variant's generator (seeded O(1) weights) at a short duration, for speed."""
    return load_generator("tiny", duration=duration)


def random_flow_batch(model: Generator, n: int, seed: int) -> FlowBatch:
    """N(0, 1) targets and conditions shaped for `model`, from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return FlowBatch(
        torch.randn(n, model.latent_seq_len, c.latent_dim, generator=g),
        torch.randn(n, model.clip_seq_len, c.clip_dim, generator=g),
        torch.randn(n, model.sync_seq_len, c.sync_dim, generator=g),
        torch.randn(n, c.text_seq_len, c.text_dim, generator=g),
    )
