"""Anti-aliased periodic activations for BigVGAN (v1 and v2 share this part).

A Snake activation creates harmonics above Nyquist. BigVGAN therefore upsamples x2 with a
Kaiser-windowed sinc filter, applies the activation, low-passes with the same filter and
downsamples x2. The 12-tap filters are persistent buffers in the published checkpoints; we compute
them in float32 the way the official code does, so they equal the stored values bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """(1, 1, kernel_size) low-pass filter with unit DC gain; cutoff is in cycles per sample.

    The Kaiser beta follows the usual attenuation formula for the given transition half-width.
    Computed on CPU in float32 so that the result does not depend on the build device.
    """
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta, device="cpu")
    if kernel_size % 2 == 0:
        time = torch.arange(-half, half, device="cpu") + 0.5
    else:
        time = torch.arange(kernel_size, device="cpu") - half
    if cutoff == 0:
        taps = torch.zeros_like(time)
    else:
        taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
        taps = taps / taps.sum()  # unit DC gain: no leakage of the constant component
    return taps.view(1, 1, kernel_size)


def _filter_buffer(ratio: int, kernel_size: int) -> torch.Tensor:
    taps = kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size)
    return taps.to(torch.get_default_device())


class UpSample1d(nn.Module):
    """x`ratio` upsampling: replicate-pad, zero-stuffing transposed conv with the filter, crop."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", _filter_buffer(ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        weight = self.filter.expand(channels, -1, -1)
        x = self.ratio * F.conv_transpose1d(x, weight, stride=self.ratio, groups=channels)
        return x[..., self.crop_left : -self.crop_right]


class LowPassFilter1d(nn.Module):
    """Depthwise FIR low-pass with replicate padding and an optional stride."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12, stride: int = 1):
        super().__init__()
        even = kernel_size % 2 == 0
        self.pad_left = kernel_size // 2 - int(even)
        self.pad_right = kernel_size // 2
        self.stride = stride
        self.register_buffer("filter", _filter_buffer(ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        weight = self.filter.expand(channels, -1, -1)
        return F.conv1d(x, weight, stride=self.stride, groups=channels)


class DownSample1d(nn.Module):
    """x`ratio` downsampling: low-pass at the new Nyquist, keep every `ratio`-th sample."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter1d(ratio, kernel_size, stride=ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """x + sin^2(alpha x) / beta per channel; plain Snake (beta = alpha) when `with_beta` is False.

    With `logscale` the stored parameters are log(alpha), log(beta) (BigVGAN's snake_logscale).
    """

    def __init__(self, channels: int, logscale: bool = True, with_beta: bool = True):
        super().__init__()
        self.logscale = logscale
        init = torch.zeros if logscale else torch.ones
        self.alpha = nn.Parameter(init(channels))
        self.beta = nn.Parameter(init(channels)) if with_beta else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        beta = alpha if self.beta is None else self.beta[None, :, None]
        if self.logscale:
            alpha, beta = torch.exp(alpha), torch.exp(beta)
        return x + (1.0 / (beta + 1e-9)) * torch.sin(x * alpha).pow(2)


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample x2, activation, downsample x2."""

    def __init__(self, activation: nn.Module, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.act = activation
        self.upsample = UpSample1d(ratio, kernel_size)
        self.downsample = DownSample1d(ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))
