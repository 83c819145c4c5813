"""`selva-ray generate-one VIDEO --prompt TEXT`: one clip end to end on this machine, no Ray."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from selva_core.variants import VARIANTS

from .common import add_model_args, pipeline_config, resolve_store

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate-one",
        help="generate the audio track of one video (no Ray)",
        description=(
            "Decode up to --duration seconds of VIDEO from --start, extract its features with "
            "the prompt, sample audio and write <stem>.flac (and <stem>.dubbed.mp4 with --mux, "
            "video stream copied). With --variant tiny it runs offline on random weights."
        ),
    )
    p.add_argument("video", type=Path, help="input video file")
    p.add_argument("--prompt", required=True, help="the sound to generate, e.g. 'dog barking'")
    p.add_argument(
        "--negative-prompt",
        default="",
        help="sounds to steer away from (default: '' as the official demo)",
    )
    p.add_argument("--seed", type=int, default=42, help="noise seed (default 42)")
    p.add_argument("--steps", type=int, default=25, help="Euler steps (default 25)")
    p.add_argument("--cfg", type=float, default=4.5, help="guidance strength (default 4.5)")
    p.add_argument("--duration", type=float, default=8.0, help="max seconds (default 8)")
    p.add_argument("--start", type=float, default=0.0, help="start offset in seconds")
    p.add_argument("--output-dir", type=Path, default=Path("."), help="default: current dir")
    p.add_argument("--mux", action="store_true", help="also write <stem>.dubbed.mp4")
    add_model_args(p, default_variant="small_16k")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from selva_core.conditioning import PromptError
    from selva_core.pipeline import Pipeline
    from selva_core.video.errors import VideoError
    from selva_core.video.write import mux_audio, write_flac
    from selva_core.weights import WeightsError

    if args.variant not in VARIANTS:
        print(
            f"error: unknown variant {args.variant!r}; choose from {', '.join(VARIANTS)}",
            file=sys.stderr,
        )
        return 2
    try:
        t0 = time.perf_counter()
        pipe = Pipeline(pipeline_config(args), resolve_store(args))
        t1 = time.perf_counter()
        features = pipe.extract_features(
            args.video, args.prompt, start=args.start, max_duration=args.duration
        )
        t2 = time.perf_counter()
        wav = pipe.generate(
            features,
            negative_prompt=args.negative_prompt,
            seed=args.seed,
            steps=args.steps,
            cfg=args.cfg,
            progress=_progress,
        )[0]
        t3 = time.perf_counter()
    except (VideoError, PromptError, WeightsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    stem = args.video.stem
    flac = write_flac(args.output_dir / f"{stem}.flac", wav, pipe.sampling_rate)
    print(f"wrote {flac} ({features.duration:.2f} s at {pipe.sampling_rate} Hz)")
    if args.mux:
        dubbed = mux_audio(
            args.video,
            wav,
            pipe.sampling_rate,
            args.output_dir / f"{stem}.dubbed.mp4",
            start=args.start,
            duration=features.duration,
        )
        print(f"wrote {dubbed}")
    print(f"load {t1 - t0:.1f} s, features {t2 - t1:.1f} s, generation {t3 - t2:.1f} s")
    return 0


def _progress(step: int, total: int) -> None:
    if step == total or step % 5 == 0:
        print(f"  sampling step {step}/{total}", file=sys.stderr, flush=True)
