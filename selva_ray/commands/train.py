"""`selva-ray train`: LoRA fine-tuning of the generator on Ray Train (one GPU or many)."""

from __future__ import annotations

import argparse
import sys

from .. import validate
from ..train.config import TrainConfig, extract_command
from .common import add_job_options, finish, job_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a LoRA adapter on extracted features, on Ray Train",
        description=(
            "Train a LoRA adapter of the generator on clips whose features were extracted with "
            "`selva-ray extract --with-audio-latents` (the latent of each clip's own audio is "
            "the target). Ray Train runs N workers under DDP; only the adapter trains. The run "
            "folder gets metrics.jsonl, loss.png, eval/step_N/ previews, checkpoints, "
            "adapter.safetensors and (unless --no-surgery) adapter.surgery.safetensors."
        ),
        epilog=(
            "Steps are optimizer steps; each consumes the global --batch-size, split over the "
            "workers and --grad-accum micro-batches. Rerun with --resume to continue an "
            "interrupted run from its last checkpoint."
        ),
    )
    add_job_options(p, TrainConfig, run)


def check_inputs(args: argparse.Namespace) -> None:
    """Everything the driver can check before torch, Ray or a model start: the features
    folder (exists, readable, has clips), the run folder (writable, readable `_meta.json`),
    GPUs for --use-gpu on this machine, and every weight file at once."""
    import os

    from ..io.output_dir import OutputDir

    features = args.features
    local = "://" not in features or features.startswith("file://")
    if local and not os.path.isdir(features.removeprefix("file://")):
        what = "is a file, not a folder" if os.path.exists(features) else "does not exist"
        raise validate.UsageError(
            f"--features {features} {what}; make a features folder with: "
            f"{extract_command(features, args.variant)}"
        )
    settings = (OutputDir(features).read_meta() or {}).get("settings") or {}
    made_for = settings.get("variant")
    variant = args.variant or made_for
    if not made_for:
        raise validate.UsageError(
            f"--features {features}: not a features folder (no _meta.json); make one with: "
            f"{extract_command(features, variant)}"
        )
    if not settings.get("with_audio_latents") or not settings.get("latent_len"):
        raise validate.UsageError(
            f"--features {features}: features have no audio latents (extracted without "
            f"--with-audio-latents), and training needs the latent of each clip's own audio; "
            f"make them with: {extract_command(features, variant, suffix='-latents')}"
        )
    validate.check_features_clips(features)
    validate.check_output_writable(args.output)
    OutputDir(args.output).read_meta()  # a corrupt run _meta.json is named now
    if args.use_gpu:
        validate.check_gpu("--use-gpu", local=validate.local_cluster(args.ray_address))
    if variant and args.check_weights:
        validate.check_weights(
            variant,
            args.weights_dir,
            offline=args.offline,
            keys=validate.decoder_weight_keys(variant),
        )


def run(args: argparse.Namespace) -> int:
    check_inputs(args)  # before the job's imports (torch): mistakes answer at once
    from ..train import TrainFailed, run_train

    try:  # unusable input or settings raise a usage error: one line, exit 2 (cli.main)
        summary = run_train(job_config(args))
    except TrainFailed as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return finish(summary)
