"""Linear + GELU as one oneDNN call, for CPU float32 inference.

The ViT MLPs of the video towers spend a separate memory pass on GELU over a (tokens, 3072)
activation that no longer fits in cache. oneDNN applies the (erf) GELU inside the GEMM's
epilogue instead, with the weight reordered once into its blocked layout: 6 % off three
real-size TextSynch windows on a 2-core AVX-512 CPU (4.57 -> 4.31 s; docs/benchmarks.md,
issue #16). The numbers agree with `F.gelu(linear(x))` to fp32 rounding (3e-7 relative on
`sync_f`).

Anything else (GPU, other dtypes, autograd, a LoRA-wrapped layer, a build without oneDNN) takes
the plain path. The reordered weight costs one extra copy of the layer's weight in memory; it
is cached per layer and rebuilt when the weight changes (in-place updates bump its version);
a weight made under `torch.inference_mode` has no version, so it is used as it is.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

_REORDERED: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple[int, int], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def cpu_fp32_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where the CPU fast paths apply: float32 input and weight on the CPU, no autograd
    (training and every other device/dtype keep the plain kernels)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_grad_enabled()
    )


def _fusable(linear: nn.Module, x: torch.Tensor) -> bool:
    return (
        type(linear) is nn.Linear
        and cpu_fp32_inference(x, linear.weight)
        and torch.backends.mkldnn.is_available()
    )


def _reordered_weight(linear: nn.Linear, rows: int) -> torch.Tensor:
    weight = linear.weight
    if weight.is_inference():
        # Built under inference_mode: no version counter to notice an in-place update, so no
        # cache; oneDNN takes the plain layout too (the fusion stays, the reorder is per call).
        return weight
    key = (weight.data_ptr(), weight._version)
    hit = _REORDERED.get(linear)
    if hit is None or hit[0] != key:
        hit = (key, torch.ops.mkldnn._reorder_linear_weight(weight, rows))
        _REORDERED[linear] = hit
    return hit[1]


def linear_gelu(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`F.gelu(linear(x))` (erf GELU), fused on the CPU in float32 inference."""
    if not _fusable(linear, x):
        return F.gelu(linear(x))
    rows = x.reshape(-1, x.shape[-1])
    weight = _reordered_weight(linear, rows.shape[0])
    out = torch.ops.mkldnn._linear_pointwise(rows, weight, linear.bias, "gelu", [], "none")
    return out.view(*x.shape[:-1], out.shape[-1])
