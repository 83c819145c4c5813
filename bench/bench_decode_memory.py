"""Peak memory of `decode_clip` on a long high-resolution video.

Writes a synthetic H.264 video (default 60 s, 1920x1080, 25 fps; a flat background with a moving
block and a frame counter, which x264 encodes quickly), then, in a fresh child process, decodes
8 s from its middle with `selva_core.video.decode.decode_clip` and reports the child's peak RSS
growth (VmHWM after decoding minus VmRSS before, with the high-water mark reset first; the child
first decodes a tiny 64x48 video so that lazy imports are not counted) against the size the
video's frames would take as full-resolution RGB arrays.

    python bench/bench_decode_memory.py [--duration 60] [--width 1920] [--height 1080]
                                        [--fps 25] [--start 26] [--window 8] [--keep PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_long_video(path: Path, *, duration: float, width: int, height: int, fps: int) -> int:
    import av
    import numpy as np

    n = int(round(duration * fps))
    y = np.full((height, width), 90, np.uint8)
    uv = np.full((height // 2, width), 128, np.uint8)  # U then V planes, each (h/2, w/2)
    block = max(height // 8, 16) // 2 * 2
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "28"}
        for i in range(n):
            luma = y.copy()
            x0 = (i * 8) % (width - block)
            luma[height // 3 : height // 3 + block, x0 : x0 + block] = 235
            for b in range(12):  # frame counter as bright/dark squares along the top
                if (i >> b) & 1:
                    luma[8:40, 8 + b * 40 : 40 + b * 40] = 235
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma, uv]), format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return n


_CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
import torch
from selva_core.video.decode import decode_clip

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

torch.set_num_threads(1)
decode_clip({warm!r})  # warm up lazy imports on a tiny video (keeps no 1080p buffers around)
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
base = status("VmRSS")
t0 = time.perf_counter()
clip = decode_clip({path!r}, start={start!r}, max_duration={window!r})
elapsed = time.perf_counter() - t0
peak = status("VmHWM")
print(json.dumps({{
    "baseline_rss": base, "peak_rss": peak, "hwm_reset": reset, "seconds": elapsed,
    "sync": list(clip.sync_frames.shape), "clip": list(clip.clip_frames.shape),
    "duration": clip.duration, "first_sync_time": clip.sync_times[0],
    "out_bytes": clip.sync_frames.numel() + clip.clip_frames.numel(),
    "source": [clip.source_width, clip.source_height, clip.source_fps],
}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--start", type=float, default=None, help="default: middle minus window/2")
    ap.add_argument("--window", type=float, default=8.0)
    ap.add_argument("--keep", type=Path, default=None, help="write/reuse the video here")
    args = ap.parse_args()
    start = args.start if args.start is not None else max(args.duration / 2 - args.window / 2, 0)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "long.mp4"
        if args.keep is None or not path.exists():
            t0 = time.perf_counter()
            n = write_long_video(
                path, duration=args.duration, width=args.width, height=args.height, fps=args.fps
            )
            print(
                f"wrote {path}: {n} frames {args.width}x{args.height} @ {args.fps} fps, "
                f"{path.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s"
            )
        n_frames = int(round(args.duration * args.fps))
        warm = Path(tmp) / "warm.mp4"
        write_long_video(warm, duration=1.0, width=64, height=48, fps=args.fps)
        code = _CHILD.format(
            repo=str(REPO), path=str(path), warm=str(warm), start=start, window=args.window
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"child failed:\n{out.stderr}")
        r = json.loads(out.stdout.strip().splitlines()[-1])

    frame_bytes = args.width * args.height * 3
    all_bytes = n_frames * frame_bytes
    window_bytes = int(round(args.window * args.fps)) * frame_bytes
    delta = r["peak_rss"] - r["baseline_rss"]
    mib = 2**20
    print(
        f"decoded {args.window:g} s from {start:g} s in {r['seconds']:.2f} s: "
        f"sync {r['sync']}, clip {r['clip']}, duration {r['duration']}, "
        f"first sync frame at {r['first_sync_time']:.3f} s"
    )
    print(f"output tensors (uint8):              {r['out_bytes'] / mib:9.1f} MiB")
    print(
        f"peak RSS growth during decode_clip:  {delta / mib:9.1f} MiB "
        f"(baseline {r['baseline_rss'] / mib:.0f} MiB, VmHWM reset: {r['hwm_reset']})"
    )
    print(
        f"all {n_frames} frames as full-res RGB: {all_bytes / mib:9.1f} MiB "
        f"-> peak/all = {delta / all_bytes:.4f}"
    )
    print(
        f"the {args.window:g} s window as full-res RGB:   {window_bytes / mib:9.1f} MiB "
        f"-> peak/window = {delta / window_bytes:.4f}"
    )


if __name__ == "__main__":
    main()
