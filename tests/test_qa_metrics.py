"""QA measurements against signals whose right answer is known."""

import json
import math

import numpy as np
import pytest
import torch

from selva_core.qa import ClipMetrics, QAThresholds, ThresholdsError, clip_metrics, qa_flags
from selva_core.qa.metrics import integrated_loudness, spectral_flatness

SR = 48000


def sine(freq: float, amplitude: float, seconds: float, sr: int = SR, phase: float = 0.0):
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return amplitude * torch.sin(2 * math.pi * freq * t + phase)


@pytest.mark.parametrize("sr", [16000, 44100, 48000])
def test_reference_tone_reads_minus_23_lufs(sr):
    # EBU Tech 3341 case 1: a stereo 997 Hz sine at -23 dBFS per channel reads -23 LUFS; the
    # same energy in one (mono) channel needs the amplitude times sqrt(2).
    stereo = sine(997, 10 ** (-23 / 20), 10.0, sr).repeat(2, 1)
    mono = sine(997, 10 ** (-23 / 20) * math.sqrt(2), 10.0, sr)
    assert integrated_loudness(stereo, sr) == pytest.approx(-23.0, abs=0.1)
    m = clip_metrics(mono, sr)
    assert m.loudness_lufs == pytest.approx(-23.0, abs=0.1)
    assert m.rms_dbfs == pytest.approx(-23.0, abs=0.01)
    assert m.peak_dbfs == pytest.approx(-23.0 + 20 * math.log10(math.sqrt(2)), abs=0.01)
    assert (m.clipped_ratio, m.silence_ratio) == (0.0, 0.0)
    # gain moves loudness one for one, also past the filters' [-1, 1] clamp in torchaudio
    assert integrated_loudness(mono * 10 ** (20 / 20), sr) == pytest.approx(-3.0, abs=0.1)


def test_clipped_sine_counts_flat_tops():
    x = sine(997, 2.0, 2.0).clamp(-1.0, 1.0)  # |2 sin| >= 1 on 2/3 of the period
    m = clip_metrics(x, SR)
    assert m.clipped_ratio == pytest.approx(2 / 3, abs=0.01)
    assert m.peak_dbfs == pytest.approx(0.0, abs=1e-6)
    assert "clipping" in qa_flags(m, QAThresholds())
    clean = clip_metrics(sine(997, 0.5, 2.0), SR)
    assert clean.clipped_ratio == 0.0 and "clipping" not in qa_flags(clean, QAThresholds())


def test_true_peak_sees_inter_sample_overs():
    # a sine at fs/4 sampled 45 degrees off its crests: samples at 0.707, real peak 1.0
    n = torch.arange(16000, dtype=torch.float64)
    x = torch.sin(2 * math.pi * n / 4 + math.pi / 4)
    m = clip_metrics(x, 16000)
    assert m.peak_dbfs == pytest.approx(-3.01, abs=0.01)
    assert m.true_peak_dbtp == pytest.approx(0.0, abs=0.2)


def test_half_silence():
    x = sine(440, 0.5, 4.0)
    x[: 2 * SR] = 0.0
    m = clip_metrics(x, SR)
    assert m.silence_ratio == pytest.approx(0.5, abs=1e-9)
    assert "silence" not in qa_flags(m, QAThresholds())  # exactly half: not more than half
    x[: int(2.5 * SR)] = 0.0
    m = clip_metrics(x, SR)
    assert m.silence_ratio == pytest.approx(0.625, abs=1e-9)
    assert "silence" in qa_flags(m, QAThresholds())
    # -61 dBFS RMS is silence, -59 dBFS is not
    quiet = sine(440, 10 ** (-61 / 20) * math.sqrt(2), 1.0)
    assert clip_metrics(quiet, SR).silence_ratio == 1.0
    assert clip_metrics(quiet * 10 ** (2 / 20), SR).silence_ratio == 0.0


def test_flatness_white_noise_near_one_tone_near_zero():
    g = torch.Generator().manual_seed(0)
    noise = 0.1 * torch.randn(4 * 16000, generator=g, dtype=torch.float64)
    assert spectral_flatness(noise) > 0.95
    assert spectral_flatness(sine(997, 0.5, 4.0, 16000)) < 1e-3
    # a tone over a noise floor 11 dB below it: in between
    mixed = sine(997, 0.5, 4.0, 16000) + noise
    assert 1e-3 < spectral_flatness(mixed) < 0.5


def test_silent_and_short_clips_are_finite():
    m = clip_metrics(np.zeros(16000, np.float32), 16000)
    assert m.peak_dbfs == m.true_peak_dbtp == m.rms_dbfs == -120.0
    assert m.loudness_lufs == -70.0 and m.silence_ratio == 1.0 and m.spectral_flatness is None
    assert qa_flags(m, QAThresholds()) == ["silence", "loudness"]
    short = clip_metrics(sine(997, 0.5, 0.2), SR)
    assert short.loudness_lufs is None and "loudness" not in qa_flags(short, QAThresholds())
    with pytest.raises(ValueError, match="NaN"):
        clip_metrics(torch.tensor([0.0, float("nan")]), SR)


def test_desync_slot_filled_only_with_a_scorer():
    x = sine(997, 0.5, 1.0, 16000)
    frames = torch.zeros(25, 3, 8, 8, dtype=torch.uint8)
    assert clip_metrics(x, 16000).desync_s is None
    seen = {}

    def scorer(audio, sr, sync_frames):
        seen.update(shape=tuple(audio.shape), sr=sr, frames=tuple(sync_frames.shape))
        return -0.6

    m = clip_metrics(x, 16000, desync=scorer, sync_frames=frames)
    assert m.desync_s == -0.6 and seen == {"shape": (16000,), "sr": 16000, "frames": (25, 3, 8, 8)}
    assert "desync" in qa_flags(m, QAThresholds())
    assert "desync" not in qa_flags(m, QAThresholds(max_abs_desync_s=0.7))
    unscored = clip_metrics(x, 16000, desync=lambda a, sr, f: None, sync_frames=frames)
    assert unscored.desync_s is None and "desync" not in qa_flags(unscored, QAThresholds())
    with pytest.raises(ValueError, match="sync_frames"):
        clip_metrics(x, 16000, desync=scorer)


def test_flags_order_and_loudness_window():
    base = ClipMetrics(-23.0, -3.0, -2.5, -20.0, 0.0, 0.0, 0.2)
    t = QAThresholds()
    assert qa_flags(base, t) == []
    assert qa_flags({**base.as_dict(), "loudness_lufs": -26.5}, t) == ["loudness"]
    assert qa_flags({**base.as_dict(), "loudness_lufs": -19.5}, t) == ["loudness"]
    assert qa_flags({**base.as_dict(), "loudness_lufs": -20.5}, t) == []
    assert qa_flags({**base.as_dict(), "loudness_lufs": -16.0}, t.updated(target_lufs=-16)) == []
    worst = {**base.as_dict(), "desync_s": 1.0, "silence_ratio": 0.9, "clipped_ratio": 0.5}
    worst.update(loudness_lufs=-5.0, true_peak_dbtp=1.0, spectral_flatness=0.9)
    strict = t.updated(max_true_peak_dbtp=-1.0, max_spectral_flatness=0.5)
    assert qa_flags(worst, strict) == [
        "desync",
        "silence",
        "clipping",
        "loudness",
        "true_peak",
        "noise",
    ]
    off = QAThresholds(None, None, None, None)
    assert qa_flags(worst, off) == []


@pytest.mark.parametrize("ext", ["json", "yaml", "toml"])
def test_thresholds_files(tmp_path, ext):
    values = {"max_abs_desync_s": 0.25, "target_lufs": -16, "max_clipped_ratio": 0.01}
    path = tmp_path / f"qa.{ext}"
    if ext == "json":
        path.write_text(json.dumps(values))
    elif ext == "yaml":
        path.write_text("qa:\n" + "".join(f"  {k}: {v}\n" for k, v in values.items()))
    else:
        path.write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
    t = QAThresholds.from_file(path)
    assert (t.max_abs_desync_s, t.target_lufs, t.max_clipped_ratio) == (0.25, -16.0, 0.01)
    assert t.max_silence_ratio == 0.5  # default kept


def test_bad_thresholds_name_the_file_and_key(tmp_path):
    bad = tmp_path / "qa.json"
    bad.write_text('{"max_desync": 1}')
    with pytest.raises(ThresholdsError, match=r"qa\.json.*max_desync"):
        QAThresholds.from_file(bad)
    bad.write_text('{"target_lufs": "loud"}')
    with pytest.raises(ThresholdsError, match="target_lufs must be a number"):
        QAThresholds.from_file(bad)
    bad.write_text("{not json")
    with pytest.raises(ThresholdsError, match="not valid"):
        QAThresholds.from_file(bad)
    with pytest.raises(ThresholdsError, match="cannot read"):
        QAThresholds.from_file(tmp_path / "missing.yaml")
    other = tmp_path / "qa.ini"
    other.write_text("x=1")
    with pytest.raises(ThresholdsError, match=r"\.toml"):
        QAThresholds.from_file(other)
