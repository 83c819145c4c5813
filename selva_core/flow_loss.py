"""The generator's training objective: conditional flow matching, as MMAudio trains it.

x_t = (1 - t) x0 + t x1 (t=0 noise, t=1 data), target velocity v = x1 - x0, loss = MSE averaged
over (N, C) then batch. Timesteps are uniform or logit-normal; classifier-free-guidance dropout
replaces the video group (clip + sync -> learned empty features) and the text (-> the stored
empty-string features) independently. Every random draw comes from an explicit CPU
`torch.Generator`, so a seed reproduces a loss on any device (Spectral Surgery relies on this).

Clips shorter than the training duration carry zero padding after their last latent frame;
`lengths` (valid frames per clip) keeps that padding out of the loss, so each clip's loss is
the mean over its own frames and a short clip never teaches the model to predict padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .model.generator import Generator, PreprocessedConditions

TIMESTEP_SAMPLERS = ("uniform", "logit_normal")


@dataclass(frozen=True)
class FlowLossConfig:
    timestep: str = "logit_normal"  # MMAudio's choice; "uniform" is the old LoRA trainer's
    logit_normal_sigma: float = 1.0
    cfg_dropout: float = 0.1  # per group: video (clip+sync) and text, drawn independently

    def __post_init__(self) -> None:
        if self.timestep not in TIMESTEP_SAMPLERS:
            raise ValueError(f"timestep must be one of {TIMESTEP_SAMPLERS}, got {self.timestep!r}")
        if not self.logit_normal_sigma > 0:
            raise ValueError(f"logit_normal_sigma must be > 0, got {self.logit_normal_sigma}")
        if not 0.0 <= self.cfg_dropout <= 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1], got {self.cfg_dropout}")


@dataclass
class FlowBatch:
    """Normalized target latents and the raw conditioning features of the same clips."""

    x1: torch.Tensor  # (B, N, C), already normalized
    clip_f: torch.Tensor  # (B, Nc, clip_dim)
    sync_f: torch.Tensor  # (B, Ns, sync_dim)
    text_f: torch.Tensor  # (B, 77, text_dim)
    lengths: torch.Tensor | None = None  # (B,) valid latent frames; None: every frame is audio

    def __len__(self) -> int:
        return self.x1.shape[0]

    def _parts(self) -> tuple[torch.Tensor, ...]:
        return (self.x1, self.clip_f, self.sync_f, self.text_f, self.full_lengths())

    def full_lengths(self) -> torch.Tensor:
        if self.lengths is not None:
            return self.lengths
        return torch.full((len(self),), self.x1.shape[1], dtype=torch.long)

    def select(self, index: slice | Sequence[int]) -> FlowBatch:
        if not isinstance(index, slice):
            index = torch.as_tensor(list(index), dtype=torch.long)
        return FlowBatch(*(t[index] for t in self._parts()))

    def to(self, device: torch.device | str) -> FlowBatch:
        return FlowBatch(*(t.to(device) for t in self._parts()))

    @staticmethod
    def cat(batches: Sequence[FlowBatch]) -> FlowBatch:
        return FlowBatch(
            *(torch.cat(ts) for ts in zip(*(b._parts() for b in batches), strict=True))
        )


def sample_timesteps(
    n: int,
    sampler: str = "logit_normal",
    *,
    sigma: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """n timesteps in (0, 1), float32 on CPU: U(0,1) or sigmoid(sigma * N(0,1))."""
    if sampler == "uniform":
        return torch.rand(n, generator=generator)
    if sampler == "logit_normal":
        return torch.sigmoid(sigma * torch.randn(n, generator=generator))
    raise ValueError(f"unknown timestep sampler {sampler!r}; choose from {TIMESTEP_SAMPLERS}")


def drop_conditions(
    model: Generator,
    clip_f: torch.Tensor,
    sync_f: torch.Tensor,
    text_f: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CFG dropout on raw features. Returns (clip, sync, text, video_dropped, text_dropped)."""
    b = clip_f.shape[0]
    video = (torch.rand(b, generator=generator) < p).to(clip_f.device)
    text = (torch.rand(b, generator=generator) < p).to(clip_f.device)
    empty_clip = model.empty_clip_feat.to(clip_f.dtype).unsqueeze(0).expand_as(clip_f)
    empty_sync = model.empty_sync_feat.to(sync_f.dtype).unsqueeze(0).expand_as(sync_f)
    empty_text = model.empty_string_feat.to(text_f.dtype).unsqueeze(0).expand_as(text_f)
    clip_f = torch.where(video[:, None, None], empty_clip, clip_f)
    sync_f = torch.where(video[:, None, None], empty_sync, sync_f)
    text_f = torch.where(text[:, None, None], empty_text, text_f)
    return clip_f, sync_f, text_f, video, text


def flow_matching_loss(
    model: Generator,
    x1: torch.Tensor,
    conditions: PreprocessedConditions,
    x0: torch.Tensor,
    t: torch.Tensor,
    *,
    reduction: str = "mean",
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the predicted and the true velocity, in fp32.

    `reduction="none"` returns one loss per clip (mean over N and C). With `lengths` (B,),
    frame n of clip b counts only when n < lengths[b]: padding adds nothing to the loss."""
    device = model.device
    x1 = x1.to(device, torch.float32)
    x0 = x0.to(device, torch.float32)
    t = t.to(device, torch.float32)
    x_t = (1.0 - t[:, None, None]) * x0 + t[:, None, None] * x1
    pred = model.predict_flow(x_t, t, conditions).float()
    per_frame = (pred - (x1 - x0)).square().mean(dim=2)
    if lengths is None or bool((lengths >= per_frame.shape[1]).all()):
        per_clip = per_frame.mean(dim=1)
    else:
        frames = torch.arange(per_frame.shape[1], device=device)
        mask = (frames[None, :] < lengths.to(device)[:, None]).float()
        per_clip = (per_frame * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    if reduction == "none":
        return per_clip
    if reduction == "mean":
        return per_clip.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def training_loss(
    model: Generator,
    batch: FlowBatch,
    config: FlowLossConfig = FlowLossConfig(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One stochastic loss: draws CFG dropout, t and noise (in that order) from `generator`."""
    device = model.device
    clip_f, sync_f, text_f, _, _ = drop_conditions(
        model,
        batch.clip_f.to(device),
        batch.sync_f.to(device),
        batch.text_f.to(device),
        config.cfg_dropout,
        generator,
    )
    t = sample_timesteps(
        len(batch), config.timestep, sigma=config.logit_normal_sigma, generator=generator
    )
    x0 = torch.randn(batch.x1.shape, generator=generator)
    conditions = model.preprocess_conditions(clip_f, sync_f, text_f)
    return flow_matching_loss(model, batch.x1, conditions, x0, t, lengths=batch.lengths)


def train_lora_steps(
    model: Generator,
    batches: Sequence[FlowBatch],
    steps: int,
    lr: float,
    seed: int,
    *,
    config: FlowLossConfig = FlowLossConfig(),
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
) -> list[float]:
    """Minimal single-process AdamW loop over the model's trainable parameters (the adapters).

    Batches are used round-robin; returns the per-step losses. The distributed trainer lives
    in `selva_ray`; this one serves tests and small experiments."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters; apply LoRA first")
    if not batches:
        raise ValueError("need at least one batch")
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    was_training = model.training
    model.train()
    losses = []
    try:
        for step in range(steps):
            loss = training_loss(model, batches[step % len(batches)], config, gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            losses.append(loss.item())
    finally:
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)
    return losses
