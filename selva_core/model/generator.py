"""The SelVA / MMAudio generator: a multimodal flow-matching transformer (MM-DiT).

SelVA reuses MMAudio's network unchanged, so one class serves both families; `v2` selects
MMAudio's large_44k_v2 activations and timestep embedding. Read top to bottom:
conditions -> `preprocess_conditions` (cached across ODE steps) -> `predict_flow` per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..seqconfig import SequenceConfig
from .fp32_tables import fp32_kept
from .layers import MLP, ChannelLastConv1d, ConvMLP, TimestepEmbedder
from .rope import rope_rotations
from .transformer import FinalBlock, JointBlock, MMDitSingleBlock

# Each sync-encoder segment yields this many feature frames.
SYNC_TOKENS_PER_SEGMENT = 8
# Keys a checkpoint may carry that are derived tables, not weights.
DERIVED_KEYS = ("t_embed.freqs", "latent_rot", "clip_rot")


@dataclass(frozen=True)
class GeneratorConfig:
    latent_dim: int
    hidden_dim: int
    depth: int
    fused_depth: int
    num_heads: int
    clip_dim: int = 1024
    sync_dim: int = 768
    text_dim: int = 1024
    text_seq_len: int = 77
    mlp_ratio: float = 4.0
    v2: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.fused_depth < self.depth:
            raise ValueError(f"need 0 <= fused_depth < depth, got {self.fused_depth}/{self.depth}")
        if self.hidden_dim % self.num_heads or (self.hidden_dim // self.num_heads) % 2:
            raise ValueError(
                f"hidden_dim {self.hidden_dim} must split into {self.num_heads} even-sized heads"
            )

    @classmethod
    def from_dict(cls, values: Mapping) -> GeneratorConfig:
        """Build from a mapping that may hold extra keys (e.g. a fixture's config metadata)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class PreprocessedConditions:
    """Condition tensors after their input projections, reused by every ODE step."""

    clip_f: torch.Tensor  # (B, Nc, H)
    sync_f: torch.Tensor  # (B, N, H), upsampled to the latent length
    text_f: torch.Tensor  # (B, 77, H)
    clip_f_c: torch.Tensor  # (B, H) pooled clip condition
    text_f_c: torch.Tensor  # (B, H) pooled text condition

    @property
    def batch_size(self) -> int:
        return max(t.shape[0] for t in self._tensors())

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.clip_f, self.sync_f, self.text_f, self.clip_f_c, self.text_f_c)

    def expand(self, batch_size: int) -> PreprocessedConditions:
        """Broadcast batch-1 parts (the learned empty features) to `batch_size`."""

        def grow(t: torch.Tensor) -> torch.Tensor:
            return t.expand(batch_size, *t.shape[1:]) if t.shape[0] == 1 else t

        return PreprocessedConditions(*(grow(t) for t in self._tensors()))

    @staticmethod
    def cat(items: list[PreprocessedConditions]) -> PreprocessedConditions:
        parts = [c.expand(c.batch_size) for c in items]
        return PreprocessedConditions(
            *(torch.cat(ts, dim=0) for ts in zip(*(p._tensors() for p in parts), strict=True))
        )


class Generator(nn.Module):
    """MMAudio-architecture generator; state-dict names equal the published checkpoints'."""

    def __init__(self, config: GeneratorConfig, seq: SequenceConfig | None = None):
        super().__init__()
        self.config = config
        c = config
        h = c.hidden_dim
        act = nn.SiLU if c.v2 else nn.SELU
        self.hidden_dim = h
        self.num_heads = c.num_heads
        self.latent_dim = c.latent_dim

        self.audio_input_proj = nn.Sequential(
            ChannelLastConv1d(c.latent_dim, h, kernel_size=7, padding=3),
            act(),
            ConvMLP(h, h * 4, kernel_size=7, padding=3),
        )
        # v2 puts a SiLU after the clip/text Linears, moving their MLP to index 2.
        clip_layers = [nn.Linear(c.clip_dim, h)] + ([nn.SiLU()] if c.v2 else [])
        self.clip_input_proj = nn.Sequential(
            *clip_layers, ConvMLP(h, h * 4, kernel_size=3, padding=1)
        )
        self.sync_input_proj = nn.Sequential(
            ChannelLastConv1d(c.sync_dim, h, kernel_size=7, padding=3),
            act(),
            ConvMLP(h, h * 4, kernel_size=3, padding=1),
        )
        text_layers = [nn.Linear(c.text_dim, h)] + ([nn.SiLU()] if c.v2 else [])
        self.text_input_proj = nn.Sequential(*text_layers, MLP(h, h * 4))

        self.clip_cond_proj = nn.Linear(h, h)
        self.text_cond_proj = nn.Linear(h, h)
        self.global_cond_mlp = MLP(h, h * 4)
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, SYNC_TOKENS_PER_SEGMENT, c.sync_dim))

        self.final_layer = FinalBlock(h, c.latent_dim)
        if c.v2:
            self.t_embed = TimestepEmbedder(h, frequency_embedding_size=h, max_period=1)
        else:
            self.t_embed = TimestepEmbedder(h, frequency_embedding_size=256, max_period=10000)

        num_joint = c.depth - c.fused_depth
        self.joint_blocks = nn.ModuleList(
            JointBlock(h, c.num_heads, c.mlp_ratio, pre_only=(i == num_joint - 1))
            for i in range(num_joint)
        )
        self.fused_blocks = nn.ModuleList(
            MMDitSingleBlock(h, c.num_heads, c.mlp_ratio, kernel_size=3, padding=1)
            for _ in range(c.fused_depth)
        )

        # Dataset statistics and learned empty features live in the checkpoint as frozen params.
        nan = torch.full((1, 1, c.latent_dim), float("nan"))
        self.latent_mean = nn.Parameter(nan.clone(), requires_grad=False)
        self.latent_std = nn.Parameter(nan.clone(), requires_grad=False)
        self.empty_string_feat = nn.Parameter(
            torch.zeros(c.text_seq_len, c.text_dim), requires_grad=False
        )
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, c.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, c.sync_dim))

        seq = seq or SequenceConfig()
        self.update_seq_lengths(seq.latent_seq_len, seq.clip_seq_len, seq.sync_seq_len)

    # ---- sequence lengths and RoPE tables -------------------------------------------------

    def update_seq_lengths(self, latent_seq_len: int, clip_seq_len: int, sync_seq_len: int) -> None:
        """Set the lengths for a duration and rebuild the RoPE tables (non-persistent, fp32)."""
        if sync_seq_len % SYNC_TOKENS_PER_SEGMENT:
            raise ValueError(f"sync_seq_len {sync_seq_len} is not a multiple of 8")
        if min(latent_seq_len, clip_seq_len, sync_seq_len) <= 0:
            raise ValueError(
                f"sequence lengths must be positive: latent={latent_seq_len} "
                f"clip={clip_seq_len} sync={sync_seq_len}"
            )
        self._latent_seq_len = latent_seq_len
        self._clip_seq_len = clip_seq_len
        self._sync_seq_len = sync_seq_len
        device = self.latent_mean.device
        head_dim = self.hidden_dim // self.num_heads
        self.register_buffer(
            "latent_rot", rope_rotations(latent_seq_len, head_dim, device=device), persistent=False
        )
        self.register_buffer(
            "clip_rot",
            rope_rotations(
                clip_seq_len,
                head_dim,
                freq_scaling=latent_seq_len / clip_seq_len,
                device=device,
            ),
            persistent=False,
        )

    def set_sequence(self, seq: SequenceConfig) -> None:
        self.update_seq_lengths(seq.latent_seq_len, seq.clip_seq_len, seq.sync_seq_len)

    def _apply(self, fn, recurse=True):
        # Casting the model to bf16/fp16 must leave the RoPE tables in fp32.
        # The latent statistics stay fp32 too: they only serve (un)normalisation.
        # Both keep their fp32 values, not bf16-rounded ones (`fp32_kept`).
        with fp32_kept(self, ("latent_rot", "clip_rot", "latent_mean", "latent_std")):
            return super()._apply(fn, recurse)

    @property
    def latent_seq_len(self) -> int:
        return self._latent_seq_len

    @property
    def clip_seq_len(self) -> int:
        return self._clip_seq_len

    @property
    def sync_seq_len(self) -> int:
        return self._sync_seq_len

    @property
    def dtype(self) -> torch.dtype:
        return self.clip_cond_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    # ---- latent statistics ------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std; returns a new tensor (the official version works in place)."""
        return (x - self.latent_mean.to(x.dtype)) / self.latent_std.to(x.dtype)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """x * std + mean; returns a new tensor."""
        return x * self.latent_std.to(x.dtype) + self.latent_mean.to(x.dtype)

    # ---- conditions ---------------------------------------------------------------------------

    def _check(self, name: str, x: torch.Tensor, length: int, dim: int) -> None:
        if x.dim() != 3 or x.shape[1] != length or x.shape[2] != dim:
            raise ValueError(
                f"{name} must have shape (B, {length}, {dim}) for the current duration, "
                f"got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")

    def preprocess_conditions(
        self, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor
    ) -> PreprocessedConditions:
        """Project the conditions once; the result is reused at every ODE step."""
        c = self.config
        self._check("clip_f", clip_f, self._clip_seq_len, c.clip_dim)
        self._check("sync_f", sync_f, self._sync_seq_len, c.sync_dim)
        self._check("text_f", text_f, c.text_seq_len, c.text_dim)
        dtype = self.dtype
        clip_f, sync_f, text_f = clip_f.to(dtype), sync_f.to(dtype), text_f.to(dtype)

        b = sync_f.shape[0]
        segments = self._sync_seq_len // SYNC_TOKENS_PER_SEGMENT
        sync_f = sync_f.reshape(b, segments, SYNC_TOKENS_PER_SEGMENT, -1) + self.sync_pos_emb
        sync_f = sync_f.flatten(1, 2)

        clip_f = self.clip_input_proj(clip_f)
        sync_f = self.sync_input_proj(sync_f)
        text_f = self.text_input_proj(text_f)

        # sync runs at 24 tokens/s; stretch it onto the latent frames
        sync_f = F.interpolate(
            sync_f.transpose(1, 2), size=self._latent_seq_len, mode="nearest-exact"
        ).transpose(1, 2)

        clip_f_c = self.clip_cond_proj(clip_f.mean(dim=1))
        text_f_c = self.text_cond_proj(text_f.mean(dim=1))
        return PreprocessedConditions(clip_f, sync_f, text_f, clip_f_c, text_f_c)

    def empty_conditions(
        self, batch_size: int, *, negative_text_f: torch.Tensor | None = None
    ) -> PreprocessedConditions:
        """Unconditional branch for CFG: learned empty clip/sync features, and either the
        negative prompt's CLIP text features or the stored empty-string features."""
        text = self.empty_string_feat.unsqueeze(0) if negative_text_f is None else negative_text_f
        clip = self.empty_clip_feat.unsqueeze(0).expand(1, self._clip_seq_len, -1)
        sync = self.empty_sync_feat.unsqueeze(0).expand(1, self._sync_seq_len, -1)
        return self.preprocess_conditions(clip, sync, text).expand(batch_size)

    # ---- flow ---------------------------------------------------------------------------------

    def predict_flow(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        conditions: PreprocessedConditions,
        *,
        repeats: int = 1,
    ) -> torch.Tensor:
        """Velocity for normalized latents (B, N, C) at times t (B,) in [0, 1].

        `repeats=R` evaluates the same latents under R stacked condition sets (`conditions`
        has batch R*B, e.g. conditional and unconditional for CFG) and returns (R*B, N, C).
        The latent projection and time embedding depend on neither condition, so they run once
        for the B latents instead of R times: `predict_flow` on the repeated latents up to fp32
        rounding, with less work per CFG step.
        """
        if latent.dim() != 3 or latent.shape[1:] != (self._latent_seq_len, self.latent_dim):
            raise ValueError(
                f"latent must have shape (B, {self._latent_seq_len}, {self.latent_dim}), "
                f"got {tuple(latent.shape)}"
            )
        if repeats != 1 and (repeats < 1 or conditions.batch_size != repeats * latent.shape[0]):
            raise ValueError(
                f"conditions have batch {conditions.batch_size}, expected {repeats} x the "
                f"latent batch {latent.shape[0]}"
            )
        clip_f, sync_f, text_f = conditions.clip_f, conditions.sync_f, conditions.text_f

        latent = self.audio_input_proj(latent.to(self.dtype))
        t_emb = self.t_embed(t).unsqueeze(1)
        if repeats > 1:
            latent = latent.repeat(repeats, 1, 1)
            t_emb = t_emb.repeat(repeats, 1, 1)
        global_c = self.global_cond_mlp(conditions.clip_f_c + conditions.text_f_c)
        global_c = t_emb + global_c.unsqueeze(1)
        extended_c = global_c + sync_f

        for block in self.joint_blocks:
            latent, clip_f, text_f = block(
                latent, clip_f, text_f, global_c, extended_c, self.latent_rot, self.clip_rot
            )
        for block in self.fused_blocks:
            latent = block(latent, extended_c, self.latent_rot)
        # The published weights condition the final layer on global_c (upstream issue #55).
        return self.final_layer(latent, global_c)

    def forward(
        self,
        latent: torch.Tensor,
        clip_f: torch.Tensor,
        sync_f: torch.Tensor,
        text_f: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        return self.predict_flow(latent, t, self.preprocess_conditions(clip_f, sync_f, text_f))

    # ---- weights ------------------------------------------------------------------------------

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], *, assign: bool = False) -> None:
        """Strict load of a published checkpoint; derived RoPE/frequency tables are dropped.

        `assign=True` adopts the given tensors (for a model built on the meta device) and then
        rebuilds the derived tables where the weights now live.
        """
        state = {k: v for k, v in state_dict.items() if k not in DERIVED_KEYS}
        self.load_state_dict(state, strict=True, assign=assign)
        if assign:
            self.t_embed.reset_frequencies()
            self.update_seq_lengths(self._latent_seq_len, self._clip_seq_len, self._sync_seq_len)
