"""One clip end to end on the tiny variants: real videos made here, real decoding, real models
(random weights, same code path as the published ones)."""

import math
import os
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from video_factory import AudioSpec, write_text_file, write_video

from selva_core.conditioning import PromptError
from selva_core.pipeline import Pipeline, PipelineConfig
from selva_core.video.errors import NotAVideoError, NoVideoStreamError, VideoError

STEPS = 4


@pytest.fixture(scope="module")
def pipes():
    return {
        v: Pipeline(PipelineConfig(variant=v, with_audio_encoder=True))
        for v in ("tiny", "mmaudio_tiny", "tiny_44k")
    }


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {
        "av": write_video(
            d / "with_audio.mp4", duration=4.0, fps=25, size=(128, 96), audio=AudioSpec()
        ),
        "silent": write_video(d / "silent.mp4", duration=2.4, fps=30, size=(96, 64)),
        "long": write_video(d / "long.mp4", duration=10.0, fps=24, size=(64, 48)),
        "blip": write_video(d / "blip.mp4", num_frames=5, fps=25, size=(64, 48)),
    }


@pytest.mark.parametrize("variant", ["tiny", "mmaudio_tiny", "tiny_44k"])
def test_features_have_the_lengths_of_the_clip_duration(pipes, videos, variant):
    pipe = pipes[variant]
    f = pipe.extract_features(videos["av"], "a dog barking", with_audio_latents=True)
    seq = pipe.sequence(f.duration)
    assert 3.9 <= f.duration <= 4.0  # the official frame rule can end one frame early
    assert f.sync_f.shape == (seq.sync_seq_len, 64)
    assert f.text_f.shape == (77, 64)
    if variant == "mmaudio_tiny":
        assert f.clip_f.shape == (seq.clip_seq_len, 64)
    else:
        assert f.clip_f is None  # SelVA uses the learned empty clip feature
    assert f.has_audio and f.latent.mean.shape == (seq.latent_seq_len, pipe.spec.latent_dim)
    assert torch.isfinite(f.sync_f).all() and f.sync_f.std() > 1e-3


def test_selva_sync_features_follow_the_prompt_and_mmaudio_ones_do_not(pipes, videos):
    a = pipes["tiny"].extract_features(videos["av"], "a dog barking")
    b = pipes["tiny"].extract_features(videos["av"], "rain on a tin roof")
    assert (a.sync_f - b.sync_f).abs().max() > 1e-3
    m1 = pipes["mmaudio_tiny"].extract_features(videos["av"], "a dog barking")
    m2 = pipes["mmaudio_tiny"].extract_features(videos["av"], "rain on a tin roof")
    assert torch.equal(m1.sync_f, m2.sync_f)
    assert not torch.equal(m1.text_f, m2.text_f)


@pytest.mark.parametrize("variant", ["tiny", "tiny_44k"])
def test_generate_gives_the_clip_duration_and_depends_only_on_seed(pipes, videos, variant):
    pipe = pipes[variant]
    f = pipe.extract_features(videos["av"], "a dog barking")
    a = pipe.generate(f, seed=3, steps=STEPS)
    b = pipe.generate(f, seed=3, steps=STEPS)
    c = pipe.generate(f, seed=4, steps=STEPS)
    assert a.shape == (1, math.ceil(f.duration * pipe.sampling_rate))
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3
    assert a.abs().max() <= 1.0 and a.std() > 1e-3


def test_batched_generation_equals_one_by_one(pipes, videos):
    pipe = pipes["tiny"]
    f1 = pipe.extract_features(videos["av"], "a dog barking")
    f2 = pipe.extract_features(videos["av"], "footsteps on gravel")
    both = pipe.generate([f1, f2], seed=[1, 2], negative_prompt=["wind", None], steps=STEPS)
    one = pipe.generate(f1, seed=1, negative_prompt="wind", steps=STEPS)[0]
    two = pipe.generate(f2, seed=2, negative_prompt=None, steps=STEPS)[0]
    for got, ref in ((both[0], one), (both[1], two)):
        assert ((got - ref).norm() / ref.norm()) < 1e-4


def test_cpu_decodes_each_clip_of_a_batch_alone(pipes):
    """On CPUs the VAE decoder and vocoder run clip by clip (a batched vocoder doubled the
    time per clip at small_16k), so a clip's waveform is bit for bit its own decode."""
    pipe = pipes["tiny"]
    seq = pipe.sequence(2.0)
    latents = torch.randn(3, seq.latent_seq_len, 20, generator=torch.Generator().manual_seed(0))
    batch = pipe.decode_latents(latents, 2.0)
    for i in range(3):
        assert torch.equal(batch[i], pipe.decode_latents(latents[i : i + 1], 2.0)[0])


def test_negative_prompt_changes_the_unconditional_branch(pipes, videos):
    pipe = pipes["tiny"]
    f = pipe.extract_features(videos["av"], "a dog barking")
    stored = pipe.generate(f, seed=1, negative_prompt=None, steps=STEPS)
    empty = pipe.generate(f, seed=1, negative_prompt="", steps=STEPS)
    other = pipe.generate(f, seed=1, negative_prompt="music", steps=STEPS)
    assert (stored - empty).abs().max() > 1e-4 and (empty - other).abs().max() > 1e-4


def test_clips_of_different_durations_cannot_share_a_batch(pipes, videos):
    pipe = pipes["tiny"]
    f1 = pipe.extract_features(videos["av"], "a")
    f2 = pipe.extract_features(videos["silent"], "b")
    with pytest.raises(ValueError, match="share a duration"):
        pipe.generate([f1, f2], steps=1)


def test_start_and_max_duration_are_honoured(pipes, videos):
    pipe = pipes["tiny"]
    f = pipe.extract_features(videos["long"], "a", start=3.0, max_duration=5.0)
    assert f.duration == pytest.approx(5.0, abs=0.05) and f.start == 3.0
    assert f.sync_f.shape[0] == pipe.sequence(f.duration).sync_seq_len
    full = pipe.extract_features(videos["long"], "a")
    assert full.duration == pytest.approx(8.0, abs=0.05)


def test_clip_shorter_than_one_sync_window_is_padded(pipes, videos):
    pipe = pipes["tiny"]
    f = pipe.extract_features(videos["blip"], "a")  # 5 frames at 25 fps: 0.2 s
    assert f.info["padded"] and f.duration == pytest.approx(0.2)
    assert f.sync_f.shape[0] == 8  # sampled at one window (0.64 s) ...
    assert pipe.generate(f, steps=1).shape[1] == round(0.2 * 16000)  # ... and trimmed


def test_no_audio_track_is_a_typed_outcome(pipes, videos):
    f = pipes["tiny"].extract_features(videos["silent"], "a", with_audio_latents=True)
    assert not f.has_audio and f.latent is None


@pytest.mark.parametrize("variant", ["tiny", "tiny_44k"])
def test_encode_audio_gives_exactly_the_latent_length(pipes, variant):
    """Audio of exactly duration*rate samples used to come out one latent frame off."""
    pipe = pipes[variant]
    for duration in (8.0, 5.0, 2.5):
        seq = pipe.sequence(duration)
        wav = torch.sin(torch.arange(int(duration * pipe.sampling_rate)) * 0.05) * 0.3
        post = pipe.encode_audio(wav)
        assert post.mean.shape == (seq.latent_seq_len, pipe.spec.latent_dim)
        assert post.std.shape == post.mean.shape and (post.std > 0).all()
        g = torch.Generator().manual_seed(0)
        assert torch.equal(post.sample(g), post.sample(torch.Generator().manual_seed(0)))


def test_prompt_rules(pipes, videos):
    with pytest.raises(PromptError, match="empty"):
        pipes["tiny"].extract_features(videos["av"], "   ")
    pipes["mmaudio_tiny"].extract_features(videos["av"], "")  # allowed: MMAudio is video-only
    f = pipes["tiny"].extract_features(videos["av"], "café — 狗叫")
    assert f.prompt == "café — 狗叫"
    long = pipes["tiny"].extract_features(videos["av"], " ".join(["barking dog"] * 60))
    assert long.info["tokens_dropped"]["clip"] > 0


def test_bad_files_raise_typed_errors_naming_the_file(pipes, tmp_path):
    pipe = pipes["tiny"]
    text = write_text_file(tmp_path / "notes.mp4")
    with pytest.raises(NotAVideoError, match="notes.mp4"):
        pipe.extract_features(text, "a")
    audio_only = tmp_path / "song.m4a"
    with av.open(str(audio_only), "w") as out:
        s = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16000), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    with pytest.raises(NoVideoStreamError, match="song.m4a"):
        pipe.extract_features(audio_only, "a")
    with pytest.raises(VideoError, match="missing.mp4"):
        pipe.extract_features(tmp_path / "missing.mp4", "a")


def _cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "selva_ray.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_generate_one_cli_writes_flac_and_dubbed_video(videos, tmp_path):
    out = _cli(
        "generate-one",
        videos["av"],
        "--prompt",
        "a dog barking",
        "--variant",
        "tiny",
        "--steps",
        "3",
        "--mux",
        "--output-dir",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    flac, dubbed = tmp_path / "out" / "with_audio.flac", tmp_path / "out" / "with_audio.dubbed.mp4"
    with av.open(str(flac)) as c:
        a = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(a))
        assert a.rate == 16000 and abs(samples / 16000 - 4.0) < 0.1
    with av.open(str(videos["av"])) as src, av.open(str(dubbed)) as dst:
        sv, dv = src.streams.video[0], dst.streams.video[0]
        assert dv.codec_context.name == sv.codec_context.name == "h264"
        # stream copy: the packets are byte-identical, not re-encoded
        src_packets = [bytes(p) for p in src.demux(sv) if p.size]
        dst_packets = [bytes(p) for p in dst.demux(dv) if p.size]
        assert dst_packets == src_packets[: len(dst_packets)] and len(dst_packets) >= 98
        da = dst.streams.audio[0]
        assert da.rate == 16000 and abs(float(da.duration * da.time_base) - 4.0) < 0.1
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_generate_one_cli_default_output_dir_is_the_current_directory(videos, tmp_path):
    out = _cli(
        "generate-one",
        videos["silent"],
        "--prompt",
        "a",
        "--variant",
        "tiny",
        "--steps",
        "1",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "silent.flac").is_file()


def test_generate_one_cli_reports_bad_input(tmp_path):
    bad = write_text_file(tmp_path / "clip.mp4")
    out = _cli("generate-one", bad, "--prompt", "a", "--variant", "tiny", cwd=tmp_path)
    assert out.returncode == 2 and "clip.mp4" in out.stderr
    assert "selva_core.pipeline: loaded" not in out.stderr  # said before any model loads
    out = _cli("generate-one", bad, "--prompt", "a", "--variant", "huge_48k", cwd=tmp_path)
    assert out.returncode == 2 and "unknown variant" in out.stderr


# ---- track duration: exactly the clip's duration (issue 24) -----------------------------------

NTSC, FILM = Fraction(30000, 1001), Fraction(24000, 1001)
VFR_TIMES = [0.0, 0.04, 0.1, 0.13, 0.3, 0.31, 0.5, 0.7, 0.74, 0.9]


def video_end(path) -> float:
    """Where the container says the video ends: its last frame's pts plus its duration."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        ends = [(p.pts + p.duration) * s.time_base for p in c.demux(s) if p.pts is not None]
    return float(max(ends))


@pytest.fixture(scope="module")
def odd_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd")
    small = {"size": (64, 48)}
    return {
        "one frame": write_video(d / "one.mp4", num_frames=1, fps=25, **small),
        "0.2 s": write_video(d / "fifth.mp4", duration=0.2, fps=25, **small),
        "1.52 s": write_video(d / "n152.mp4", duration=1.52, fps=25, **small),
        "29.97 fps": write_video(d / "ntsc.mp4", num_frames=45, fps=NTSC, **small),
        "23.976 fps": write_video(d / "film.mp4", num_frames=37, fps=FILM, **small),
        "vfr mp4": write_video(d / "vfr.mp4", frame_times=VFR_TIMES, **small),
        "vfr mkv": write_video(d / "vfr.mkv", frame_times=VFR_TIMES, **small),
    }


@pytest.mark.parametrize(
    ("name", "seconds"),
    [
        ("one frame", 0.04),
        ("0.2 s", 0.2),
        ("1.52 s", 1.52),  # the official frame rule covers 1.48 s
        ("29.97 fps", 45 / NTSC),
        ("23.976 fps", 37 / FILM),
        ("vfr mp4", 0.94),  # last frame at 0.9 s; the mp4 header says 0.84 s (B-frames)
        ("vfr mkv", 0.94),  # no stream duration in the header
    ],
)
def test_track_lasts_exactly_the_clip_duration(pipes, odd_clips, name, seconds):
    pipe = pipes["tiny"]
    path = odd_clips[name]
    assert video_end(path) == pytest.approx(float(seconds), abs=1e-6)
    f = pipe.extract_features(path, "a door slams")
    assert f.duration == pytest.approx(float(seconds), abs=1e-6)
    seq = pipe.sequence(f.duration)  # the model samples one sync window at least
    assert seq.duration == max(f.duration, 0.64) and f.sync_f.shape[0] == seq.sync_seq_len
    wav = pipe.generate(f, steps=1)
    assert wav.shape == (1, round(float(seconds) * pipe.sampling_rate))
    assert wav.abs().sum() > 0 and wav[0, -32:].abs().max() > 0  # sampled to the very end


def test_track_of_a_window_is_capped_by_the_video_end(pipes, odd_clips):
    pipe = pipes["tiny"]
    path = odd_clips["1.52 s"]
    inside = pipe.extract_features(path, "a", start=0.5, max_duration=0.3)
    assert inside.duration == pytest.approx(0.3)  # the asked duration ...
    assert pipe.generate(inside, steps=1).shape[1] == round(0.3 * 16000)
    tail = pipe.extract_features(path, "a", start=1.0, max_duration=4.0)
    assert tail.duration == pytest.approx(0.52)  # ... capped at the video's end
    assert pipe.generate(tail, steps=1).shape[1] == round(0.52 * 16000)


@pytest.mark.parametrize("name", ["0.2 s", "1.52 s", "29.97 fps"])
def test_generate_one_writes_a_track_of_exactly_the_clip_duration(odd_clips, tmp_path, name):
    path = odd_clips[name]
    out = _cli(
        "generate-one", path, "--prompt", "a door slams", "--variant", "tiny", "--steps", "1",
        "--output-dir", tmp_path, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    with av.open(str(tmp_path / f"{path.stem}.flac")) as c:
        samples = sum(f.samples for f in c.decode(c.streams.audio[0]))
    assert samples == round(video_end(path) * 16000)
    assert f"({video_end(path):.2f} s at 16000 Hz)" in out.stdout
