"""`selva-ray generate-one VIDEO --prompt TEXT`: one clip end to end on this machine, no Ray."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .. import validate
from .common import add_model_args, check_model_args, pipeline_config, resolve_store

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
    p.add_argument(
        "--seed", type=validate.seed, default=42, help=f"noise seed, 0..{validate.MAX_SEED}"
    )
    p.add_argument(
        "--steps", type=validate.steps, default=25, help=f"Euler steps, 1..{validate.MAX_STEPS}"
    )
    p.add_argument(
        "--cfg", type=validate.cfg, default=4.5, help=f"guidance strength, 0..{validate.MAX_CFG:g}"
    )
    p.add_argument(
        "--duration",
        type=validate.seconds,
        default=8.0,
        help=f"max seconds, at most {validate.MAX_CLIP_SECONDS:g}",
    )
    p.add_argument(
        "--start",
        type=validate.non_negative_float,
        default=0.0,
        help="start offset in seconds (with --mux the copied video begins at the keyframe at "
        "or before it)",
    )
    p.add_argument("--output-dir", type=Path, default=Path("."), help="where the files go")
    p.add_argument(
        "--mux",
        action="store_true",
        help="also write <stem>.dubbed.mp4. Its video packets are copied, not re-encoded, so "
        "with --start it begins at the keyframe at or before the start: on a long-GOP video "
        "up to one GOP early, silent until the start, with the track aligned to the picture",
    )
    add_model_args(p, default_variant="small_16k")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from selva_core.conditioning import PromptError
    from selva_core.pipeline import Pipeline
    from selva_core.video.errors import VideoError
    from selva_core.video.write import mux_audio, write_flac
    from selva_core.weights import WeightsError

    if not args.video.is_file():
        raise validate.UsageError(f"video {args.video} does not exist or is not a file")
    if not args.prompt.strip():
        raise validate.UsageError("--prompt is empty; say which sound to generate")
    validate.check_output_writable(str(args.output_dir), flag="--output-dir")
    check_model_args(args)
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
