"""Flow-matching sampling: Euler ODE from noise (t=0) to data (t=1) with classifier-free guidance.

Reproducibility contract: a clip's latent depends only on its own conditions and its own seed,
never on which other clips share the batch. Each clip's starting noise comes from its own
CPU `torch.Generator`, so the same seed gives the same noise on every device and batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .defaults import DEFAULT_CFG, DEFAULT_STEPS
from .model.generator import Generator, PreprocessedConditions


@dataclass(frozen=True)
class SamplerConfig:
    num_steps: int = DEFAULT_STEPS
    cfg_strength: float = DEFAULT_CFG
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
    project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = velocity(t, x) over linspace(0, 1, num_steps + 1).

    `project(t, x)`, if given, replaces the state after each step (inpainting)."""
    ts = time_grid(num_steps)
    x = x0
    for k in range(num_steps):
        x = x + (ts[k + 1] - ts[k]) * velocity(ts[k], x)
        if project is not None:
            x = project(ts[k + 1], x)
        if progress is not None:
            progress(k + 1, num_steps)
    return x


def inpainting_projection(
    x0: torch.Tensor, known: torch.Tensor, known_mask: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Hold the known latent frames on their flow path: x_t = (1 - t) * x0 + t * known.

    In this codebase t = 0 is noise (`x0`, the clip's own starting noise) and t = 1 is data, so
    the held frames start as the noise the sampler starts from anyway and reach `known`
    exactly at t = 1, while the free frames follow the model, which at every step sees the
    held part as the partly-noised context the flow would give it. `known_mask` (B, N) is
    True on held frames; `known` (B, N, C) is the normalized latent there (ignored elsewhere).
    """
    if known.shape != x0.shape:
        raise ValueError(f"known latent has shape {tuple(known.shape)}, expected {tuple(x0.shape)}")
    if known_mask.shape != x0.shape[:2]:
        raise ValueError(f"known_mask has shape {tuple(known_mask.shape)}, expected (B, N)")
    held = known_mask.to(device=x0.device, dtype=torch.bool).unsqueeze(-1)
    known = known.to(device=x0.device, dtype=torch.float32)

    def project(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.to(device=x.device, dtype=torch.float32)
        return torch.where(held, (1 - t) * x0 + t * known, x)

    return project


@torch.no_grad()
def sample_latents(
    generator: Generator,
    conditions: PreprocessedConditions,
    empty_conditions: PreprocessedConditions,
    x0: torch.Tensor,
    config: SamplerConfig = SamplerConfig(),
    progress: Callable[[int, int], None] | None = None,
    *,
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalized latents (B, N, C) in float32 from noise `x0`.

    The ODE state stays in float32 whatever the model dtype, so bf16/fp16 models lose no
    precision in the accumulation; the network sees the state cast to its own dtype.

    `known` (B, N, C, normalized) with `known_mask` (B, N) bool: flow-matching inpainting, the
    masked frames are held to `known` (see `inpainting_projection`) and come out equal to it.
    Without them (default) sampling is unchanged, bit for bit.
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
            v = generator.predict_flow(x, t_b, both, repeats=2).float()
            v_c, v_u = v[:b], v[b:]
        else:
            v_c = generator.predict_flow(x, t_b, cond).float()
            v_u = generator.predict_flow(x, t_b, uncond).float()
        return w * v_c + (1 - w) * v_u

    project = None
    if known is not None or known_mask is not None:
        if known is None or known_mask is None:
            raise ValueError("give both known and known_mask, or neither")
        project = inpainting_projection(x0, known.to(device), known_mask.to(device))
    return euler(velocity, x0, config.num_steps, progress, project)


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
    known_latents: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Un-normalized latents (B, N, C), float32, ready for the VAE decoder.

    `negative_text_f` holds each clip's negative-prompt CLIP features; None uses the stored
    empty-string features for every clip. `known_latents`: per clip, None or un-normalized
    latent frames (K, C), K <= N, to hold at the start of its sequence (`continue` windows of a
    long video: the overlap with the previous window); the result equals them there up to the
    float rounding of normalize / unnormalize.
    """
    b = text_f.shape[0]
    if len(seeds) != b:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {b} clips")
    if negative_text_f is not None and negative_text_f.shape[0] != b:
        raise ValueError(f"negative_text_f has batch {negative_text_f.shape[0]}, expected {b}")
    cond = generator.preprocess_conditions(clip_f, sync_f, text_f)
    uncond = generator.empty_conditions(b, negative_text_f=negative_text_f)
    x0 = initial_noise(seeds, generator.latent_seq_len, generator.latent_dim)
    known, known_mask = None, None
    if known_latents is not None and any(k is not None for k in known_latents):
        known, known_mask = known_tensors(generator, known_latents, x0.shape)
    latents = sample_latents(
        generator, cond, uncond, x0, config, progress, known=known, known_mask=known_mask
    )
    return generator.unnormalize(latents)


def known_tensors(
    generator: Generator, known_latents: Sequence[torch.Tensor | None], shape: torch.Size
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip prefixes (K_i, C) of un-normalized latent -> (known, known_mask) for
    `sample_latents`: normalized, zero-padded to (B, N, C), mask True on the first K_i frames."""
    b, n, c = shape
    if len(known_latents) != b:
        raise ValueError(f"got {len(known_latents)} known latents for a batch of {b} clips")
    known = torch.zeros(b, n, c, dtype=torch.float32)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, prefix in enumerate(known_latents):
        if prefix is None:
            continue
        if prefix.dim() != 2 or prefix.shape[1] != c or prefix.shape[0] > n:
            raise ValueError(
                f"known latent {i} has shape {tuple(prefix.shape)}, expected (K <= {n}, {c})"
            )
        k = prefix.shape[0]
        dev = generator.latent_mean.device
        known[i, :k] = generator.normalize(prefix.to(device=dev, dtype=torch.float32)).cpu()
        mask[i, :k] = True
    return known, mask
