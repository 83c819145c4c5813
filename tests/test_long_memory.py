"""Decoding a long video window by window keeps memory bounded: a 10-minute 720p file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from fractions import Fraction

import av
import numpy as np
import pytest

MINUTES = 10
FPS = 2  # low frame rate keeps writing and decoding fast; the frame size is the real 720p
WIDTH, HEIGHT = 1280, 720

PROBE = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from selva_core.long import iter_window_clips, plan_windows, video_duration
from selva_core.video.decode import DecodeConfig

path = sys.argv[1]
cfg = DecodeConfig()  # keeps CLIP frames too: the larger, MMAudio-family window
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
windows = plan_windows(video_duration(path, cfg))
count = frames = 0
marks = {}
for w, clip in iter_window_clips(path, windows, config=cfg):
    count += 1
    frames += clip.num_sync_frames
    if count in (4, 20, 43):
        marks[count] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    window_bytes = clip.sync_frames.numel() + clip.clip_frames.numel()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"windows": count, "sync_frames": frames, "rss_before": before,
                  "rss_after_windows": marks, "rss_peak": peak, "window_bytes": window_bytes,
                  "seconds": time.perf_counter() - t0}))
"""


def write_long_720p(path) -> None:
    """A bright bar sliding over a dark frame, H.264 ultrafast, a keyframe every 2 s."""
    yuv = np.full((HEIGHT * 3 // 2, WIDTH), 128, np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = 2 * FPS
        stream.codec_context.options = {"preset": "ultrafast", "keyint": str(2 * FPS)}
        for i in range(MINUTES * 60 * FPS):
            yuv[:HEIGHT] = 30
            x = (i * 37) % (WIDTH - 96)
            yuv[:HEIGHT, x : x + 96] = 220
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.fixture(scope="module")
def long_720p(tmp_path_factory):
    path = tmp_path_factory.mktemp("long720") / "ten_minutes.mp4"
    t0 = time.perf_counter()
    write_long_720p(path)
    print(f"wrote {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
    return path


def test_window_by_window_decode_of_ten_minutes_at_720p_stays_bounded(long_720p):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(long_720p)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    print(r)
    assert r["windows"] == 86  # starts every 7 s, the last shifted back to end at 600 s
    assert r["sync_frames"] == 86 * 200
    grown = r["rss_peak"] - r["rss_before"]
    all_sync = r["sync_frames"] * 3 * 224 * 224  # 2.6 GB of uint8 sync frames alone
    full_res = MINUTES * 60 * FPS * WIDTH * HEIGHT * 3  # every decoded RGB frame: 3.3 GB
    # one window of resized frames (~58 MB) plus decoder state; nothing per window is kept
    assert grown < 400 * 2**20, r
    # and it does not grow with the length: windows 21-86 add less than one window's frames
    # (keeping even a small part of each window would add up over 66 windows)
    assert r["rss_peak"] - r["rss_after_windows"]["20"] < r["window_bytes"], r
    assert grown < all_sync / 6 and grown < full_res / 8
