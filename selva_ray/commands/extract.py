"""`selva-ray extract`: dataset feature precomputation on Ray (resumable, into Parquet)."""

from __future__ import annotations

import argparse

from ..extract.config import ExtractConfig, check_weights
from .common import add_job_options, finish, job_config


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
    add_job_options(p, ExtractConfig, run)


def run(args: argparse.Namespace) -> int:
    config = job_config(args)
    check_weights(config)  # before the job's imports (torch): a missing file answers at once
    from ..extract import run_extract

    # unusable input or settings raise a usage error: one line, exit 2 (cli.main)
    return finish(run_extract(config), args.fail_on_error)
