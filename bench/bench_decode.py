"""Decode speed: frames/s of our decoder (`selva_core.video.decode.decode_clip`, the one every
job uses) against the practical limit on the same segments, and the peak RSS of each.

    python bench/bench_decode.py [--variant small_16k] [--width 1280] [--height 720]
        [--fps 25] [--video-s 30] [--window 8] [--segments 3] [--repeat 2]
        [--json bench_decode.json]

A synthetic H.264 video (x264 ultrafast, a moving block on a flat background) is written
once; --segments windows of --window s spread over it are decoded by each method, each in a
fresh child process (so peak RSS is its own; the best of --repeat passes is timed):

- ours: `decode_clip` with the variant's decode settings (seek, decode, rotate, resize to the
  sync and CLIP frame grids), as the decode stage of the jobs runs it;
- ffmpeg: `ffmpeg -ss START -t WINDOW -i VIDEO -an -f null -` when an ffmpeg binary is on
  PATH (the practical limit of a decoder: no conversion, no output);
- pyav-floor: otherwise, a raw PyAV loop over the same windows that seeks as ours does and
  decodes every frame without converting it (what ours costs at the least with this library).

frames/s counts source frames in the windows (window x fps); `ours / limit` < 1 means ours
is slower than the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup_paths()


def _child(method: str, path: str, starts: list[float], window: float, variant: str) -> dict:
    """Runs in a fresh process: decode every window by `method`, report time and VmHWM."""
    import resource

    import torch

    torch.set_num_threads(1)
    times = []
    if method == "ours":
        from selva_core.pipeline import decode_config_for
        from selva_core.variants import get_spec
        from selva_core.video.decode import decode_clip

        config = decode_config_for(get_spec(variant), "official")

        def run(start):
            decode_clip(path, start=start, max_duration=window, config=config)

    elif method == "pyav-floor":
        import av

        def run(start):
            with av.open(path) as c:
                stream = c.streams.video[0]
                stream.thread_type = "AUTO"
                tb = stream.time_base
                c.seek(int(start / tb), stream=stream, backward=True, any_frame=False)
                end = start + window
                for frame in c.decode(stream):
                    if frame.pts is not None and frame.pts * tb >= end:
                        break

    else:  # ffmpeg

        def run(start):
            subprocess.run(
                [
                    "ffmpeg",
                    "-v",
                    "error",
                    "-nostdin",
                    "-ss",
                    str(start),
                    "-t",
                    str(window),
                    "-i",
                    path,
                    "-an",
                    "-f",
                    "null",
                    "-",
                ],
                check=True,
            )

    run(starts[0])  # warm up imports and caches
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := current RSS, so the growth below is the decoding's own
    except OSError:
        pass
    base = common._status_kib(os.getpid(), "VmRSS") / 1024
    for _ in range(int(os.environ.get("BENCH_REPEAT", "2"))):
        t0 = time.perf_counter()
        for s in starts:
            run(s)
        times.append(time.perf_counter() - t0)
    peak = common._status_kib(os.getpid(), "VmHWM") / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "growth_mib": peak - base,
        "seconds": min(times),
        "peak_rss_mib": max(peak, children) if method == "ffmpeg" else peak,
        "process_peak_mib": peak,
        "child_peak_mib": children,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="small_16k")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--video-s", type=float, default=30.0)
    p.add_argument("--window", type=float, default=8.0)
    p.add_argument("--segments", type=int, default=3)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", default="bench_decode.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        method, path, starts = json.loads(args.child)
        print(json.dumps(_child(method, path, starts, args.window, args.variant)))
        return

    from bench_decode_memory import write_long_video

    ffmpeg = shutil.which("ffmpeg")
    limit = "ffmpeg" if ffmpeg else "pyav-floor"
    span = max(args.video_s - args.window, 0.0)
    starts = [round(span * (i + 0.5) / args.segments, 3) for i in range(args.segments)]
    info = {"machine": common.machine_info(), "args": vars(args), "limit": limit, "rows": []}
    frames = args.segments * args.window * args.fps
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp, common.LoadSampler() as la:
        video = Path(tmp) / "video.mp4"
        write_long_video(
            video, duration=args.video_s, width=args.width, height=args.height, fps=args.fps
        )
        for method in ("ours", limit):
            env = dict(os.environ, BENCH_REPEAT=str(args.repeat))
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--window",
                    str(args.window),
                    "--variant",
                    args.variant,
                    "--child",
                    json.dumps([method, str(video), starts]),
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode != 0:
                sys.exit(f"{method} failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(method=method, frames=frames, frames_per_s=frames / r["seconds"])
            info["rows"].append(r)
        info["load_average"] = la.summary()
    ours, lim = info["rows"]
    info["ours_vs_limit"] = ours["frames_per_s"] / lim["frames_per_s"]
    common.write_json(args.json, info)
    la = info["load_average"]
    label = "ffmpeg -f null" if ffmpeg else "raw PyAV decode, no conversion (no ffmpeg on PATH)"
    print(
        f"\nDecode: {args.segments} x {args.window:g} s segments of a {args.width}x"
        f"{args.height} {args.fps} fps H.264 video; limit = {label}"
    )
    print(f"machine: {common.machine_line(info['machine'])}")
    print(
        f"load average during the run: min {la['min']:.1f}, mean {la['mean']:.1f}, "
        f"max {la['max']:.1f}\n"
    )
    print(
        common.table(
            info["rows"],
            [
                ("method", "method"),
                ("frames", "source frames"),
                ("seconds", "seconds"),
                ("frames_per_s", "frames/s"),
                ("peak_rss_mib", "peak RSS MiB"),
                ("growth_mib", "growth after warm-up MiB"),
            ],
        )
    )
    print(f"\nours / limit: {info['ours_vs_limit']:.2f}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
