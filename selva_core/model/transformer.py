"""MM-DiT blocks of the generator: adaLN single-stream blocks, joint blocks, final layer.

Names and layouts follow the published checkpoints: `attn.qkv` output channels are interleaved as
(head, head_dim, {q,k,v}), q/k get a per-head RMSNorm, and `linear1`/`ffn` are convolutions for the
latent, clip and fused streams but plain Linears/MLP for the text stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP, ChannelLastConv1d, ConvMLP, modulate
from .rope import apply_rope


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA over (B, H, N, D) heads, merged back to (B, N, H*D)."""
    out = F.scaled_dot_product_attention(q, k, v)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.RMSNorm(self.head_dim)
        self.k_norm = nn.RMSNorm(self.head_dim)

    def pre_attention(
        self, x: torch.Tensor, rot: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        # channels are (head, head_dim, qkv): the qkv index varies fastest
        qkv = self.qkv(x).view(b, n, self.num_heads, self.head_dim, 3).permute(4, 0, 2, 1, 3)
        q, k, v = qkv.unbind(0)
        q = self.q_norm(q)
        k = self.k_norm(k)
        if rot is not None:
            q = apply_rope(q, rot)
            k = apply_rope(k, rot)
        # v is a stride-3 view of the interleaved qkv; SDPA's fused CPU kernel wants unit stride
        # in the last dim and would otherwise fall back to its slower math path.
        return q, k, v.contiguous()


class MMDitSingleBlock(nn.Module):
    """One stream's adaLN block; a `pre_only` block only feeds keys/values to joint attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        pre_only: bool = False,
        kernel_size: int = 7,
        padding: int = 3,
    ):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-5)
        self.attn = SelfAttention(dim, num_heads)
        if pre_only:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
            return
        if kernel_size == 1:
            self.linear1 = nn.Linear(dim, dim)
        else:
            self.linear1 = ChannelLastConv1d(dim, dim, kernel_size=kernel_size, padding=padding)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-5)
        if kernel_size == 1:
            self.ffn = MLP(dim, int(dim * mlp_ratio))
        else:
            self.ffn = ConvMLP(dim, int(dim * mlp_ratio), kernel_size=kernel_size, padding=padding)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def pre_attention(
        self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
        mod = self.adaLN_modulation(c)
        if self.pre_only:
            shift_msa, scale_msa = mod.chunk(2, dim=-1)
            post = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
            post = (gate_msa, shift_mlp, scale_mlp, gate_mlp)
        qkv = self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa), rot)
        return qkv, post

    def post_attention(
        self, x: torch.Tensor, attn_out: torch.Tensor, post: tuple[torch.Tensor, ...] | None
    ) -> torch.Tensor:
        if self.pre_only:
            return x
        gate_msa, shift_mlp, scale_mlp, gate_mlp = post
        x = x + self.linear1(attn_out) * gate_msa
        x = x + self.ffn(modulate(self.norm2(x), shift_mlp, scale_mlp)) * gate_mlp
        return x

    def forward(self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None) -> torch.Tensor:
        qkv, post = self.pre_attention(x, c, rot)
        return self.post_attention(x, attention(*qkv), post)


class JointBlock(nn.Module):
    """Latent, clip and text streams sharing one attention over [latent | clip | text]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, pre_only: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.latent_block = MMDitSingleBlock(
            dim, num_heads, mlp_ratio, pre_only=False, kernel_size=3, padding=1
        )
        self.clip_block = MMDitSingleBlock(
            dim, num_heads, mlp_ratio, pre_only=pre_only, kernel_size=3, padding=1
        )
        self.text_block = MMDitSingleBlock(
            dim, num_heads, mlp_ratio, pre_only=pre_only, kernel_size=1
        )

    def forward(
        self,
        latent: torch.Tensor,
        clip_f: torch.Tensor,
        text_f: torch.Tensor,
        global_c: torch.Tensor,
        extended_c: torch.Tensor,
        latent_rot: torch.Tensor,
        clip_rot: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_qkv, x_post = self.latent_block.pre_attention(latent, extended_c, latent_rot)
        c_qkv, c_post = self.clip_block.pre_attention(clip_f, global_c, clip_rot)
        t_qkv, t_post = self.text_block.pre_attention(text_f, global_c, None)
        joint = [torch.cat([x_qkv[i], c_qkv[i], t_qkv[i]], dim=2) for i in range(3)]
        out = attention(*joint)
        n_lat, n_clip = latent.shape[1], clip_f.shape[1]
        x_out = out[:, :n_lat]
        c_out = out[:, n_lat : n_lat + n_clip]
        t_out = out[:, n_lat + n_clip :]
        latent = self.latent_block.post_attention(latent, x_out, x_post)
        if not self.pre_only:
            clip_f = self.clip_block.post_attention(clip_f, c_out, c_post)
            text_f = self.text_block.post_attention(text_f, t_out, t_post)
        return latent, clip_f, text_f


class FinalBlock(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-5)
        self.conv = ChannelLastConv1d(dim, out_dim, kernel_size=7, padding=3)

    def forward(self, latent: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(modulate(self.norm(latent), shift, scale))
