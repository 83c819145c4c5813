"""Rotary position embedding over adjacent channel pairs, computed and applied in fp32."""

from __future__ import annotations

import torch


def rope_rotations(
    length: int,
    head_dim: int,
    theta: float = 10000.0,
    *,
    freq_scaling: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotation matrices of shape (1, length, head_dim // 2, 2, 2), always float32."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    pos = torch.arange(length, dtype=torch.float32, device=device)
    exponents = torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim
    freqs = 1.0 / (theta**exponents)
    freqs = freqs * freq_scaling
    angles = pos[:, None] * freqs[None, :]
    cos, sin = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([cos, -sin, sin, cos], dim=-1)
    return rot.view(1, length, head_dim // 2, 2, 2)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (2i, 2i+1) of the last dim of x (B, H, N, D) by `rot` (1, N, D/2, 2, 2)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
        out = rot[..., 0] * pairs[..., 0] + rot[..., 1] * pairs[..., 1]
        return out.reshape(x.shape).to(x.dtype)
