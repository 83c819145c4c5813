"""`selva-ray extract`: dataset feature precomputation on Ray (resumable, into Parquet)."""

from __future__ import annotations

import argparse

from .. import validate
from .common import (
    add_actor_args,
    add_allow_root_arg,
    add_mask_args,
    add_model_args,
    add_run_args,
    add_window_args,
    mask_path_tuple,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract features of a video catalog into Parquet, on Ray",
        description=(
            "Decode every clip of a catalog on CPU tasks, encode it on model actors (GPUs when "
            "the cluster has them) and write one Parquet row per clip: sync features, CLIP text "
            "features, CLIP frame features (MMAudio variants) and, with --with-audio-latents, "
            "the VAE latent of the clip's own audio (LoRA training targets). Bad clips go to "
            "OUTPUT/errors/. Rerunning skips finished clips and redoes clips whose catalog row "
            "changed; deleted part files are redone."
        ),
        epilog=(
            "INPUT is a folder (recursive; .mp4 .mov .mkv .webm .avi; optional prompts.txt with "
            "'filename: description' lines, else the parent folder name is the prompt) or a "
            "manifest (.csv, .jsonl, .json array or .parquet) with columns video, prompt and "
            "optional id, negative_prompt, start, duration, seed, mask. Paths may be URIs (s3://, "
            "gs://). Exit status: 0 the job ran, 1 every clip failed (or any, with "
            "--fail-on-error), 2 unusable catalog or settings (nothing started)."
        ),
    )
    p.add_argument("--input", required=True, help="catalog folder or manifest (path or URI)")
    p.add_argument("--output", required=True, help="output folder (path or URI)")
    add_model_args(p, default_variant="small_16k")
    p.add_argument(
        "--with-audio-latents",
        action="store_true",
        help="also store the VAE posterior of each clip's audio track (for LoRA training)",
    )
    p.add_argument(
        "--max-duration",
        type=validate.seconds,
        default=8.0,
        help=f"seconds per clip, at most {validate.MAX_CLIP_SECONDS:g}",
    )
    p.add_argument(
        "--storage-dtype",
        choices=["float16", "bfloat16", "float32"],
        default="float16",
        help="dtype of the stored features",
    )
    p.add_argument(
        "--batch-size", type=validate.int_range(1, 4096), default=8, help="clips per encoder call"
    )
    add_actor_args(p, role="encoder", gpus_default=1.0)
    add_allow_root_arg(p)
    add_window_args(p)
    add_mask_args(p)
    p.add_argument(
        "--ignore-rotation",
        action="store_true",
        help="decode frames as stored, ignoring the display rotation of phone videos (as the "
        "official reader does); default: turn them upright",
    )
    add_run_args(p)
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    from ..config_file import job_settings
    from ..extract import ExtractConfig

    return ExtractConfig(
        input=args.input,
        output=args.output,
        variant=args.variant,
        with_audio_latents=args.with_audio_latents,
        max_duration=args.max_duration,
        storage_dtype=args.storage_dtype,
        precision=args.precision,
        device=args.device,
        batch_size=args.batch_size,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        actor_memory_gb=args.actor_memory_gb,
        shard_size=args.shard_size,
        fail_on_error=args.fail_on_error,
        retry_errors=args.retry_errors,
        weights_dir=args.weights_dir,
        offline=args.offline,
        ray_address=args.ray_address,
        progress=not args.no_progress,
        allow_roots=args.allow_root or None,
        check_weights=not args.skip_weights_check,
        ignore_rotation=args.ignore_rotation,
        flags=job_settings(args),
        window=8.0 if args.window is None else args.window,
        overlap=1.0 if args.overlap is None else args.overlap,
        mask_strength=args.mask_strength,
        mask_paths=mask_path_tuple(args.mask_paths),
    )


def run(args: argparse.Namespace) -> int:
    from ..extract import run_extract

    # unusable input raises UsageError: exit 2 in cli.main
    summary = run_extract(config_from_args(args))
    for line in summary.lines():
        print(line)
    return summary.exit_code(args.fail_on_error)
