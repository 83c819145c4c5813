"""1-D EDM2-style magnitude-preserving VAE between log-mels (B, data_dim, T) and latents.

Encoder: `conv_in` -> levels of ResBlocks (x2 time downsample after the levels in `down_layers`)
-> mid (block, attention, block) -> mp_silu -> `conv_out` giving mean and log-variance. The decoder
mirrors it with one more block per level and nearest-exact upsampling. All convs are MPConv1d:
bias-free, "same" padding, and stored RAW in the checkpoints; `remove_weight_norm()` folds the
EDM2 forced weight normalisation w / (||w|| + 1e-4 sqrt(fan_in)) per output row once, before
inference (`load_vae` does it). The last conv of each side is also scaled by
(learnable_gain + 1) at run time, as the official code does; the gain is not folded.

Shapes: VAE latents are channel-first (B, embed_dim, T_mel / 2). The generator works on
(B, T, C) sequences: use `latent_to_sequence` / `sequence_to_latent` at the boundary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selva_core.checkpoint import load_strict, read_state_dict
from selva_core.random_init import randomize_


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split())


# Per-band statistics of the training log-mels, hard-coded in the official VAE and also stored in
# the checkpoints as the persistent (1, C, 1) buffers `data_mean` / `data_std`.
_MEAN_80 = _floats(
    """
    -1.6058 -1.3676 -1.2520 -1.2453 -1.2078 -1.2224 -1.2419 -1.2439 -1.2922 -1.2927
    -1.3170 -1.3543 -1.3401 -1.3836 -1.3907 -1.3912 -1.4313 -1.4152 -1.4527 -1.4728
    -1.4568 -1.5101 -1.5051 -1.5172 -1.5623 -1.5373 -1.5746 -1.5687 -1.6032 -1.6131
    -1.6081 -1.6331 -1.6489 -1.6489 -1.6700 -1.6738 -1.6953 -1.6969 -1.7048 -1.7280
    -1.7361 -1.7495 -1.7658 -1.7814 -1.7889 -1.8064 -1.8221 -1.8377 -1.8417 -1.8643
    -1.8857 -1.8929 -1.9173 -1.9379 -1.9531 -1.9673 -1.9824 -2.0042 -2.0215 -2.0436
    -2.0766 -2.1064 -2.1418 -2.1855 -2.2319 -2.2767 -2.3161 -2.3572 -2.3954 -2.4282
    -2.4659 -2.5072 -2.5552 -2.6074 -2.6584 -2.7107 -2.7634 -2.8266 -2.8981 -2.9673
    """
)

_STD_80 = _floats(
    """
    1.0291 1.0411 1.0043 0.9820 0.9677 0.9543 0.9450 0.9392 0.9343 0.9297
    0.9276 0.9263 0.9242 0.9254 0.9232 0.9281 0.9263 0.9315 0.9274 0.9247
    0.9277 0.9199 0.9188 0.9194 0.9160 0.9161 0.9146 0.9161 0.9100 0.9095
    0.9145 0.9076 0.9066 0.9095 0.9032 0.9043 0.9038 0.9011 0.9019 0.9010
    0.8984 0.8983 0.8986 0.8961 0.8962 0.8978 0.8962 0.8973 0.8993 0.8976
    0.8995 0.9016 0.8982 0.8972 0.8974 0.8949 0.8940 0.8947 0.8936 0.8939
    0.8951 0.8956 0.9017 0.9167 0.9436 0.9690 1.0003 1.0225 1.0381 1.0491
    1.0545 1.0604 1.0761 1.0929 1.1089 1.1196 1.1176 1.1156 1.1117 1.1070
    """
)

_MEAN_128 = _floats(
    """
    -3.3462 -2.6723 -2.4893 -2.3143 -2.2664 -2.3317 -2.1802 -2.4006 -2.2357 -2.4597
    -2.3717 -2.4690 -2.5142 -2.4919 -2.6610 -2.5047 -2.7483 -2.5926 -2.7462 -2.7033
    -2.7386 -2.8112 -2.7502 -2.9594 -2.7473 -3.0035 -2.8891 -2.9922 -2.9856 -3.0157
    -3.1191 -2.9893 -3.1718 -3.0745 -3.1879 -3.2310 -3.1424 -3.2296 -3.2791 -3.2782
    -3.2756 -3.3134 -3.3509 -3.3750 -3.3951 -3.3698 -3.4505 -3.4509 -3.5089 -3.4647
    -3.5536 -3.5788 -3.5867 -3.6036 -3.6400 -3.6747 -3.7072 -3.7279 -3.7283 -3.7795
    -3.8259 -3.8447 -3.8663 -3.9182 -3.9605 -3.9861 -4.0105 -4.0373 -4.0762 -4.1121
    -4.1488 -4.1874 -4.2461 -4.3170 -4.3639 -4.4452 -4.5282 -4.6297 -4.7019 -4.7960
    -4.8700 -4.9507 -5.0303 -5.0866 -5.1634 -5.2342 -5.3242 -5.4053 -5.4927 -5.5712
    -5.6464 -5.7052 -5.7619 -5.8410 -5.9188 -6.0103 -6.0955 -6.1673 -6.2362 -6.3120
    -6.3926 -6.4797 -6.5565 -6.6511 -6.8130 -6.9961 -7.1275 -7.2457 -7.3576 -7.4663
    -7.6136 -7.7469 -7.8815 -8.0132 -8.1515 -8.3071 -8.4722 -8.7418 -9.3975 -9.6628
    -9.7671 -9.8863 -9.9992 -10.0860 -10.1709 -10.5418 -11.2795 -11.3861
    """
)

_STD_128 = _floats(
    """
    2.3804 2.4368 2.3772 2.3145 2.2803 2.2510 2.2316 2.2083 2.1996 2.1835
    2.1769 2.1659 2.1631 2.1618 2.1540 2.1606 2.1571 2.1567 2.1612 2.1579
    2.1679 2.1683 2.1634 2.1557 2.1668 2.1518 2.1415 2.1449 2.1406 2.1350
    2.1313 2.1415 2.1281 2.1352 2.1219 2.1182 2.1327 2.1195 2.1137 2.1080
    2.1179 2.1036 2.1087 2.1036 2.1015 2.1068 2.0975 2.0991 2.0902 2.1015
    2.0857 2.0920 2.0893 2.0897 2.0910 2.0881 2.0925 2.0873 2.0960 2.0900
    2.0957 2.0958 2.0978 2.0936 2.0886 2.0905 2.0845 2.0855 2.0796 2.0840
    2.0813 2.0817 2.0838 2.0840 2.0917 2.1061 2.1431 2.1976 2.2482 2.3055
    2.3700 2.4088 2.4372 2.4609 2.4731 2.4847 2.5072 2.5451 2.5772 2.6147
    2.6529 2.6596 2.6645 2.6726 2.6803 2.6812 2.6899 2.6916 2.6931 2.6998
    2.7062 2.7262 2.7222 2.7158 2.7041 2.7485 2.7491 2.7451 2.7485 2.7233
    2.7297 2.7233 2.7145 2.6958 2.6788 2.6439 2.6007 2.4786 2.2469 2.1877
    2.1392 2.0717 2.0107 1.9676 1.9140 1.7102 0.9101 0.7164
    """
)
_DATA_STATS = {80: (_MEAN_80, _STD_80), 128: (_MEAN_128, _STD_128)}


@dataclass(frozen=True)
class VAEConfig:
    """VAE sizes. `data_dim` must be 80 (16 kHz) or 128 (44.1 kHz): the statistics exist for those.

    Level `i` has width hidden_dim * ch_mult[i]. `attn_layers` lists levels with attention after
    each block (the official (3,) matches no level: only the mid block attends).
    """

    data_dim: int = 80
    embed_dim: int = 20
    hidden_dim: int = 384
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_layers: tuple[int, ...] = (3,)
    down_layers: tuple[int, ...] = (0,)
    kernel_size: int = 3
    clip_act: float = 256.0

    def __post_init__(self) -> None:
        for name in ("ch_mult", "attn_layers", "down_layers"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.data_dim not in _DATA_STATS:
            raise ValueError(f"data_dim must be one of {sorted(_DATA_STATS)}, got {self.data_dim}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> VAEConfig:
        """Build from a dict that may carry extra keys (e.g. a fixture's `config` metadata)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def downsample_factor(self) -> int:
        """Mel frames per latent frame."""
        return 2 ** len([i for i in self.down_layers if i < len(self.ch_mult)])


VAE_16K = VAEConfig()
VAE_44K = VAEConfig(data_dim=128, embed_dim=40, hidden_dim=512)
VAE_TINY_16K = VAEConfig(hidden_dim=16)
VAE_TINY_44K = VAEConfig(data_dim=128, embed_dim=40, hidden_dim=16)
VAE_CONFIGS: dict[str, VAEConfig] = {
    "16k": VAE_16K,
    "44k": VAE_44K,
    "tiny_16k": VAE_TINY_16K,
    "tiny_44k": VAE_TINY_44K,
}


# --- EDM2 magnitude-preserving primitives -------------------------------------------------------


def mp_normalize(x: torch.Tensor, dim: int | tuple[int, ...], eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + ||x|| / sqrt(n)) over `dim` (n elements): unit RMS. The norm is taken in fp32."""
    dims = (dim,) if isinstance(dim, int) else dim
    count = math.prod(x.shape[d] for d in dims)
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(1.0 / count))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU rescaled to unit output magnitude for unit-variance input."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """(1 - t) a + t b, rescaled so that unit-magnitude inputs give a unit-magnitude output."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


class MPConv1d(nn.Module):
    """Bias-free Conv1d ("same" padding) whose raw weight must be normalised once before use."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size))
        self.weight_norm_removed = False

    def remove_weight_norm(self) -> None:
        """Fold w / (||w|| + 1e-4 sqrt(fan_in)) per output row (official float32 op order)."""
        if self.weight_norm_removed:
            return
        w = self.weight.detach().float()
        fan_in = w[0].numel()
        w = mp_normalize(w, dim=tuple(range(1, w.dim()))) / math.sqrt(fan_in)
        # A new Parameter, so that a caller's state dict (shared storage after assign) is untouched.
        self.weight = nn.Parameter(w.to(self.weight.dtype), self.weight.requires_grad)
        self.weight_norm_removed = True

    def forward(self, x: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        if not self.weight_norm_removed:
            raise RuntimeError("MPConv1d holds raw weights: call remove_weight_norm() first")
        w = self.weight if gain is None else self.weight * gain
        return F.conv1d(x, w, padding=w.shape[-1] // 2)


class ResBlock(nn.Module):
    """Pixel-norm, two (mp_silu, conv) steps, 1x1 shortcut on width change, mp_sum with t = 0.3."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int):
        super().__init__()
        self.conv1 = MPConv1d(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1d(out_dim, out_dim, kernel_size)
        self.nin_shortcut = MPConv1d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = mp_normalize(x, dim=1)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_sum(x, h, t=0.3)


class AttnBlock(nn.Module):
    """Single-head self-attention over time with unit-normalised q, k, v.

    The 1x1 `qkv` output channels are interleaved per channel (q0, k0, v0, q1, ...).
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = MPConv1d(channels, 3 * channels, 1)
        self.proj_out = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        qkv = self.qkv(x).reshape(batch, self.num_heads, -1, 3, length)
        q, k, v = mp_normalize(qkv, dim=2).transpose(2, 4).unbind(3)  # each (B, h, L, c)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(2, 3).reshape(batch, channels, length)
        return mp_sum(x, self.proj_out(h), t=0.3)


class Downsample(nn.Module):
    """1x1 conv, average-pool x2 over time, 1x1 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = MPConv1d(channels, channels, 1)
        self.conv2 = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Upsample(nn.Module):
    """Nearest-exact x2 over time, then a k3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = MPConv1d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))


class _Level(nn.Module):
    """One resolution level: ResBlocks (+ optional attention each) and an optional resampler."""

    def __init__(self, widths: list[tuple[int, int]], kernel_size: int, attention: bool):
        super().__init__()
        self.block = nn.ModuleList(ResBlock(i, o, kernel_size) for i, o in widths)
        self.attn = nn.ModuleList(AttnBlock(o) for _, o in widths) if attention else nn.ModuleList()

    def run(self, x: torch.Tensor, clip_act: float) -> torch.Tensor:
        """The blocks, then the level's resampler if it has one."""
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
            x = x.clamp(-clip_act, clip_act)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


def _level(
    c: VAEConfig, i: int, width: int, blocks: int, resample: tuple[str, type] | None
) -> tuple[_Level, int]:
    """Level `i` of the encoder or decoder: `blocks` ResBlocks from `width` channels to the
    level's own width, then `resample` (attribute name, module class) if given. Returns the
    level and its width."""
    out = c.hidden_dim * c.ch_mult[i]
    widths = [(width if b == 0 else out, out) for b in range(blocks)]
    level = _Level(widths, c.kernel_size, attention=i in c.attn_layers)
    if resample is not None:
        name, module = resample
        setattr(level, name, module(out))  # registered after the blocks: checkpoint key order
    return level, out


class _Mid(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.block_1 = ResBlock(channels, channels, kernel_size)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResBlock(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor, clip_act: float) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x))).clamp(-clip_act, clip_act)


class _Codec(nn.Module):
    """What the encoder and decoder share: the activation clip and the output gain."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.clip_act = config.clip_act
        self.learnable_gain = nn.Parameter(torch.zeros([]))


class Encoder(_Codec):
    """Normalised mel (B, data_dim, T) -> moments (B, 2 * embed_dim, T / 2)."""

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        self.conv_in = MPConv1d(c.data_dim, c.hidden_dim, c.kernel_size)
        self.down = nn.ModuleList()
        width = c.hidden_dim
        for i in range(len(c.ch_mult)):
            down = ("downsample", Downsample) if i in c.down_layers else None
            level, width = _level(c, i, width, c.num_res_blocks, down)
            self.down.append(level)
        self.mid = _Mid(width, c.kernel_size)
        self.conv_out = MPConv1d(width, 2 * c.embed_dim, c.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level.run(x, self.clip_act)
        x = mp_silu(self.mid(x, self.clip_act))
        return self.conv_out(x, gain=self.learnable_gain + 1)


class Decoder(_Codec):
    """Latent (B, embed_dim, T') -> normalised mel (B, data_dim, 2 T')."""

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        width = c.hidden_dim * c.ch_mult[-1]
        self.conv_in = MPConv1d(c.embed_dim, width, c.kernel_size)
        self.mid = _Mid(width, c.kernel_size)
        upsample_after = {i + 1 for i in c.down_layers}  # the level above each encoder downsample
        levels = []
        for i in reversed(range(len(c.ch_mult))):
            up = ("upsample", Upsample) if i in upsample_after else None
            level, width = _level(c, i, width, c.num_res_blocks + 1, up)
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))  # indexed by level, like the checkpoint keys
        self.conv_out = MPConv1d(width, c.data_dim, c.kernel_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z), self.clip_act)
        for level in reversed(self.up):
            x = level.run(x, self.clip_act)
        return self.conv_out(mp_silu(x), gain=self.learnable_gain + 1)


# --- posterior and the VAE --------------------------------------------------------------------


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) from moments (B, 2C, T): first C channels are the mean."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps, eps drawn from `generator` (on the posterior device) if given."""
        noise = torch.empty_like(self.mean).normal_(generator=generator)
        return self.mean + self.std * noise


def latent_to_sequence(latent: torch.Tensor) -> torch.Tensor:
    """VAE latent (B, C, T) -> generator sequence (B, T, C)."""
    return latent.transpose(1, 2)


def sequence_to_latent(sequence: torch.Tensor) -> torch.Tensor:
    """Generator sequence (B, T, C) -> VAE latent (B, C, T) for `decode`."""
    return sequence.transpose(1, 2)


class VAE(nn.Module):
    """Mel <-> latent codec. Build, load raw weights, then `remove_weight_norm()` (or `load_vae`).

    `decoder_only=True` builds no encoder: inference only decodes, and the encoder is 42% of the
    weights. `encode` then raises.
    """

    def __init__(self, config: VAEConfig = VAE_16K, *, decoder_only: bool = False):
        super().__init__()
        self.config = config
        mean, std = _DATA_STATS[config.data_dim]
        self.register_buffer("data_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1))
        self.register_buffer("data_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1))
        self.encoder = None if decoder_only else Encoder(config)
        self.decoder = Decoder(config)

    @property
    def weight_norm_removed(self) -> bool:
        return all(m.weight_norm_removed for m in self.modules() if isinstance(m, MPConv1d))

    def remove_weight_norm(self) -> VAE:
        """Normalise every raw MPConv weight once (a no-op for convs already folded)."""
        for module in self.modules():
            if isinstance(module, MPConv1d):
                module.remove_weight_norm()
        return self

    def mark_weight_norm_removed(self) -> VAE:
        """Declare the loaded weights already normalised (a state dict saved after folding)."""
        for module in self.modules():
            if isinstance(module, MPConv1d):
                module.weight_norm_removed = True
        return self

    def drop_encoder(self) -> VAE:
        self.encoder = None
        return self

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        """(mel - data_mean) / data_std; returns a new tensor (never in place)."""
        return (mel - self.data_mean) / self.data_std

    def unnormalize(self, mel: torch.Tensor) -> torch.Tensor:
        return mel * self.data_std + self.data_mean

    def encode(self, mel: torch.Tensor, normalize: bool = True) -> DiagonalGaussian:
        """Log-mel (B, data_dim, T) -> posterior over latents (B, embed_dim, T / 2)."""
        if self.encoder is None:
            raise RuntimeError("this VAE was built or loaded with decoder_only=True: no encoder")
        return DiagonalGaussian(self.encoder(self.normalize(mel) if normalize else mel))

    def decode(self, latent: torch.Tensor, unnormalize: bool = True) -> torch.Tensor:
        """Latent (B, embed_dim, T') -> log-mel (B, data_dim, 2 T')."""
        mel = self.decoder(latent)
        return self.unnormalize(mel) if unnormalize else mel

    def forward(
        self,
        mel: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(mel)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


# --- loading ----------------------------------------------------------------------------------


def _resolve(config: VAEConfig | str) -> VAEConfig:
    if isinstance(config, VAEConfig):
        return config
    if config not in VAE_CONFIGS:
        raise ValueError(f"unknown VAE config {config!r}; known: {sorted(VAE_CONFIGS)}")
    return VAE_CONFIGS[config]


def load_vae(
    source: str | Path | Mapping[str, torch.Tensor],
    config: VAEConfig | str = VAE_16K,
    *,
    decoder_only: bool = False,
    normalized: bool = False,
) -> VAE:
    """Strictly load a VAE checkpoint (`v1-16.pth` / `v1-44.pth`, or a state dict), then fold.

    The checkpoint holds raw MPConv weights (set `normalized=True` for a state dict saved after
    folding). With `decoder_only` the `encoder.*` entries are dropped before the strict check.
    The module is built on the meta device and adopts the checkpoint tensors; it is returned in
    eval mode with gradients off (a frozen codec).
    """
    config = _resolve(config)
    state, name = read_state_dict(source)
    if decoder_only:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    with torch.device("meta"):
        model = VAE(config, decoder_only=decoder_only)
    load_strict(model, state, name)
    if normalized:
        model.mark_weight_norm_removed()
    else:
        model.remove_weight_norm()
    return model.eval().requires_grad_(False)


def random_vae(
    config: VAEConfig | str = VAE_TINY_16K, seed: int = 0, *, decoder_only: bool = False
) -> VAE:
    """A deterministic, already-normalised VAE with random weights and the official statistics.

    The encoder is drawn (and then dropped for `decoder_only`) so that the decoder weights do not
    depend on `decoder_only`.
    """

    def gain_rule(name: str, tensor: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        if name.endswith("learnable_gain"):
            return torch.randn(tensor.shape, generator=gen) * 0.3
        return None

    model = VAE(_resolve(config))
    randomize_(model, seed, rules=[gain_rule], keep=lambda name: name.startswith("data_"))
    model.remove_weight_norm()
    if decoder_only:
        model.drop_encoder()
    return model.eval().requires_grad_(False)
