"""Long videos through the tiny pipeline: windows -> features -> continue / crossfade -> one track.

Short windows (1.92 s, overlap 0.48 s, both on the 16k latent grid) keep this fast; the code
path is the one 8 s windows take.
"""

from __future__ import annotations

import math

import pytest
import torch
from model_support import tiny_generator
from video_factory import write_video

from selva_core.long import (
    continuation_prefix,
    generate_long,
    join_windows,
    pipe_quantum,
    plan_windows,
    sample_windows,
    seam_report,
    seam_spans,
    track_samples,
    video_duration,
    window_features,
    window_seed,
)
from selva_core.pipeline import Pipeline, PipelineConfig
from selva_core.sampling import SamplerConfig, initial_noise, known_tensors, sample_latents

STEPS = 4
WINDOW, OVERLAP = 1.92, 0.48


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(PipelineConfig(variant="tiny"))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("long") / "v.mp4", duration=4.8, size=(96, 64))


@pytest.fixture(scope="module")
def tracks(pipe, video):
    """Both join modes on one video: continue end to end, crossfade from the same features."""
    cont = generate_long(
        pipe, video, "a dog barking", seed=3, window=WINDOW, overlap=OVERLAP, steps=STEPS
    )
    feats = list(window_features(pipe, video, "a dog barking", cont.windows))
    lat = sample_windows(pipe, feats, cont.windows, seed=3, mode="crossfade", steps=STEPS)
    wavs = [
        pipe.decode_latents(x[None], w.duration)[0] for x, w in zip(lat, cont.windows, strict=True)
    ]
    sr = pipe.sampling_rate
    total = track_samples(cont.duration, sr)
    xfade = join_windows(wavs, cont.windows, sr, total, mode="crossfade")
    return {"continue": cont, "crossfade": (xfade, lat, feats)}


def test_one_track_of_exactly_the_video_duration(pipe, video, tracks):
    cont = tracks["continue"]
    xfade, _, feats = tracks["crossfade"]
    assert video_duration(video) == pytest.approx(4.8)
    assert cont.windows == plan_windows(4.8, WINDOW, OVERLAP, quantum=pipe_quantum(pipe))
    assert len(cont.windows) == 3
    assert cont.waveform.shape == xfade.shape == (round(4.8 * 16000),)
    assert cont.seeds == [window_seed(3, k) for k in range(3)]
    assert [f.duration for f in feats] == pytest.approx([WINDOW] * 3)
    assert [f.info["window"][0] for f in feats] == [0, 1, 2]
    assert all(t["features_s"] >= 0 and t["sample_s"] > 0 for t in cont.timings)
    for x in (cont.waveform, xfade):
        assert torch.isfinite(x).all() and x.abs().max() <= 1.0 and x.std() > 1e-3


def test_continue_reproduces_the_previous_window_over_the_held_part(pipe, tracks):
    cont = tracks["continue"]
    _, xlat, _ = tracks["crossfade"]
    q = pipe_quantum(pipe)
    assert torch.equal(cont.latents[0], xlat[0])  # window 0 is free in both modes
    for k in range(1, 3):
        prev, cur = cont.windows[k - 1], cont.windows[k]
        held = continuation_prefix(cont.latents[k - 1], prev, cur, q)
        assert held.shape[0] == 15  # 0.48 s / 32 ms
        scale = held.abs().max()
        # up to the float rounding of normalize / unnormalize
        assert (cont.latents[k][:15] - held).abs().max() <= 1e-5 * scale
        assert (xlat[k][:15] - held).abs().max() > 0.1 * scale  # crossfade does not hold
        assert (cont.latents[k][15:] - xlat[k][15:]).abs().max() > 1e-3  # and it steers the rest


def test_joined_tracks_add_no_click(pipe, tracks):
    cont = tracks["continue"]
    xfade, _, _ = tracks["crossfade"]
    sr = pipe.sampling_rate
    for name, wav, spans in (
        ("continue", cont.waveform, cont.seams),
        ("crossfade", xfade, seam_spans(cont.windows, "crossfade")),
    ):
        report = seam_report(wav, sr, spans)
        print(name, report.as_dict())
        assert report.clean, (name, report)


def test_sampler_holds_known_frames_exactly_and_defaults_bit_for_bit():
    gen = tiny_generator(duration=2.0)
    g = torch.Generator().manual_seed(0)
    n, c = gen.latent_seq_len, gen.latent_dim
    b = 2
    clip_f = torch.randn(b, gen.clip_seq_len, gen.config.clip_dim, generator=g)
    sync_f = torch.randn(b, gen.sync_seq_len, gen.config.sync_dim, generator=g)
    text_f = torch.randn(b, gen.config.text_seq_len, gen.config.text_dim, generator=g)
    cond = gen.preprocess_conditions(clip_f, sync_f, text_f)
    uncond = gen.empty_conditions(b)
    x0 = initial_noise([1, 2], n, c)
    cfg = SamplerConfig(num_steps=5, cfg_strength=4.5)
    plain = sample_latents(gen, cond, uncond, x0, cfg)
    again = sample_latents(gen, cond, uncond, x0, cfg, known=None, known_mask=None)
    assert torch.equal(plain, again)
    prefix = [torch.randn(7, c, generator=g), None]  # clip 0 holds 7 frames, clip 1 none
    known, mask = known_tensors(gen, prefix, x0.shape)
    held = sample_latents(gen, cond, uncond, x0, cfg, known=known, known_mask=mask)
    assert torch.equal(held[0, :7], known[0, :7])  # exactly, at t = 1
    assert (held[0, 7:] - plain[0, 7:]).abs().max() > 1e-3
    # clip 1 holds nothing: same as without inpainting (batch rows are independent)
    assert torch.allclose(held[1], plain[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="known latent 0"):
        known_tensors(gen, [torch.zeros(n + 1, c), None], x0.shape)
    assert math.isclose(float(mask.sum()), 7)
