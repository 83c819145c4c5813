"""Linear + GELU as one oneDNN call, for CPU float32 and bfloat16 inference.

The ViT MLPs of the video towers spend a separate memory pass on GELU over a (tokens, 3072)
activation that no longer fits in cache. oneDNN applies the (erf) GELU inside the GEMM's
epilogue instead, with the weight reordered once into its blocked layout: 6 % off three
real-size TextSynch windows on a 2-core AVX-512 CPU (4.57 -> 4.31 s; docs/benchmarks.md,
issue #16). The numbers agree with `F.gelu(linear(x))` to fp32 rounding (3e-7 relative on
`sync_f`).

In bfloat16 (where oneDNN has bf16 kernels) the same fusion saves about 10 % of the MLP
(21.5 -> 19.1 ms for a (1569, 768) x (768, 3072) window on an AVX-512 BF16 CPU), and GELU is
applied to the fp32 accumulator before the one rounding to bf16 instead of after it.
Anything else (GPU, fp16/fp64, mixed dtypes, autograd, a LoRA-wrapped layer, a build without
oneDNN) takes the plain path. The reordered weight costs one extra copy of the layer's weight
in memory; it is cached per layer and rebuilt when the weight changes (in-place updates bump
its version); a weight made under `torch.inference_mode` has no version, so it is used as it is.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

_REORDERED: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple[int, int], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def _bf16_kernels() -> bool:
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.backends.mkldnn.is_available() and probe is not None and bool(probe())


def cpu_inference_fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where the CPU fast paths apply: input and weight on the CPU in the same dtype,
    float32, or bfloat16 where oneDNN has bf16 kernels; no autograd (training and every
    other device/dtype keep the plain kernels)."""
    if x.device.type != "cpu" or x.dtype != weight.dtype or torch.is_grad_enabled():
        return False
    if x.dtype == torch.float32:
        return True
    return x.dtype == torch.bfloat16 and _bf16_kernels()


def _fusable(linear: nn.Module, x: torch.Tensor) -> bool:
    return (
        type(linear) is nn.Linear
        and cpu_inference_fast_path(x, linear.weight)
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
    """`F.gelu(linear(x))` (erf GELU), fused on the CPU in float32 / bfloat16 inference."""
    if not _fusable(linear, x):
        return F.gelu(linear(x))
    rows = x.reshape(-1, x.shape[-1])
    weight = _reordered_weight(linear, rows.shape[0])
    out = torch.ops.mkldnn._linear_pointwise(rows, weight, linear.bias, "gelu", [], "none")
    return out.view(*x.shape[:-1], out.shape[-1])
