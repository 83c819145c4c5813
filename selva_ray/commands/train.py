"""`selva-ray train`: LoRA fine-tuning of the generator on Ray Train (one GPU or many)."""

from __future__ import annotations

import argparse
import sys

from .. import validate
from .common import add_ray_address_arg, add_weights_args, variant_name


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
    p.add_argument("--features", required=True, help="features folder (with audio latents)")
    p.add_argument("--output", required=True, help="run folder (local or shared filesystem)")
    p.add_argument(
        "--variant", type=variant_name, help="model variant (default: the features' variant)"
    )
    g = p.add_argument_group("cluster")
    g.add_argument(
        "--workers",
        type=validate.int_range(1, 1024),
        default=1,
        help="Ray Train workers (default 1)",
    )
    g.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    g.add_argument(
        "--cpus-per-worker",
        type=validate.float_range(0.0, 1024.0, low_open=True),
        default=None,
        help="CPUs reserved per worker (default: an even share of the cluster's CPUs, at most "
        "1, after the data reader's; a size that does not fit is refused)",
    )
    g.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="base weights (default: bf16 autocast on GPU, fp32 on CPU; adapters are fp32)",
    )
    g.add_argument(
        "--max-failures",
        type=validate.int_range(0, 1000),
        default=2,
        help="worker-group restarts (default 2)",
    )
    add_ray_address_arg(g)
    add_weights_args(g)
    g.add_argument(
        "--skip-weights-check",
        action="store_true",
        help="do not look for the weight files in the driver (when only the workers see them)",
    )
    a = p.add_argument_group("adapter")
    a.add_argument(
        "--rank",
        type=validate.int_range(1, 1024),
        default=16,
        help="LoRA rank, 1..1024 (default 16)",
    )
    a.add_argument(
        "--alpha",
        type=validate.float_range(0.0, 1e6, low_open=True),
        help="LoRA alpha, > 0 (default 2 x rank)",
    )
    a.add_argument("--init", choices=["pissa", "standard"], default="pissa", help="default pissa")
    a.add_argument(
        "--rslora",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale alpha/sqrt(r) instead of alpha/r (default on)",
    )
    a.add_argument(
        "--target",
        default="attn.qkv",
        help="comma-separated layer suffixes to adapt (default attn.qkv; e.g. attn.qkv,linear1)",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--steps",
        type=validate.int_range(1, 10_000_000),
        default=2000,
        help="optimizer steps (default 2000)",
    )
    o.add_argument(
        "--batch-size",
        type=validate.int_range(1, 65536),
        default=4,
        help="global batch (default 4)",
    )
    o.add_argument(
        "--grad-accum",
        type=validate.int_range(1, 65536),
        default=1,
        help="micro-batches per step (default 1)",
    )
    o.add_argument(
        "--lr",
        type=validate.float_range(0.0, 1.0, low_open=True),
        default=1e-4,
        help="learning rate, in (0, 1] (default 1e-4)",
    )
    o.add_argument(
        "--lora-plus-ratio",
        type=validate.float_range(0.0, 1000.0, low_open=True),
        default=1.0,
        help="lr of B = lr x ratio, in (0, 1000] (default 1)",
    )
    o.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="after warmup: constant or cosine decay to 0",
    )
    o.add_argument(
        "--warmup", type=validate.int_range(0), default=100, help="warmup steps (default 100)"
    )
    o.add_argument(
        "--timesteps",
        choices=["uniform", "logit_normal", "curriculum"],
        default="uniform",
        help="t sampler (curriculum: logit-normal for 60%% of steps, then uniform)",
    )
    o.add_argument(
        "--cfg-dropout",
        type=validate.ratio,
        default=0.1,
        help="condition dropout, 0..1 (default 0.1)",
    )
    o.add_argument(
        "--mixup",
        type=validate.float_range(0.0, 1000.0),
        default=0.0,
        help="latent mixup Beta(a,a), 0..1000; 0 = off (default)",
    )
    o.add_argument(
        "--latent-noise",
        type=validate.float_range(0.0, 10.0),
        default=0.0,
        help="latent noise sigma, 0..10; 0 = off (default)",
    )
    o.add_argument(
        "--seed", type=validate.seed, default=42, help=f"0..{validate.MAX_SEED} (default 42)"
    )
    e = p.add_argument_group("evaluation and checkpoints")
    e.add_argument(
        "--val-fraction",
        type=validate.float_range(0.0, 0.9),
        default=0.1,
        help="held-out share of the clips, 0..0.9 (default 0.1)",
    )
    e.add_argument(
        "--eval-every",
        type=validate.positive_int,
        default=500,
        help="steps between evals (default 500)",
    )
    e.add_argument(
        "--save-every",
        type=validate.positive_int,
        default=500,
        help="steps between checkpoints (default 500)",
    )
    e.add_argument(
        "--preview-clips",
        type=validate.int_range(0, 100),
        default=2,
        help="preview clips per eval (default 2)",
    )
    e.add_argument("--no-surgery", action="store_true", help="skip Spectral Surgery at the end")
    e.add_argument("--resume", action="store_true", help="continue the run in --output")
    from .common import add_window_args

    add_window_args(e, defaults=False)
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    from ..config_file import job_settings
    from ..train import TrainConfig

    return TrainConfig(
        features=args.features,
        output=args.output,
        variant=args.variant,
        workers=args.workers,
        use_gpu=args.use_gpu,
        cpus_per_worker=args.cpus_per_worker,
        precision=args.precision,
        max_failures=args.max_failures,
        ray_address=args.ray_address,
        weights_dir=args.weights_dir,
        offline=args.offline,
        rank=args.rank,
        alpha=args.alpha,
        init=args.init,
        rslora=args.rslora,
        targets=args.target,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        lora_plus_ratio=args.lora_plus_ratio,
        lr_schedule=args.lr_schedule,
        warmup=args.warmup,
        timesteps=args.timesteps,
        cfg_dropout=args.cfg_dropout,
        mixup=args.mixup,
        latent_noise=args.latent_noise,
        seed=args.seed,
        val_fraction=args.val_fraction,
        eval_every=args.eval_every,
        save_every=args.save_every,
        preview_clips=args.preview_clips,
        surgery=not args.no_surgery,
        resume=args.resume,
        flags=job_settings(args),
        window=args.window,
        overlap=args.overlap,
    )


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
            f"--features {features} {what}; make a features folder with: selva-ray extract "
            f"--input CATALOG --output {features} --with-audio-latents"
        )
    settings = (OutputDir(features).read_meta() or {}).get("settings") or {}
    made_for = settings.get("variant")
    make = (
        f"selva-ray extract --input CATALOG --output {features} --variant "
        f"{args.variant or made_for or 'VARIANT'} --with-audio-latents"
    )
    if not made_for:
        raise validate.UsageError(
            f"--features {features}: not a features folder (no _meta.json); make one with: {make}"
        )
    if not settings.get("with_audio_latents") or not settings.get("latent_len"):
        raise validate.UsageError(
            f"--features {features}: features have no audio latents (extracted without "
            f"--with-audio-latents), and training needs the latent of each clip's own audio; "
            f"make them with: {make}"
        )
    validate.check_features_clips(features)
    validate.check_output_writable(args.output)
    OutputDir(args.output).read_meta()  # a corrupt run _meta.json is named now
    if args.use_gpu:
        validate.check_gpu("--use-gpu", local=validate.local_cluster(args.ray_address))
    variant = args.variant or made_for
    if variant and not args.skip_weights_check:
        validate.check_weights(
            variant,
            args.weights_dir,
            offline=args.offline,
            keys=validate.decoder_weight_keys(variant),
        )


def run(args: argparse.Namespace) -> int:
    check_inputs(args)  # before the job's imports (torch): mistakes answer at once
    from selva_core.variants import UnknownVariantError

    from ..train import FeatureFolderError, TrainConfigError, TrainFailed, run_train

    try:
        summary = run_train(config_from_args(args))
    except (TrainConfigError, FeatureFolderError, UnknownVariantError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except TrainFailed as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    for line in summary.lines():
        print(line)
    return 0
