"""`selva-ray generate-one VIDEO --prompt TEXT`: one clip end to end on this machine, no Ray."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import shared_settings as s
from .. import validate
from ..settings import SWITCH, add_options, opt
from .common import check_model_args, pipeline_config, resolve_store

log = logging.getLogger(__name__)


@dataclass
class OneClipSettings:
    """generate-one's settings (the video is its positional argument)."""

    prompt: str = opt(help="the sound to generate, e.g. 'dog barking'", required=True)
    negative_prompt: str = opt(
        "", help="sounds to steer away from (default: '' as the official demo)"
    )
    seed: int = s.seed_opt(f"noise seed, 0..{validate.MAX_SEED}")
    steps: int = s.steps_opt()
    cfg: float = s.cfg_opt()
    duration: float = opt(
        8.0, type=validate.seconds, help=f"max seconds, at most {validate.MAX_CLIP_SECONDS:g}"
    )
    start: float = opt(
        0.0,
        type=validate.non_negative_float,
        help="start offset in seconds (with --mux the copied video begins at the keyframe at "
        "or before it)",
    )
    output_dir: Path = opt(Path("."), type=Path, help="where the files go")
    mux: bool = opt(
        False,
        kind=SWITCH,
        help="also write <stem>.dubbed.mp4. Its video packets are copied, not re-encoded, so "
        "with --start it begins at the keyframe at or before the start: on a long-GOP video "
        "up to one GOP early, silent until the start, with the track aligned to the picture",
    )
    variant: str = s.variant_opt()
    device: str = s.device_opt()
    precision: str | None = s.precision_opt()
    weights_dir: str | None = s.weights_dir_opt()
    offline: bool = s.offline_opt()


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
    add_options(p, OneClipSettings)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from selva_core.conditioning import PromptError, validate_prompts
    from selva_core.pipeline import Pipeline, decode_input
    from selva_core.variants import get_spec
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
        config = pipeline_config(args)
        # The input first: a bad video or prompt is one line before any model loads.
        validate_prompts([args.prompt], family=get_spec(config.variant).family)
        decoded = decode_input(config, args.video, start=args.start, max_duration=args.duration)
        t_load = time.perf_counter()
        pipe = Pipeline(config, resolve_store(args))
        t1 = time.perf_counter()
        features = pipe.extract_features(decoded, args.prompt)
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
    print(
        f"decode {t_load - t0:.1f} s, load {t1 - t_load:.1f} s, features {t2 - t1:.1f} s, "
        f"generation {t3 - t2:.1f} s"
    )
    return 0


def _progress(step: int, total: int) -> None:
    if step == total or step % 5 == 0:
        print(f"  sampling step {step}/{total}", file=sys.stderr, flush=True)
