"""MotionFormer: the divided space-time ViT-B/16 video tower shared by Synchformer and TextSynch.

A 16-frame 224x224 window becomes 8x14x14 tubelet tokens (Conv3d, kernel and stride 2x16x16) plus a
CLS token. Each block attends over time (each patch position across the 8 slots), then over space
(each slot's 196 patches), then applies a GELU MLP; the CLS token attends to every token and is
a key/value in every group. After the final LayerNorm (CLS dropped) a pooling layer with its own
CLS token summarises each temporal slot's 196 patches, giving 8 sync tokens per window.

Parameter names follow the official checkpoints (`vfeat_extractor.*` in synchformer_state_dict.pth
and video_enc_sup_5.pth), including the 2-D `patch_embed.proj` conv that is never used.

The file also holds what both video towers share: the 16-frame/stride-8 windowing of a clip, run
in batched chunks, and strict checkpoint loading of a prefix subset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selva_core.model.fused_cpu import linear_gelu


@dataclass(frozen=True)
class MotionFormerConfig:
    """Sizes of the video tower; the defaults are the real ViT-B/16 (divided_224_16x4.yaml)."""

    embed_dim: int = 768
    num_heads: int = 12
    depth: int = 12
    mlp_ratio: float = 4.0
    img_size: int = 224
    patch_size: int = 16
    patch_size_temp: int = 2
    num_frames: int = 16  # frames per window; temporal_resolution = num_frames / patch_size_temp
    window_stride: int = 8  # frames between window starts (windows overlap by half)
    in_chans: int = 3
    eps: float = 1e-6  # every LayerNorm of the tower and of the pooling layer

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by {self.num_heads} heads")
        if self.num_frames % self.patch_size_temp or self.img_size % self.patch_size:
            raise ValueError("num_frames / img_size must be multiples of the patch sizes")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def temporal_resolution(self) -> int:
        """Token slots per window (8): each covers `patch_size_temp` frames."""
        return self.num_frames // self.patch_size_temp

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Spatial patches per slot (196)."""
        return self.grid * self.grid

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """2-D patch conv. Unused (tokens come from `PatchEmbed3D`) but present in every checkpoint."""

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        self.requires_grad_(False)


class PatchEmbed3D(nn.Module):
    """Tubelet embedding: (N, C, T, H, W) -> (N, t*h*w, D), slot-major token order."""

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        kernel = (cfg.patch_size_temp, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DividedAttention(nn.Module):
    """Self-attention restricted to groups of patch tokens, plus a global CLS token.

    Patch tokens are laid out (slot, patch). `over_time=True` groups each patch position across
    slots, `over_time=False` groups each slot's patches. Every group also sees the CLS key/value;
    the CLS query attends to all tokens. qkv channels are [q | k | v] slabs, heads inside each.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, slots: int, patches: int, over_time: bool) -> torch.Tensor:
        n, length, dim = x.shape
        h = self.num_heads
        d = dim // h
        qkv = self.qkv(x).view(n, length, 3, h, d)

        # CLS query over every token.
        q, k, v = qkv.transpose(1, 3).unbind(2)  # each (n, h, L, d)
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (n, h, 1, d)

        # Patch queries within their group (G groups of `seq` tokens). Every group also gets the
        # CLS key/value in front. Built as 4-D batches so that SDPA takes its fused CPU kernel.
        tokens = qkv[:, 1:].view(n, slots, patches, 3, h, d)
        if over_time:  # -> (n, G=patches, qkv, h, seq=slots, d)
            groups, seq, grouped = patches, slots, tokens.permute(0, 2, 3, 4, 1, 5)
        else:  # -> (n, G=slots, qkv, h, seq=patches, d)
            groups, seq, grouped = slots, patches, tokens.permute(0, 1, 3, 4, 2, 5)
        q_g = grouped[:, :, 0].reshape(n * groups, h, seq, d)
        kv = x.new_empty(n, groups, 2, h, 1 + seq, d)
        kv[..., :1, :] = qkv[:, :1, 1:, :, None]  # CLS k/v, broadcast over groups
        kv[..., 1:, :] = grouped[:, :, 1:]
        k_g, v_g = kv.view(n * groups, 2, h, 1 + seq, d).unbind(1)
        out = F.scaled_dot_product_attention(q_g, k_g, v_g).view(n, groups, h, seq, d)

        merged = x.new_empty(n, length, h, d)
        merged[:, 0] = cls_out[:, :, 0]
        patch_out = merged[:, 1:].view(n, slots, patches, h, d)
        patch_out.copy_(out.permute(0, 3, 1, 2, 4) if over_time else out.permute(0, 1, 3, 2, 4))
        return self.proj(merged.view(n, length, dim))


class Mlp(nn.Module):
    """ViT feed-forward: fc1 -> GELU (erf) -> fc2 (fc1 and GELU fused on CPUs, `fused_cpu`)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(linear_gelu(self.fc1, x))


class DividedSpaceTimeBlock(nn.Module):
    """Pre-norm block: time attention (norm3), then space attention (norm1), then MLP (norm2)."""

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.eps)
        self.attn = DividedAttention(dim, cfg.num_heads)
        self.timeattn = DividedAttention(dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps)
        self.mlp = Mlp(dim, cfg.mlp_hidden)
        self.norm3 = nn.LayerNorm(dim, eps=cfg.eps)

    def forward(self, x: torch.Tensor, slots: int, patches: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), slots, patches, over_time=True)
        x = x + self.attn(self.norm1(x), slots, patches, over_time=False)
        return x + self.mlp(self.norm2(x))


class SpatialPooling(nn.Module):
    """Per-slot pooling: one norm-first GELU `nn.TransformerEncoderLayer` step with its own CLS.

    The parameters are those of the official `nn.TransformerEncoderLayer` (`self_attn`,
    `linear1/2`, `norm1/2`) plus `cls_token`. Only the CLS output is used, so only the CLS row is
    carried past the attention keys/values: the same numbers, a fraction of the work. The audio
    tower of the full Synchformer pools each time patch's frequency tokens with the same layer.
    """

    def __init__(self, dim: int, num_heads: int, hidden: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.self_attn = nn.MultiheadAttention(dim, num_heads, bias=True, batch_first=True)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, D) tokens of N groups (slots, or time patches) -> (N, D)."""
        n, _, dim = x.shape
        h = self.num_heads
        cls = self.cls_token.expand(n, 1, dim)
        seq = self.norm1(torch.cat([cls, x], dim=1))  # (N, 1+P, D)
        w_q, w_kv = self.self_attn.in_proj_weight.split([dim, 2 * dim])
        b_q, b_kv = self.self_attn.in_proj_bias.split([dim, 2 * dim])
        q = F.linear(seq[:, :1], w_q, b_q).view(n, 1, h, -1).transpose(1, 2)
        k, v = F.linear(seq, w_kv, b_kv).view(n, -1, 2, h, dim // h).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, 1, dim)
        y = cls + self.self_attn.out_proj(attn)
        y = y + self.linear2(F.gelu(self.linear1(self.norm2(y))))
        return y[:, 0]


# --------------------------------------------------------------------------------------------
# The tower
# --------------------------------------------------------------------------------------------


class MotionFormer(nn.Module):
    """Windows (N, C, 16, 224, 224) in [-1, 1] -> sync tokens (N, 8, D)."""

    def __init__(self, cfg: MotionFormerConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.patch_embed_3d = PatchEmbed3D(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.temporal_resolution, dim))
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.eps)
        self.spatial_attn_agg = SpatialPooling(dim, cfg.num_heads, cfg.mlp_hidden, cfg.eps)
        for p in (self.cls_token, self.pos_embed, self.spatial_attn_agg.cls_token):
            nn.init.trunc_normal_(p, std=0.02)

    def forward_tokens(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> normalised patch tokens (N, t*196, D), CLS dropped, slot-major."""
        cfg = self.cfg
        x = self.patch_embed_3d(clips)
        n, _, dim = x.shape
        # "Separate" positional embeddings: spatial table tiled over slots + one vector per slot.
        pos = self.pos_embed[:, None, 1:] + self.temp_embed[:, :, None]  # (1, t, 196, D)
        x = x + pos.reshape(1, -1, dim)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(n, 1, dim)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x, cfg.temporal_resolution, cfg.num_patches)
        return self.norm(x[:, 1:])

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, t*196, D) -> (N, t, D): each slot's 196 patches summarised by the pooling layer."""
        n, _, dim = tokens.shape
        slots = self.cfg.temporal_resolution
        return self.spatial_attn_agg(tokens.reshape(n * slots, -1, dim)).view(n, slots, dim)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_tokens(clips))


# --------------------------------------------------------------------------------------------
# Windowing shared by Synchformer and TextSynch
# --------------------------------------------------------------------------------------------


def normalize_sync_frames(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 frames (already 224x224) -> float32 in [-1, 1], as the official transform does:
    ToDtype(scale=True) multiplies by 1/255, then Normalize(mean=0.5, std=0.5)."""
    return (frames_u8.to(torch.float32) * (1.0 / 255) - 0.5) / 0.5


def num_windows(num_frames: int, cfg: MotionFormerConfig) -> int:
    """Segments S = (T - 16) // 8 + 1; trailing frames that do not fill a window are dropped."""
    return (num_frames - cfg.num_frames) // cfg.window_stride + 1


def check_sync_frames(frames: torch.Tensor, cfg: MotionFormerConfig) -> None:
    """Raise ValueError unless frames are (B, T>=16, 3, 224, 224) floats."""
    if frames.dim() != 5:
        raise ValueError(f"sync frames must be (B, T, C, H, W), got shape {tuple(frames.shape)}")
    _, t, c, h, w = frames.shape
    size = cfg.img_size
    if (c, h, w) != (cfg.in_chans, size, size):
        raise ValueError(
            f"sync frames must be (B, T, {cfg.in_chans}, {size}, {size}) (resize first), "
            f"got shape {tuple(frames.shape)}"
        )
    if t < cfg.num_frames:
        raise ValueError(
            f"sync frames: need at least {cfg.num_frames} frames (one window; pad short videos), "
            f"got {t}"
        )
    if not frames.is_floating_point():
        raise ValueError(
            f"sync frames must be float in [-1, 1], got {frames.dtype} (see normalize_sync_frames)"
        )


def window_chunk_for(own: int | None, requested: int | None) -> int | None:
    """The windows a call runs at a time: `requested`, or the model's own setting for -1."""
    return own if requested == -1 else requested


def map_windows(
    frames: torch.Tensor,
    cfg: MotionFormerConfig,
    window_chunk: int | None,
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Run `encode(clips, items)` over all windows, `window_chunk` windows per call.

    Windows are enumerated item-major: (item 0, seg 0), (item 0, seg 1), ..., so `items` (the
    item index of each clip, on `device`) picks each window's own conditioning. `clips` is
    (n, C, 16, H, W), moved to `device`/`dtype` one chunk at a time (frames may stay on the CPU);
    `encode` returns (n, t, D). The result is segment-major per item: (B, S*t, D).
    """
    check_sync_frames(frames, cfg)
    if window_chunk is not None and window_chunk < 1:
        raise ValueError(f"window_chunk must be a positive int or None, got {window_chunk}")
    b, t = frames.shape[:2]
    s = num_windows(t, cfg)
    # (B, S, C, H, W, 16) view; only the chunk being encoded is materialised.
    windows = frames.unfold(1, cfg.num_frames, cfg.window_stride)
    items = torch.arange(b).repeat_interleave(s)
    segs = torch.arange(s).repeat(b)
    chunk = window_chunk or b * s
    outs = []
    for start in range(0, b * s, chunk):
        it, sg = items[start : start + chunk], segs[start : start + chunk]
        clips = windows[it.to(frames.device), sg.to(frames.device)]  # (n, C, H, W, 16)
        clips = clips.to(device=device, dtype=dtype).permute(0, 1, 4, 2, 3).contiguous()
        outs.append(encode(clips, it.to(device or frames.device)))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.reshape(b, -1, out.shape[-1])


def map_tower(tower: MotionFormer, frames: torch.Tensor, window_chunk: int | None) -> torch.Tensor:
    """The video tower alone over every window, `window_chunk` windows at a time, on the
    tower's device and dtype: frames (B, T, 3, 224, 224) -> (B, 8*S, D), segment-major. The
    sync features of MMAudio's Synchformer and the video half of the DeSync model."""
    token = tower.cls_token
    return map_windows(
        frames,
        tower.cfg,
        window_chunk,
        lambda clips, items: tower(clips),
        device=token.device,
        dtype=token.dtype,
    )
