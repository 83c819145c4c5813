"""BigVGAN mel-to-waveform vocoders: v1 16 kHz (Make-An-Audio 2) and v2 44.1 kHz, one module.

The two official classes compute the same graph; v2 only adds two flags for the output layer
(`use_tanh_at_final`, `use_bias_at_final`). Our module holds plain convolutions: published files
store weight-normed convs (`weight_g` / `weight_v`) which the loaders fold once, exactly as the
official `remove_weight_norm()` does before inference.

Layout (key names follow the checkpoints): `conv_pre` (k7) -> per stage i: `ups.i.0`
(ConvTranspose1d, stride u_i, channels halve) then the mean of `len(resblock_kernel_sizes)`
anti-aliased resblocks -> `activation_post` -> `conv_post` (k7, 1 channel) -> tanh or clamp.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selva_core.audio.alias_free import Activation1d, SnakeBeta
from selva_core.checkpoint import load_strict, read_state_dict
from selva_core.random_init import randomize_


@dataclass(frozen=True)
class BigVGANConfig:
    """Hyper-parameters named as in BigVGAN's config.json / Make-An-Audio 2's yml."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    activation: str = "snakebeta"
    snake_logscale: bool = True
    # Both default to True, as in the official code, for configs that predate the flags.
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True
    sampling_rate: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # normalise JSON lists to tuples on a frozen dataclass
        set_(self, "upsample_rates", tuple(int(u) for u in self.upsample_rates))
        set_(self, "upsample_kernel_sizes", tuple(int(k) for k in self.upsample_kernel_sizes))
        set_(self, "resblock_kernel_sizes", tuple(int(k) for k in self.resblock_kernel_sizes))
        dil = tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes)
        set_(self, "resblock_dilation_sizes", dil)
        set_(self, "resblock", str(self.resblock))
        if self.resblock != "1":
            raise ValueError(f"only resblock '1' (AMPBlock1) is implemented, got {self.resblock!r}")
        if self.activation not in ("snake", "snakebeta"):
            raise ValueError(f"activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.upsample_initial_channel >> len(self.upsample_rates) < 1:
            stages = len(self.upsample_rates)
            raise ValueError(
                f"upsample_initial_channel {self.upsample_initial_channel} halves to 0 channels "
                f"over {stages} stages; use at least {2**stages}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BigVGANConfig:
        """Build from config.json / yml contents; training-only keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> BigVGANConfig:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (the product of the upsample rates)."""
        return math.prod(self.upsample_rates)

    def stage_channels(self, stage: int) -> int:
        """Width after upsample stage `stage` (0-based)."""
        return self.upsample_initial_channel // 2 ** (stage + 1)


BIGVGAN_16K = BigVGANConfig(sampling_rate=16000)
BIGVGAN_V2_44K = BigVGANConfig(
    num_mels=128,
    upsample_rates=(8, 4, 2, 2, 2, 2),
    upsample_kernel_sizes=(16, 8, 4, 4, 4, 4),
    use_tanh_at_final=False,
    use_bias_at_final=False,
    sampling_rate=44100,
)
# Tiny variants for tests and the offline demo. 64 is the smallest initial width that survives
# six halvings (stage widths 32, 16, 8, 4, 2, 1), the same width as the golden fixtures.
BIGVGAN_TINY_16K = BigVGANConfig(upsample_initial_channel=64, sampling_rate=16000)
BIGVGAN_TINY_44K = replace(BIGVGAN_V2_44K, upsample_initial_channel=64)
BIGVGAN_CONFIGS: dict[str, BigVGANConfig] = {
    "16k": BIGVGAN_16K,
    "44k": BIGVGAN_V2_44K,
    "tiny_16k": BIGVGAN_TINY_16K,
    "tiny_44k": BIGVGAN_TINY_44K,
}


def _padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class AMPBlock(nn.Module):
    """BigVGAN resblock type 1: per dilation d, x += conv_1(act(conv_d(act(x))))."""

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        dilations: tuple[int, ...],
        make_activation: Callable[[int], nn.Module],
    ):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_padding(kernel_size, 1))
            for _ in dilations
        )
        self.activations = nn.ModuleList(
            Activation1d(make_activation(channels)) for _ in range(2 * len(dilations))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            h = conv1(self.activations[2 * i](x))
            h = conv2(self.activations[2 * i + 1](h))
            x = h + x
        return x


class BigVGAN(nn.Module):
    """Log-mel (B, num_mels, T) -> waveform (B, 1, T * hop_length) in [-1, 1]."""

    def __init__(self, config: BigVGANConfig = BIGVGAN_16K):
        super().__init__()
        self.config = config
        with_beta = config.activation == "snakebeta"

        def make_activation(channels: int) -> nn.Module:
            return SnakeBeta(channels, logscale=config.snake_logscale, with_beta=with_beta)

        width = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, width, 7, padding=3)
        self.ups = nn.ModuleList()
        for i, (rate, kernel) in enumerate(
            zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True)
        ):
            up = nn.ConvTranspose1d(
                width // 2**i, width // 2 ** (i + 1), kernel, rate, padding=(kernel - rate) // 2
            )
            self.ups.append(nn.ModuleList([up]))  # the extra level gives the `ups.i.0` key names
        self.resblocks = nn.ModuleList(
            AMPBlock(config.stage_channels(i), k, d, make_activation)
            for i in range(len(self.ups))
            for k, d in zip(
                config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
            )
        )
        final = config.stage_channels(len(self.ups) - 1)
        self.activation_post = Activation1d(make_activation(final))
        self.conv_post = nn.Conv1d(final, 1, 7, padding=3, bias=config.use_bias_at_final)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        n = len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up[0](x)
            blocks = self.resblocks[i * n : (i + 1) * n]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total / n
        x = self.conv_post(self.activation_post(x))
        if self.config.use_tanh_at_final:
            return torch.tanh(x)
        return x.clamp(-1.0, 1.0)


# --- checkpoint loading -----------------------------------------------------------------------

_WEIGHT_NORM_PARTS = {
    "weight_g": "g",
    "weight_v": "v",
    "parametrizations.weight.original0": "g",
    "parametrizations.weight.original1": "v",
}


def fold_weight_norm_pair(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """g * v / ||v|| with the norm over all dims but 0 (in_channels for ConvTranspose1d).

    Uses torch's own weight-norm kernel, the one the official `remove_parametrizations` runs, so
    the folded weights equal the official ones bit for bit.
    """
    return torch._weight_norm(v, g, 0)


def fold_weight_norm(
    state: Mapping[str, torch.Tensor], source: str = "<state dict>"
) -> dict[str, torch.Tensor]:
    """Checkpoint-form state dict -> plain `<conv>.weight` entries; other entries pass through.

    Accepts the legacy `weight_g`/`weight_v` names and the parametrization names
    `parametrizations.weight.original0/1`. A half pair is an error naming `source` and the keys.
    """
    plain: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        for suffix, role in _WEIGHT_NORM_PARTS.items():
            if key.endswith("." + suffix):
                pairs.setdefault(key[: -len(suffix) - 1], {})[role] = (key, value)
                break
        else:
            plain[key] = value
    broken = sorted(key for parts in pairs.values() if len(parts) != 2 for key, _ in parts.values())
    if broken:
        raise RuntimeError(
            f"{source}: weight-norm keys without their partner (need both g and v): {broken}"
        )
    for prefix, parts in pairs.items():
        name = prefix + ".weight"
        if name in plain:
            raise RuntimeError(f"{source}: both {name} and its weight-norm form are present")
        plain[name] = fold_weight_norm_pair(parts["g"][1], parts["v"][1])
    return plain


def bigvgan_from_state(
    config: BigVGANConfig, state: Mapping[str, torch.Tensor], source: str = "<state dict>"
) -> BigVGAN:
    """Strictly load a generator state dict (checkpoint or plain form) into a new frozen BigVGAN.

    The module is built on the meta device and takes the (folded) tensors as its storage, so a
    real-size model never exists twice in memory.
    """
    plain = fold_weight_norm(state, source)
    with torch.device("meta"):
        model = BigVGAN(config)
    load_strict(model, plain, source)
    return model.eval().requires_grad_(False)


def load_bigvgan_16k(path: str | Path, config: BigVGANConfig = BIGVGAN_16K) -> BigVGAN:
    """The 16 kHz vocoder from Make-An-Audio 2's `best_netG.pt` (weights under `generator`)."""
    state, name = read_state_dict(path, key="generator")
    return bigvgan_from_state(config, state, source=name)


def load_bigvgan_v2(directory: str | Path) -> BigVGAN:
    """A BigVGAN-v2 hub snapshot folder: `config.json` + `bigvgan_generator.pt`."""
    directory = Path(directory)
    config = BigVGANConfig.from_json(directory / "config.json")
    state, name = read_state_dict(directory / "bigvgan_generator.pt", key="generator")
    return bigvgan_from_state(config, state, source=name)


# --- random weights for tests and the offline demo --------------------------------------------


def _vocoder_rule(name: str, tensor: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("alpha", "beta"):  # log-scale snake parameters around 1
        return torch.randn(tensor.shape, generator=gen) * 0.3
    if leaf == "weight" and tensor.dim() == 3:
        # Weight-norm style: random direction, row norm g. Smaller g inside the resblocks keeps the
        # residual sums bounded, and a small output gain keeps the final tanh / hard clamp (v2)
        # out of saturation (measured: < 1% of samples at |x| > 0.99 over seeds 0-7).
        v = torch.randn(tensor.shape, generator=gen)
        if name.startswith("resblocks."):
            lo, hi = 0.2, 0.5
        elif name.startswith("conv_post."):
            lo, hi = 0.1, 0.3
        else:
            lo, hi = 0.5, 1.5
        g = lo + (hi - lo) * torch.rand((tensor.shape[0], 1, 1), generator=gen)
        return fold_weight_norm_pair(g, v)
    return None


def random_vocoder(config: BigVGANConfig = BIGVGAN_TINY_16K, seed: int = 0) -> BigVGAN:
    """A deterministic BigVGAN with O(1) random weights and the real anti-aliasing filters."""
    model = BigVGAN(config)
    randomize_(model, seed, rules=[_vocoder_rule], keep=lambda name: name.endswith(".filter"))
    return model.eval().requires_grad_(False)
