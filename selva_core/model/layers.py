"""Small building blocks shared by the generator and the video encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fp32_tables import fp32_kept
from .fused_cpu import cpu_inference_fast_path


def swiglu_hidden(hidden_dim: int, multiple_of: int = 256) -> int:
    """SwiGLU width: two thirds of the nominal hidden size, rounded up to `multiple_of`."""
    hidden = int(2 * hidden_dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class ChannelLastConv1d(nn.Conv1d):
    """Conv1d applied to (B, N, C) sequences. Still an nn.Conv1d, so LoRA does not target it.

    CPU float32 and bfloat16 inference runs it as one GEMM over the unfolded windows (im2col):
    on channel-last data that skips both layout transposes, and at the generator's sizes it
    measured 5-25 % faster than the convolution kernel in fp32 (docs/benchmarks.md, issue #16);
    in bf16 the two are within 10 % of each other per layer (ConvMLP 3-4 % faster). The sums
    are the same, taken in another order (fp32 rounding, below 1e-6 relative; in bf16 both
    round the fp32 accumulator once).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._as_gemm(x):
            return conv1d_as_gemm(x, self.weight, self.bias, self.padding[0])
        return super().forward(x.transpose(1, 2)).transpose(1, 2)

    def _as_gemm(self, x: torch.Tensor) -> bool:
        return (
            cpu_inference_fast_path(x, self.weight)
            and self.stride == (1,)
            and self.dilation == (1,)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
        )


def conv1d_as_gemm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """Stride-1 zero-padded conv of channel-last (B, N, Cin) by (Cout, Cin, k) as one GEMM:
    rows are the k-sample windows laid out (Cin, k), which is the weight's own layout."""
    out_ch, in_ch, k = weight.shape
    if k == 1 and padding == 0:
        return F.linear(x, weight.view(out_ch, in_ch), bias)
    b = x.shape[0]
    cols = F.pad(x, (0, 0, padding, padding)).unfold(1, k, 1)  # (B, N_out, Cin, k) view
    n_out = cols.shape[1]
    y = F.linear(cols.reshape(b * n_out, in_ch * k), weight.reshape(out_ch, in_ch * k), bias)
    return y.view(b, n_out, out_ch)


class MLP(nn.Module):
    """SwiGLU feed-forward without biases: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int, multiple_of: int = 256):
        super().__init__()
        hidden = swiglu_hidden(hidden_dim, multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ConvMLP(nn.Module):
    """SwiGLU feed-forward whose projections are channel-last convolutions over time."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        multiple_of: int = 256,
        kernel_size: int = 3,
        padding: int = 1,
    ):
        super().__init__()
        hidden = swiglu_hidden(hidden_dim, multiple_of)
        self.w1 = ChannelLastConv1d(dim, hidden, kernel_size, padding=padding, bias=False)
        self.w2 = ChannelLastConv1d(hidden, dim, kernel_size, padding=padding, bias=False)
        self.w3 = ChannelLastConv1d(dim, hidden, kernel_size, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t in [0, 1] ([cos, sin] order), then a 2-layer MLP.

    The table is f_i = (10000 / max_period) / 10000^(2i / F), i < F/2, F the frequency width.
    v1: F = 256, max_period 10000, so f runs from 1 down to ~1e-4 rad per unit t.
    v2: F = dim, max_period 1, so f is scaled by 1e4 and t * f reaches 1e4 rad. At that size one
    float32 ulp of f_i moves the flow by ~1e-4, so the table is formed with the official float32
    steps (arange / F, pow, reciprocal, scale), always on the CPU so every device gets the same
    bits, and t * f_i is one float32 multiply.
    """

    def __init__(self, dim: int, frequency_embedding_size: int = 256, max_period: float = 10000):
        super().__init__()
        self.dim = dim
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, dim),
            nn.SiLU(),
            nn.Linear(dim, dim),
        )
        self.register_buffer("freqs", self._frequencies(), persistent=False)

    def _frequencies(self, device: torch.device | None = None) -> torch.Tensor:
        width = self.frequency_embedding_size
        exponents = torch.arange(0, width, 2, dtype=torch.float32, device="cpu") / width
        table = (10000 / self.max_period) * (1.0 / (10000**exponents))
        return table.to(device) if device is not None else table

    def reset_frequencies(self) -> None:
        """Recompute the table beside the weights (after loading into a meta-built module)."""
        self.freqs = self._frequencies(self.mlp[0].weight.device)

    def _apply(self, fn, recurse=True):
        # Keep the frequency table in fp32, values unrounded, whatever the module's dtype.
        with fp32_kept(self, ("freqs",)):
            return super()._apply(fn, recurse)

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        """[cos(t f), sin(t f)] (B, F), always float32 whatever the model dtype, as the official
        code forms it: in bf16, t * f near v2's 1e4 rad would be off by tens of radians."""
        freqs = self.freqs.to(device=t.device, dtype=torch.float32)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t).to(self.mlp[0].weight.dtype))
