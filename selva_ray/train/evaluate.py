"""Evaluation during training: validation loss at fixed seeds and timesteps, preview audio of
a few validation clips, the ComfyUI evaluator's audio metrics, and spectrogram images.

Validation loss: every clip i is scored at each timestep of a fixed grid with noise seeded by
(seed, i), without CFG dropout, so two evaluations differ only because the adapter changed.

Previews are generated as the generation job does (clip's own duration, Euler steps, CFG with
the stored empty-string negative). The reference is the clip's own audio latent decoded by the
same VAE decoder and vocoder: comparing against the codec round trip instead of the raw track
keeps codec error out of LSD/MCD/band correlation, so they measure the generator alone (and
the source video need not be reachable from the worker).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch

from selva_core.flow_loss import flow_matching_loss

from ..io.names import file_stem
from .data import ClipSet, derived_seed, normalized_targets

N_FFT = 2048
HOP = 512
HF_CUTOFF_HZ = 4000.0
ROLLOFF = 0.85
NUM_MELS = 80
BAND_EDGES_HZ = (0.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0)
EPS = 1e-10


# ---- validation loss ------------------------------------------------------------------------


@torch.no_grad()
def validation_loss(
    generator,
    clips: ClipSet,
    *,
    seed: int,
    timesteps: Sequence[float],
    chunk: int = 8,
    autocast: torch.autocast | None = None,
) -> float | None:
    """Mean flow-matching loss over clips x timesteps (fixed noise per clip; no dropout)."""
    if len(clips) == 0:
        return None
    device = generator.device
    total, count = 0.0, 0
    for start in range(0, len(clips), chunk):
        part = clips.select(list(range(start, min(start + chunk, len(clips)))))
        clip_f, sync_f, text_f = (x.to(device) for x in part.conditions(generator))
        x1 = normalized_targets(part.latent, part.lengths, generator)
        noise = torch.stack(
            [
                torch.randn(x1.shape[1:], generator=_generator(derived_seed("val", seed, i)))
                for i in range(start, start + len(part))
            ]
        )
        with autocast or nullcontext():
            cond = generator.preprocess_conditions(clip_f, sync_f, text_f)
            for t in timesteps:
                tt = torch.full((len(part),), float(t))
                per_clip = flow_matching_loss(
                    generator, x1, cond, noise, tt, reduction="none", lengths=part.lengths
                )
                total += float(per_clip.float().sum())
                count += len(part)
    return total / count


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- audio metrics ----------------------------------------------------------------------------


def power_spectrogram(wav: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """(F, T) power of a mono waveform, Hann window, centred frames (zero padded)."""
    wav = wav.detach().float().cpu().reshape(-1)
    if wav.numel() < n_fft:
        wav = torch.nn.functional.pad(wav, (0, n_fft - wav.numel()))
    spec = torch.stft(
        wav,
        n_fft,
        hop,
        window=torch.hann_window(n_fft),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    return spec.abs().square()


def spectral_metrics(wav: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """The evaluator node's single-clip metrics: HF energy ratio (> 4 kHz), spectral centroid
    and 85 % rolloff (Hz), spectral flatness of the time-averaged power, and temporal
    variance (std / mean of frame RMS)."""
    power = power_spectrogram(wav)
    freqs = torch.linspace(0, sample_rate / 2, power.shape[0])
    per_bin = power.mean(dim=1).double()
    total = per_bin.sum().clamp_min(EPS)
    hf = float(per_bin[freqs > HF_CUTOFF_HZ].sum() / total)
    centroid = float((per_bin * freqs.double()).sum() / total)
    cumulative = per_bin.cumsum(0) / total
    rolloff = float(freqs[int(torch.searchsorted(cumulative, torch.tensor(ROLLOFF).double()))])
    geo = per_bin.clamp_min(EPS).log().mean().exp()
    flatness = float(geo / per_bin.mean().clamp_min(EPS))
    rms = power.mean(dim=0).sqrt()
    temporal = float(rms.std() / rms.mean().clamp_min(EPS)) if rms.numel() > 1 else 0.0
    return {
        "hf_energy_ratio": hf,
        "spectral_centroid_hz": centroid,
        "spectral_rolloff_hz": rolloff,
        "spectral_flatness": flatness,
        "temporal_variance": temporal,
    }


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float | None:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denom = (a.square().sum() * b.square().sum()).sqrt()
    if a.numel() < 2 or denom <= 0:
        return None
    return float((a * b).sum() / denom)


def reference_metrics(wav: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> dict:
    """Generated vs reference: log-spectral distance (dB), MCD-style mel distance
    (10/ln10 * mean_t sqrt(mean_mel dlogmel^2)) over 80 Slaney mels, and Pearson correlation
    of each band's log energy over time."""
    from selva_core.audio.mel import slaney_mel_filterbank

    n = min(wav.numel(), ref.numel())
    p, r = power_spectrogram(wav[:n]), power_spectrogram(ref[:n])
    db_p, db_r = 10 * p.clamp_min(EPS).log10(), 10 * r.clamp_min(EPS).log10()
    lsd = float((db_p - db_r).square().mean(dim=0).sqrt().mean())
    fb = slaney_mel_filterbank(sample_rate, N_FFT, NUM_MELS, 0.0, sample_rate / 2)
    mel_p, mel_r = (fb @ p).clamp_min(EPS).log(), (fb @ r).clamp_min(EPS).log()
    mcd = float(10 / math.log(10) * (mel_p - mel_r).square().mean(dim=0).sqrt().mean())
    freqs = torch.linspace(0, sample_rate / 2, p.shape[0])
    bands = {}
    edges = [e for e in BAND_EDGES_HZ if e < sample_rate / 2] + [sample_rate / 2]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (freqs >= lo) & (freqs < hi)
        if sel.any():
            env_p = p[sel].sum(0).clamp_min(EPS).log()
            env_r = r[sel].sum(0).clamp_min(EPS).log()
            bands[f"{int(lo)}-{int(hi)}"] = _pearson(env_p, env_r)
    valid = [v for v in bands.values() if v is not None]
    return {
        "lsd_db": lsd,
        "mcd_db": mcd,
        "band_correlation": bands,
        "band_correlation_mean": sum(valid) / len(valid) if valid else None,
    }


def spectrogram_png(path: Path, panels: dict[str, torch.Tensor], sample_rate: int) -> Path:
    """Log-frequency spectrograms (256 bins, -80 dB floor), one row per panel; written to a
    hidden temporary name and renamed when whole."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), squeeze=False)
    lo = 20.0
    log_f = torch.logspace(math.log10(lo), math.log10(sample_rate / 2), 256)
    for ax, (title, wav) in zip(axes[:, 0], panels.items(), strict=True):
        power = power_spectrogram(wav)
        freqs = torch.linspace(0, sample_rate / 2, power.shape[0])
        idx = torch.searchsorted(freqs, log_f).clamp(max=power.shape[0] - 1)
        db = 10 * power[idx].clamp_min(EPS).log10()
        db = (db - db.max()).clamp_min(-80.0)
        seconds = wav.numel() / sample_rate
        ax.imshow(
            db.numpy(),
            origin="lower",
            aspect="auto",
            extent=(0, seconds, 0, 256),
            cmap="magma",
            vmin=-80,
            vmax=0,
        )
        ticks = [t for t in (50, 100, 250, 500, 1000, 2000, 4000, 8000, 16000) if t < log_f[-1]]
        ax.set_yticks([int(torch.searchsorted(log_f, torch.tensor(float(t)))) for t in ticks])
        ax.set_yticklabels([f"{t // 1000}k" if t >= 1000 else str(t) for t in ticks])
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("Hz")
    axes[-1, 0].set_xlabel("s")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path


# ---- previews ---------------------------------------------------------------------------------


class Previewer:
    """Generates preview audio for validation clips with the training generator (rank 0)."""

    def __init__(self, spec, generator, store, device: str, dtype: torch.dtype):
        from selva_core import build
        from selva_core.pipeline import Components, Pipeline, PipelineConfig

        self.spec = spec
        components = Components(
            generator=generator,
            sync_encoder=None,
            clip=None,
            t5=None,
            vae=build.load_vae(spec, store, dtype=dtype, device=device),
            vocoder=build.load_vocoder(spec, store, dtype=dtype, device=device),
            mel=None,
        )
        self.pipe = Pipeline(
            PipelineConfig(variant=spec.name, dtype=dtype, device=device), components=components
        )

    @torch.no_grad()
    def run(
        self,
        clips: ClipSet,
        out_dir: Path,
        *,
        seed: int,
        steps: int,
        cfg: float,
        train_seq,
    ) -> list[dict]:
        from selva_core.pipeline import Features, fit_length
        from selva_core.video.write import write_flac

        gen = self.pipe.generator
        sr = self.spec.sampling_rate
        rows = []
        try:
            for i in range(len(clips)):
                duration = float(clips.durations[i])
                seq = self.spec.sequence(duration)
                clip_f = None
                if clips.clip_f is not None:
                    clip_f = fit_length(clips.clip_f[i], seq.clip_seq_len)
                sync_f = clips.sync_f[i][: int(clips.sync_lengths[i])]
                feats = Features(
                    variant=self.spec.name,
                    prompt=clips.prompts[i],
                    duration=duration,
                    sync_f=fit_length(sync_f, seq.sync_seq_len),
                    text_f=clips.text_f[i],
                    clip_f=clip_f,
                )
                clip_seed = derived_seed("preview", seed, clips.ids[i]) % (1 << 31)
                wav = self.pipe.generate(
                    feats, negative_prompt=None, seed=clip_seed, steps=steps, cfg=cfg
                )[0]
                own = clips.latent[i][: int(clips.lengths[i])][None]
                ref = self.pipe.decode_latents(own.to(self.pipe.config.device), duration)[0]
                stem = file_stem(clips.ids[i])
                write_flac(out_dir / f"{stem}.flac", _loudness(wav), sr)
                write_flac(out_dir / f"{stem}.reference.flac", _loudness(ref), sr)
                spectrogram_png(
                    out_dir / f"{stem}.png",
                    {f"generated: {clips.prompts[i]}": wav, "reference (own latent)": ref},
                    sr,
                )
                rows.append(
                    {
                        "id": clips.ids[i],
                        "prompt": clips.prompts[i],
                        "duration": duration,
                        "seed": clip_seed,
                        **spectral_metrics(wav, sr),
                        **reference_metrics(wav, ref, sr),
                    }
                )
        finally:
            gen.set_sequence(train_seq)
        return rows


def _loudness(wav: torch.Tensor, target_dbfs: float = -27.0) -> torch.Tensor:
    """RMS to -27 dBFS, then peak-limit to 1 (the evaluator node's listening level)."""
    rms = wav.square().mean().sqrt()
    if rms > 0:
        wav = wav * (10 ** (target_dbfs / 20) / rms)
    peak = wav.abs().max()
    return wav / peak if peak > 1 else wav
