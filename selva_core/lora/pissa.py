"""PiSSA init factors (arXiv:2404.02948), computed the PEFT way.

From W = U S V^T, keep the top r triplets and divide S_r by the LoRA scale s first, so that
s * B0 @ A0 = U_r S_r V_r^T exactly (A0 = sqrt(S_r/s) V_r^T, B0 = U_r sqrt(S_r/s)); the base then
holds W minus that principal part. An earlier implementation skipped the division, which left
(1-s) W_r in the "residual" and amplified every update by s.

Every Ray Train rank must start from identical factors. The SVD here runs in fp32 on CPU by
default and singular-vector signs are canonicalised, so one machine gives the same bits every
time; across heterogeneous hosts compute once (`compute_pissa_init` in `apply`) and broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PissaFactors:
    """Initial factors of one layer: scale * b0 @ a0 is the rank-r principal part of W."""

    a0: torch.Tensor  # (r, in) fp32
    b0: torch.Tensor  # (out, r) fp32
    scale: float

    @property
    def rank(self) -> int:
        return self.a0.shape[0]


def _canonical_signs(u: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each (u_k, v_k) pair so u_k's largest-magnitude entry is positive (SVD signs are
    otherwise arbitrary and LAPACK builds may disagree)."""
    idx = u.abs().argmax(dim=0, keepdim=True)
    signs = torch.sign(torch.gather(u, 0, idx)).squeeze(0)
    signs[signs == 0] = 1
    return u * signs, vh * signs[:, None]


def randomized_svd(
    matrix: torch.Tensor, rank: int, *, niter: int = 4, oversample: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` SVD by a seeded range finder with `niter` power iterations (Halko et al.).

    Unlike `torch.svd_lowrank`, the sketch comes from an explicit generator, so it is
    reproducible on every process."""
    m, n = matrix.shape
    k = min(rank + oversample, m, n)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(n, k, generator=gen, dtype=matrix.dtype).to(matrix.device)
    q, _ = torch.linalg.qr(matrix @ omega)
    for _ in range(niter):
        z, _ = torch.linalg.qr(matrix.T @ q)
        q, _ = torch.linalg.qr(matrix @ z)
    u_small, s, vh = torch.linalg.svd(q.T @ matrix, full_matrices=False)
    return (q @ u_small)[:, :rank], s[:rank], vh[:rank]


def principal_factors(
    weight: torch.Tensor,
    rank: int,
    scale: float,
    *,
    niter: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> PissaFactors:
    """PiSSA factors of `weight` (out, in) in fp32; `niter=None` runs the full SVD."""
    if rank > min(weight.shape):
        raise ValueError(f"rank {rank} exceeds min{tuple(weight.shape)}")
    w = weight.detach().to(device=device, dtype=torch.float32)
    if niter is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    else:
        u, s, vh = randomized_svd(w, rank, niter=niter, seed=seed)
    u, vh = _canonical_signs(u, vh)
    root = (s / scale).sqrt()
    return PissaFactors(
        a0=(root[:, None] * vh).cpu().contiguous(),
        b0=(u * root[None, :]).cpu().contiguous(),
        scale=float(scale),
    )
