"""Flow-matching sampling: Euler ODE from noise (t=0) to data (t=1) with classifier-free guidance.

Reproducibility contract: a clip's latent depends only on its own conditions and its own seed,
never on which other clips share the batch. Each clip's starting noise comes from its own
CPU `torch.Generator`, so the same seed gives the same noise on every device and batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .model.generator import Generator, PreprocessedConditions


@dataclass(frozen=True)
class SamplerConfig:
    num_steps: int = 25
    cfg_strength: float = 4.5
    # Run the conditional and unconditional passes as one batch of 2B (same result within fp
    # rounding, fewer kernel launches). False reproduces the official two separate passes.
    batch_cfg: bool = True

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not self.cfg_strength >= 0:
            raise ValueError(f"cfg_strength must be >= 0, got {self.cfg_strength}")

    @property
    def guided(self) -> bool:
        """Guidance is on when cfg_strength >= 1, as in the official wrapper."""
        return self.cfg_strength >= 1.0


def initial_noise(seeds: Sequence[int], latent_seq_len: int, latent_dim: int) -> torch.Tensor:
    """x0 ~ N(0, I) of shape (B, N, C), float32 on CPU, one generator per seed."""
    rows = []
    for seed in seeds:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        rows.append(torch.randn(1, latent_seq_len, latent_dim, generator=gen))
    return torch.cat(rows, dim=0)


def time_grid(num_steps: int) -> torch.Tensor:
    return torch.linspace(0, 1, num_steps + 1, dtype=torch.float32)


def euler(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    num_steps: int,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = velocity(t, x) over linspace(0, 1, num_steps + 1)."""
    ts = time_grid(num_steps)
    x = x0
    for k in range(num_steps):
        x = x + (ts[k + 1] - ts[k]) * velocity(ts[k], x)
        if progress is not None:
            progress(k + 1, num_steps)
    return x


@torch.no_grad()
def sample_latents(
    generator: Generator,
    conditions: PreprocessedConditions,
    empty_conditions: PreprocessedConditions,
    x0: torch.Tensor,
    config: SamplerConfig = SamplerConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Normalized latents (B, N, C) in float32 from noise `x0`.

    The ODE state stays in float32 whatever the model dtype, so bf16/fp16 models lose no
    precision in the accumulation; the network sees the state cast to its own dtype.
    """
    b = x0.shape[0]
    device = generator.device
    x0 = x0.to(device=device, dtype=torch.float32)
    cond = conditions.expand(b)
    uncond = empty_conditions.expand(b)
    if cond.batch_size != b or uncond.batch_size != b:
        raise ValueError(
            f"conditions have batch {cond.batch_size} / {uncond.batch_size}, noise has {b}"
        )
    both = PreprocessedConditions.cat([cond, uncond]) if config.batch_cfg else None
    w = config.cfg_strength

    def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t_b = t.to(device) * torch.ones(b, device=device, dtype=torch.float32)
        if not config.guided:
            return generator.predict_flow(x, t_b, cond).float()
        if both is not None:
            v = generator.predict_flow(torch.cat([x, x]), torch.cat([t_b, t_b]), both).float()
            v_c, v_u = v[:b], v[b:]
        else:
            v_c = generator.predict_flow(x, t_b, cond).float()
            v_u = generator.predict_flow(x, t_b, uncond).float()
        return w * v_c + (1 - w) * v_u

    return euler(velocity, x0, config.num_steps, progress)


@torch.no_grad()
def generate_latents(
    generator: Generator,
    clip_f: torch.Tensor,
    sync_f: torch.Tensor,
    text_f: torch.Tensor,
    seeds: Sequence[int],
    *,
    negative_text_f: torch.Tensor | None = None,
    config: SamplerConfig = SamplerConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Un-normalized latents (B, N, C), float32, ready for the VAE decoder.

    `negative_text_f` holds each clip's negative-prompt CLIP features; None uses the stored
    empty-string features for every clip.
    """
    b = text_f.shape[0]
    if len(seeds) != b:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {b} clips")
    if negative_text_f is not None and negative_text_f.shape[0] != b:
        raise ValueError(f"negative_text_f has batch {negative_text_f.shape[0]}, expected {b}")
    cond = generator.preprocess_conditions(clip_f, sync_f, text_f)
    uncond = generator.empty_conditions(b, negative_text_f=negative_text_f)
    x0 = initial_noise(seeds, generator.latent_seq_len, generator.latent_dim)
    latents = sample_latents(generator, cond, uncond, x0, config, progress)
    return generator.unnormalize(latents)
