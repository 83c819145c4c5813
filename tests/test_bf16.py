"""bf16 as a first-class CPU path: every tiny-variant module runs end to end in bf16 (weights and
inputs cast, as the official demo's `.to(device, torch.bfloat16)`), stays finite and close to
fp32, while the numerically sensitive parts stay in fp32: the timestep sinusoid, RoPE tables,
latent statistics, the sampler's Euler state, mel spectrograms and loudness.

Tolerances are relative L2 against the fp32 pipeline on the same inputs; measured on an AVX-512
BF16 CPU they are about 1e-2 (features, latents) and 3e-2 (waveforms), so the bounds below
leave 3-4x headroom while still catching a part that silently ran in the wrong dtype or broke.
"""

from __future__ import annotations

import math

import pytest
import torch
from video_factory import AudioSpec, write_video

from selva_core.build import load_generator
from selva_core.model.desync import desync_score, load_desync_model
from selva_core.pipeline import Pipeline, PipelineConfig
from selva_core.qa.metrics import clip_metrics, integrated_loudness
from selva_core.sampling import SamplerConfig, generate_latents

STEPS = 4
FEATURE_TOL = 0.05  # sync_f / text_f / VAE latents
WAVE_TOL = 0.1  # waveforms after sampling, VAE decode and vocoder
LOUDNESS_TOL_LU = 0.5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    d = tmp_path_factory.mktemp("bf16")
    return write_video(d / "av.mp4", duration=4.0, fps=25, size=(128, 96), audio=AudioSpec())


@pytest.fixture(scope="module", params=["tiny", "tiny_44k", "mmaudio_tiny"])
def runs(request, video):
    """The same clip through the fp32 and the bf16 pipeline of one variant."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = Pipeline(PipelineConfig(variant=request.param, dtype=dtype, with_audio_encoder=True))
        feats = pipe.extract_features(video, "a dog barking", with_audio_latents=True)
        wav = pipe.generate(feats, steps=STEPS, seed=7)
        out[dtype] = (pipe, feats, wav)
    return out


def test_bf16_pipeline_runs_end_to_end_and_tracks_fp32(runs):
    pipe32, f32, w32 = runs[torch.float32]
    pipe16, f16, w16 = runs[torch.bfloat16]
    # every module really is in bf16 (a silent fallback to fp32 would also "track" fp32)
    assert pipe16.generator.dtype == torch.bfloat16
    assert pipe16.sync_encoder.parameters().__next__().dtype == torch.bfloat16
    assert next(pipe16.vocoder.parameters()).dtype == torch.bfloat16
    assert next(pipe16.vae.parameters()).dtype == torch.bfloat16
    assert pipe16.clip.dtype == torch.bfloat16
    # what leaves the pipeline is float32, finite, of the same shape
    for a, b in ((f16.sync_f, f32.sync_f), (f16.text_f, f32.text_f), (w16, w32)):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert torch.isfinite(a).all()
    assert _rel(f16.sync_f, f32.sync_f) < FEATURE_TOL
    assert _rel(f16.text_f, f32.text_f) < FEATURE_TOL
    assert _rel(f16.latent.mean, f32.latent.mean) < FEATURE_TOL
    assert _rel(w16, w32) < WAVE_TOL
    # and it is not fp32 by another name
    assert not torch.equal(w16, w32)


def test_bf16_loudness_is_measured_in_full_precision(runs):
    _, _, w32 = runs[torch.float32]
    _, _, w16 = runs[torch.bfloat16]
    rate = runs[torch.float32][0].sampling_rate
    # loudness of a bf16 tensor is computed on its values in float64, not in bf16
    low = w16[0].bfloat16()
    assert integrated_loudness(low, rate) == integrated_loudness(low.double(), rate)
    m16, m32 = clip_metrics(w16[0], rate), clip_metrics(w32[0], rate)
    assert math.isfinite(m16.loudness_lufs)
    assert abs(m16.loudness_lufs - m32.loudness_lufs) < LOUDNESS_TOL_LU


def test_timestep_embedding_and_sampler_state_stay_fp32():
    low = load_generator("tiny", dtype=torch.bfloat16)
    ref = load_generator("tiny")
    # the sinusoid is formed in fp32 from an fp32 table, bit for bit the fp32 model's
    assert low.t_embed.freqs.dtype == torch.float32
    t = torch.tensor([0.0, 0.37, 1.0])
    assert low.t_embed.sinusoid(t).dtype == torch.float32
    assert torch.equal(low.t_embed.sinusoid(t), ref.t_embed.sinusoid(t))
    assert low.t_embed(t).dtype == torch.bfloat16  # then the MLP runs in the model dtype
    # RoPE tables and latent statistics keep their fp32 values through the cast, not
    # bf16-rounded ones converted back
    for name in ("latent_rot", "clip_rot", "latent_mean", "latent_std"):
        assert getattr(low, name).dtype == torch.float32
        assert torch.equal(getattr(low, name), getattr(ref, name)), name

    # The network sees the Euler state and t as they are handed to it: record them.
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    predict = low.predict_flow

    def recording(latent, t, conditions, **kw):
        seen.append((latent.dtype, t.dtype))
        return predict(latent, t, conditions, **kw)

    low.predict_flow = recording
    g = torch.Generator().manual_seed(0)
    c = low.config
    conds = (
        torch.randn(1, low.clip_seq_len, c.clip_dim, generator=g),
        torch.randn(1, low.sync_seq_len, c.sync_dim, generator=g),
        torch.randn(1, c.text_seq_len, c.text_dim, generator=g),
    )
    out = generate_latents(low, *conds, [1], config=SamplerConfig(num_steps=3))
    assert seen == [(torch.float32, torch.float32)] * 3
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_mel_stays_fp32_inside_a_bf16_pipeline(runs):
    pipe16 = runs[torch.bfloat16][0]
    mel = pipe16.mel
    assert mel.mel_basis.dtype == torch.float32
    wav = torch.sin(torch.arange(16000.0) / 7).unsqueeze(0) * 0.5
    # the bf16 mel is the fp32 one rounded once at the end
    assert torch.equal(mel(wav.bfloat16()), mel(wav.bfloat16().float()).bfloat16())


def test_desync_bf16_scores_like_fp32():
    fp32 = load_desync_model("tiny")
    bf16 = load_desync_model("tiny", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.mel.filterbank.dtype == torch.float32
    gen = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (125, 3, 224, 224), generator=gen).to(torch.uint8)
    t = torch.arange(16000 * 5) / 16000
    wav = 0.5 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(t.shape, generator=gen)
    spec = bf16.audio_spectrogram(wav[None])
    assert spec.dtype == torch.float32
    assert torch.equal(spec, fp32.audio_spectrogram(wav[None]))
    s16 = desync_score(bf16, frames, wav)
    s32 = desync_score(fp32, frames, wav)
    assert math.isfinite(s16) and s16 >= 0
    # scores sit on a 0.2 s grid: bf16 may move a window to a neighbouring class at most
    assert abs(s16 - s32) <= 0.2 + 1e-6
