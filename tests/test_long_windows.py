"""Long videos without models: window plans, seeds, streaming window decode, joins, seam metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from video_factory import AudioSpec, frame_index, write_video

from selva_core.long import (
    Window,
    continuation_prefix,
    crossfade_join,
    iter_window_clips,
    join_windows,
    latent_quantum,
    plan_windows,
    seam_report,
    seam_spans,
    track_samples,
    video_duration,
    window_seed,
)
from selva_core.seqconfig import config_for_mode
from selva_core.video.decode import DecodeConfig, decode_clip, read_audio

Q16 = latent_quantum(config_for_mode("16k"))
Q44 = latent_quantum(config_for_mode("44k"))
SMALL = DecodeConfig(sync_size=64, clip_size=64)  # frame picking does not depend on the size


# ---- plans --------------------------------------------------------------------------------


@pytest.mark.parametrize("quantum", [None, Q16, Q44])
@pytest.mark.parametrize("duration", [8.01, 15.1, 22.0, 60.0, 61.37, 600.0])
def test_plan_covers_the_video_with_full_windows(duration, quantum):
    ws = plan_windows(duration, 8.0, 1.0, quantum=quantum)
    assert [w.index for w in ws] == list(range(len(ws)))
    assert ws[0].start == 0.0
    assert all(math.isclose(w.duration, 8.0) for w in ws)  # all full: one sequence shape
    slack = quantum or 0.0
    assert duration - 1e-9 <= ws[-1].end <= duration + slack + 1e-9
    for a, b in zip(ws, ws[1:], strict=False):
        assert b.start > a.start and b.start < a.end  # overlapping, in order
        assert a.end - b.start >= 1.0 - 1e-9  # at least the requested overlap
    regular = ws[:-1]
    for a, b in zip(regular, regular[1:], strict=False):
        stride = b.start - a.start
        assert stride <= 7.0 + 1e-9 and (quantum is None or stride > 7.0 - quantum)
    if quantum is not None:  # every start on the latent grid
        assert all(abs(w.start / quantum - round(w.start / quantum)) < 1e-6 for w in ws)
    # the minimal count: one window fewer could not cover the video
    assert (len(ws) - 2) * (ws[1].start - ws[0].start) + 8.0 < duration


def test_plan_counts_and_short_videos():
    assert len(plan_windows(60.0)) == 9  # starts 0, 7, ..., 49, then 52 (shifted back)
    assert plan_windows(60.0)[-1] == Window(8, 52.0, 60.0)
    assert plan_windows(5.0) == [Window(0, 0.0, 5.0)]  # shorter than a window: one, shorter
    assert plan_windows(8.0) == [Window(0, 0.0, 8.0)]
    assert [w.start for w in plan_windows(22.0)] == [0.0, 7.0, 14.0]
    for bad in [
        dict(duration=0.0),
        dict(duration=10.0, overlap=4.5),
        dict(duration=10.0, window=0),
    ]:
        with pytest.raises(ValueError):
            plan_windows(**bad)


def test_window_seeds_are_stable_and_distinct():
    assert window_seed(42, 0) == 42  # a one-window video samples like an ordinary clip
    # fixed values: the seed must not change across runs, machines or Python versions
    assert window_seed(42, 1) == 4001548576824673497
    assert window_seed(7, 1) == 7358981121698886065
    seeds = {window_seed(s, i) for s in range(20) for i in range(1, 50)}
    assert len(seeds) == 20 * 49 and all(0 <= x < 2**63 for x in seeds)


# ---- streaming decode ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    return write_video(
        d / "long.mp4", duration=13.0, fps=25, size=(96, 64), gop=25, audio=AudioSpec()
    )


@pytest.mark.parametrize("rule", ["official", "exact"])
def test_windows_decode_like_decode_clip_from_one_open_file(long_video, rule):
    cfg = DecodeConfig(frame_rule=rule, sync_size=64, clip_size=64)
    duration = video_duration(long_video)
    assert duration == pytest.approx(13.0)
    ws = plan_windows(duration, 4.0, 1.0, quantum=Q16)
    # out of order on purpose: seeking back (to 0 too) must not change anything
    order = ws[1:] + ws[:1] + ws[2:3]
    got = list(iter_window_clips(long_video, order, config=cfg, audio_rate=16000))
    assert [w for w, _ in got] == order
    for w, clip in got:
        ref = decode_clip(long_video, start=w.start, max_duration=w.duration, config=cfg)
        n = ref.num_sync_frames
        assert clip.duration == pytest.approx(w.duration)  # every window full length
        assert torch.equal(clip.sync_frames[:n], ref.sync_frames)
        assert torch.equal(clip.clip_frames[: ref.num_clip_frames], ref.clip_frames)
        assert clip.sync_times[:n] == ref.sync_times
        if n < clip.num_sync_frames:  # the last window: padded with its last frame
            assert clip.padded and torch.equal(
                clip.sync_frames[n:],
                ref.sync_frames[-1:].expand(clip.num_sync_frames - n, -1, -1, -1),
            )
        first = frame_index(clip.sync_frames[0].numpy())
        assert abs(first - w.start * 25) <= 1.01  # the window starts where planned
        audio = read_audio(
            long_video, sample_rate=16000, num_samples=clip.audio.shape[0], start=w.start
        )
        assert torch.equal(clip.audio, audio.samples)  # same audio as a fresh read


# ---- joins -----------------------------------------------------------------------------------


def _tone(freq, n, sr, phase=0.0, amp=0.3):
    t = torch.arange(n, dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t + phase)).float()


def test_joins_have_the_exact_length_and_complementary_fades():
    sr = 16000
    ws = plan_windows(10.3, 4.0, 1.0, quantum=Q16)
    total = track_samples(10.3, sr)
    n = math.ceil(4.0 * sr)
    for mode in ("crossfade", "continue"):
        spans = seam_spans(ws, mode)
        # window k alone -> its gain envelope; the envelopes' squares sum to one everywhere
        gains = []
        for k in range(len(ws)):
            wavs = [torch.ones(n) if j == k else torch.zeros(n) for j in range(len(ws))]
            gains.append(join_windows(wavs, ws, sr, total, mode=mode))
        # equal power for unrelated windows (crossfade), equal gain for coherent ones (continue)
        e = 2 if mode == "crossfade" else 1
        power = sum(g.double() ** e for g in gains)
        assert gains[0].shape == (total,)
        assert torch.allclose(power, torch.ones(total, dtype=torch.float64), atol=1e-6)
        # outside the fade spans exactly one window plays, at gain 1
        inside = torch.zeros(total, dtype=torch.bool)
        for a, b in spans:
            inside[round(a * sr) : round(b * sr)] = True
        owners = torch.stack(gains)[:, ~inside]
        assert torch.equal(owners.max(0).values, torch.ones(owners.shape[1]))
        assert torch.equal((owners > 0).sum(0), torch.ones(owners.shape[1], dtype=torch.long))
    assert [b - a for a, b in seam_spans(ws, "continue")] == pytest.approx([0.1] * (len(ws) - 1))


def test_seam_metric_flags_a_hard_cut_and_passes_a_crossfade():
    sr = 16000
    ws = [Window(0, 0.0, 4.0), Window(1, 3.0, 7.0)]
    n = 4 * sr
    g = torch.Generator().manual_seed(0)
    # two unrelated signals: a low hum with noise, and a bright tone with noise
    a = _tone(220, n, sr) + 0.005 * torch.randn(n, generator=g)
    b = _tone(2500, n, sr, phase=1.0) + 0.005 * torch.randn(n, generator=g)
    total = track_samples(7.0, sr)
    joined = crossfade_join([a, b], ws, sr, total)
    good = seam_report(joined, sr, seam_spans(ws, "crossfade"))
    cut = torch.cat([a[: 3 * sr + 8000], b[8000 : 8000 + total - (3 * sr + 8000)]])
    bad = seam_report(cut, sr, [3.5])
    assert good.clean, good
    assert not bad.clean and bad.worst > 3 * bad.inner_max, bad


def test_continuation_prefix_needs_the_latent_grid():
    lat = torch.arange(250 * 2, dtype=torch.float32).reshape(250, 2)
    ws = plan_windows(20.0, 8.0, 1.0, quantum=Q16)
    prefix = continuation_prefix(lat, ws[0], ws[1], Q16)
    m = round(ws[1].start / Q16)
    assert m == 218 and torch.equal(prefix, lat[m:])  # 32 frames = 1.024 s held
    with pytest.raises(ValueError, match="latent grid"):
        continuation_prefix(lat, Window(0, 0.0, 8.0), Window(1, 7.0, 15.0), Q16)


def test_join_rejects_too_short_windows():
    ws = plan_windows(10.0, 4.0, 1.0)
    wavs = [torch.zeros(4 * 16000) for _ in ws]
    wavs[1] = wavs[1][:1000]
    with pytest.raises(ValueError, match="window 1 has 1000 samples"):
        join_windows(wavs, ws, 16000, 160000)


def test_seam_metric_is_scale_free():
    sr = 16000
    g = torch.Generator().manual_seed(1)
    x = 0.1 * torch.randn(3 * sr, generator=g)
    r1 = seam_report(x, sr, [1.5])
    r2 = seam_report(x * 4, sr, [1.5])
    assert r1.scores == pytest.approx(r2.scores, rel=0.05)  # up to the log floor
    assert np.isfinite(r1.inner_p99) and r1.median_flux > 0
