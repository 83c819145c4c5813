"""Log-mel front end shared by the VAE (encode side) and the vocoders (their input features).

Matches the official converter: clamp to [-1, 1], reflect-pad (n_fft - hop) / 2 per side, STFT
with `center=False` and a periodic Hann window, magnitude sqrt(re^2 + im^2 + 1e-9), a librosa
Slaney-scale / Slaney-norm filterbank, then log10 (16 kHz) or ln (44.1 kHz) of clamp(., 1e-5).

The filterbank is computed here (no librosa dependency). It reproduces librosa's float64 maths and
its float32 rounding points, so it equals librosa's `filters.mel` output bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_LOG_FNS = {"log10": torch.log10, "log": torch.log}


@dataclass(frozen=True)
class MelConfig:
    """STFT / filterbank settings. `norm_fn` is the compression: "log10" (16k) or "log" (44k)."""

    sampling_rate: int = 16000
    n_fft: int = 1024
    num_mels: int = 80
    hop_size: int = 256
    win_size: int = 1024
    fmin: float = 0.0
    fmax: float | None = 8000.0
    norm_fn: str = "log10"

    def __post_init__(self) -> None:
        if self.norm_fn not in _LOG_FNS:
            raise ValueError(f"norm_fn must be one of {sorted(_LOG_FNS)}, got {self.norm_fn!r}")
        if (self.n_fft - self.hop_size) % 2:
            raise ValueError("n_fft - hop_size must be even (symmetric reflect padding)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MelConfig:
        """Build from a dict that may carry extra keys (e.g. a fixture's `config` metadata)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def num_frames(self, num_samples: int) -> int:
        """Mel frames produced for a waveform of `num_samples` samples."""
        padded = num_samples + self.n_fft - self.hop_size
        return 1 + (padded - self.n_fft) // self.hop_size


MEL_16K = MelConfig()
MEL_44K = MelConfig(
    sampling_rate=44100,
    n_fft=2048,
    num_mels=128,
    hop_size=512,
    win_size=2048,
    fmin=0.0,
    fmax=22050.0,
    norm_fn="log",
)

# Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz >= _MIN_LOG_HZ:
        return _MIN_LOG_MEL + math.log(hz / _MIN_LOG_HZ) / _LOGSTEP
    return hz / _F_SP


def _mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    log_part = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mels - _MIN_LOG_MEL))
    return torch.where(mels >= _MIN_LOG_MEL, log_part, _F_SP * mels)


def slaney_mel_filterbank(
    sampling_rate: float, n_fft: int, num_mels: int, fmin: float, fmax: float | None
) -> torch.Tensor:
    """(num_mels, n_fft // 2 + 1) float32 filterbank, equal to librosa.filters.mel defaults.

    Triangles are built in float64 and rounded to float32 before the Slaney area normalisation
    (which is applied in float64 and rounded again), exactly where librosa rounds.
    """
    f64 = dict(dtype=torch.float64, device="cpu")
    fmax = sampling_rate / 2 if fmax is None else fmax
    fft_freqs = torch.arange(n_fft // 2 + 1, **f64) * (1.0 / (n_fft * (1.0 / sampling_rate)))
    lo, hi = _hz_to_mel(float(fmin)), _hz_to_mel(float(fmax))
    mels = torch.arange(num_mels + 2, **f64) * ((hi - lo) / (num_mels + 1)) + lo
    mels[-1] = hi  # numpy.linspace pins the end point
    edges = _mel_to_hz(mels)
    widths = edges.diff()
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    triangles = torch.minimum(rising, falling).clamp_min(0.0).float()
    area_norm = 2.0 / (edges[2:] - edges[:-2])
    return (triangles.double() * area_norm[:, None]).float()


class MelConverter(nn.Module):
    """Waveform (B, L) or (L,) in [-1, 1] -> log-mel (B, num_mels, L // hop) or (num_mels, frames).

    The STFT always runs in float32: cuFFT rejects bf16 and fp16 loses too much dynamic range.
    The buffers stay float32 even if the module is cast (see `_apply`), and the result is returned
    in the input's dtype.
    """

    def __init__(self, config: MelConfig = MEL_16K):
        super().__init__()
        self.config = config
        basis = slaney_mel_filterbank(
            config.sampling_rate, config.n_fft, config.num_mels, config.fmin, config.fmax
        )
        window = torch.hann_window(config.win_size, periodic=True, device="cpu")
        device = torch.get_default_device()
        self.register_buffer("mel_basis", basis.to(device))
        self.register_buffer("hann_window", window.to(device))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # Keep the filterbank and window in float32 through `.half()` / `.to(bfloat16)`; follow
        # device moves only.
        before = {name: buf for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        return self

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        squeeze = waveform.dim() == 1
        x = waveform[None] if squeeze else waveform
        if x.dim() != 2:
            raise ValueError(f"expected a waveform of shape (B, L) or (L,), got {tuple(x.shape)}")
        out_dtype = waveform.dtype if waveform.is_floating_point() else torch.float32
        x = x.to(device=self.mel_basis.device, dtype=torch.float32).clamp(-1.0, 1.0)
        pad = (cfg.n_fft - cfg.hop_size) // 2
        x = F.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
        spec = torch.stft(
            x,
            cfg.n_fft,
            hop_length=cfg.hop_size,
            win_length=cfg.win_size,
            window=self.hann_window.float(),
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
        mel = torch.matmul(self.mel_basis.float(), magnitude)
        mel = _LOG_FNS[cfg.norm_fn](mel.clamp_min(1e-5)).to(out_dtype)
        return mel[0] if squeeze else mel
