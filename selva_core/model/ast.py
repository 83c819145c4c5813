"""The audio tower of the full Synchformer: an Audio Spectrogram Transformer (AST) with
per-time-patch frequency pooling, as av-benchmark's DeSync metric runs it.

One 0.64 s log-mel window (128 mel bins x 66 frames) is cut into 16x16 patches with stride 10 in
both axes: 12 frequency x 6 time patches, flattened frequency-major (f outer, t inner). A CLS and a
distillation token go in front, a learned position table (74 rows) is added, and pre-norm ViT
layers follow (separate query/key/value Linears, exact GELU, LayerNorm eps 1e-12). After the final
LayerNorm the two extra tokens are dropped and each time patch's 12 frequency tokens (low to high)
are summarised by the same CLS pooling layer that MotionFormer uses per slot. The temporal
aggregation is the identity, so one window gives (6, D): one token per 0.16 s time patch.

Parameter names follow `synchformer_state_dict.pth` (`afeat_extractor.ast.*`,
`afeat_extractor.freq_attn_agg.*`), i.e. Hugging Face's AST layout as Synchformer vendors it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .motionformer import SpatialPooling


@dataclass(frozen=True)
class AudioTowerConfig:
    """AST sizes; the defaults are the real model (transformers' `ASTConfig` defaults, with the
    position table cut to `max_spec_t` = 66 frames as Synchformer does)."""

    hidden_size: int = 768
    num_heads: int = 12
    depth: int = 12
    intermediate_size: int = 3072
    num_mel_bins: int = 128
    max_spec_t: int = 66
    patch_size: int = 16
    frequency_stride: int = 10
    time_stride: int = 10
    layer_norm_eps: float = 1e-12  # every AST LayerNorm (transformers' default)
    agg_eps: float = 1e-6  # the frequency pooling layer

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by {self.num_heads}")

    @property
    def freq_patches(self) -> int:
        return (self.num_mel_bins - self.patch_size) // self.frequency_stride + 1

    @property
    def time_patches(self) -> int:
        """Tokens per window after frequency pooling (6)."""
        return (self.max_spec_t - self.patch_size) // self.time_stride + 1

    @property
    def num_positions(self) -> int:
        return self.freq_patches * self.time_patches + 2


class _Dense(nn.Module):
    """A Linear under the name `dense` (Hugging Face's nesting, kept for the key names)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.dense = nn.Linear(dim_in, dim_out)


class _PatchEmbeddings(nn.Module):
    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        stride = (cfg.frequency_stride, cfg.time_stride)
        self.projection = nn.Conv2d(1, cfg.hidden_size, cfg.patch_size, stride=stride)


class ASTEmbeddings(nn.Module):
    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, cfg.num_positions, dim))
        self.patch_embeddings = _PatchEmbeddings(cfg)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """(N, mel, time) -> (N, 2 + f*t, D): [CLS, DIST, patches frequency-major] + positions."""
        n = spec.shape[0]
        patches = self.patch_embeddings.projection(spec.unsqueeze(1))  # (N, D, f, t)
        patches = patches.flatten(2).transpose(1, 2)
        extra = torch.cat([self.cls_token, self.distillation_token], dim=1).expand(n, -1, -1)
        return torch.cat([extra, patches], dim=1) + self.position_embeddings


def qkv_heads(
    x: torch.Tensor, query: nn.Module, key: nn.Module, value: nn.Module, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of `x` (B, L, D), each split into heads: (B, H, L, D / H).
    Shared by the self-attentions of the audio tower and of the DeSync model."""
    n, length, dim = x.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(n, length, num_heads, dim // num_heads).transpose(1, 2)

    return heads(query(x)), heads(key(x)), heads(value(x))


class ASTSelfAttention(nn.Module):
    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv_heads(x, self.query, self.key, self.value, self.num_heads)
        # Explicit softmax(q k^T / sqrt(d)) v, the official order of operations.
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out = torch.matmul(scores.softmax(dim=-1), v)
        return out.transpose(1, 2).reshape(x.shape)


class ASTAttention(nn.Module):
    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        self.attention = ASTSelfAttention(cfg)
        self.output = _Dense(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))


class ASTLayer(nn.Module):
    """Pre-norm ViT layer: x += Attn(LN(x)); x += W2 GELU(W1 LN(x))."""

    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.attention = ASTAttention(cfg)
        self.intermediate = _Dense(dim, cfg.intermediate_size)
        self.output = _Dense(cfg.intermediate_size, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        hidden = F.gelu(self.intermediate.dense(self.layernorm_after(x)))
        return x + self.output.dense(hidden)


class ASTEncoder(nn.Module):
    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        self.layer = nn.ModuleList(ASTLayer(cfg) for _ in range(cfg.depth))


class ASTModel(nn.Module):
    """Spectrogram windows (N, mel, time) -> normalised tokens (N, 2 + f*t, D)."""

    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        self.embeddings = ASTEmbeddings(cfg)
        self.encoder = ASTEncoder(cfg)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(spec)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class AudioTower(nn.Module):
    """`afeat_extractor`: AST + frequency pooling. (N, mel, time) -> (N, t, D)."""

    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        self.cfg = cfg
        self.ast = ASTModel(cfg)
        self.freq_attn_agg = SpatialPooling(
            cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.agg_eps
        )

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if spec.dim() != 3 or spec.shape[1:] != (cfg.num_mel_bins, cfg.max_spec_t):
            raise ValueError(
                f"AST input must be (N, {cfg.num_mel_bins} mel, {cfg.max_spec_t} frames), "
                f"got {tuple(spec.shape)}"
            )
        n = spec.shape[0]
        f, t = cfg.freq_patches, cfg.time_patches
        tokens = self.ast(spec)[:, 2:]  # drop CLS and distillation: (N, f*t, D), f outer
        groups = tokens.reshape(n, f, t, -1).transpose(1, 2).reshape(n * t, f, -1)
        return self.freq_attn_agg(groups).view(n, t, -1)
