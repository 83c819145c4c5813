"""The embedded default catalog: a few small synthetic videos with sound, made on the spot,
so the main job runs anywhere without data or weights."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# folder (the fallback prompt) -> clips (name, seconds, tone Hz)
DEMO_CLIPS = {
    "dog_barking": [("park", 4.0, 440.0), ("yard", 2.5, 520.0)],
    "rain_on_a_roof": [("storm", 6.0, 180.0), ("drizzle", 3.0, 250.0)],
    "car_engine": [("idle", 8.5, 90.0), ("pass_by", 1.2, 130.0)],
}
PROMPTS = "# filename: description\ndog_barking/park.mp4: a dog barks in a park\n"


def write_demo_video(path: Path, seconds: float, tone: float, fps: int = 25) -> Path:
    """A moving square over a gradient, with a sine tone: 160x96 H.264 + AAC."""
    width, height, rate = 160, 96, 16000
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.options = {"preset": "veryfast"}
        audio = out.add_stream("aac", rate=rate, layout="mono")
        ys, xs = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * fps)):
            img = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 60)], -1)
            x = (i * 4) % (width - 24)
            img[30:54, x : x + 24] = (250, 250, 250)
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * tone * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
        frame = av.AudioFrame.from_ndarray(
            wave.astype(np.float32)[None], format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = rate, 0
        out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path


def write_demo_catalog(root: str | Path) -> Path:
    """The demo catalog under `root` (kept if already there)."""
    root = Path(root)
    for folder, clips in DEMO_CLIPS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, seconds, tone in clips:
            path = root / folder / f"{name}.mp4"
            if not path.exists():
                write_demo_video(path, seconds, tone)
    (root / "prompts.txt").write_text(PROMPTS)
    return root
