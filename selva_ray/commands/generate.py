"""`selva-ray generate`: batch generation and dubbing of a catalog (or extracted features)."""

from __future__ import annotations

import argparse
import sys

from .common import (
    add_allow_root_arg,
    add_mask_args,
    add_model_args,
    add_window_args,
    mask_path_tuple,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate an audio track (and a dubbed video) for every clip, on Ray",
        description=(
            "For every clip of INPUT write OUTPUT/audio/<id>.flac (exactly the clip's duration, "
            "at the model's rate), with --mux OUTPUT/video/<id>.mp4 (video packets copied, "
            "never re-encoded), and one row per clip in OUTPUT/results/. Bad clips go to "
            "OUTPUT/errors/. Rerunning does only the clips without a result row and file."
        ),
        epilog=(
            "INPUT is a catalog as `extract` reads it (folder or .csv/.jsonl/.parquet manifest "
            "with columns video, prompt and optional id, negative_prompt, start, duration, "
            "seed, cfg, steps; paths may be URIs): features are then computed on the way. Or "
            "it is a folder written by `extract`: no decoding or encoders run, and the source "
            "video for --mux comes from the features' source column. Per-clip values from the "
            "catalog win over the job-level flags."
        ),
    )
    p.add_argument("--input", required=True, help="catalog or features folder (path or URI)")
    p.add_argument("--output", required=True, help="output folder (path or URI)")
    add_model_args(p, default_variant="small_16k")
    add_allow_root_arg(p)
    add_window_args(p)
    p.add_argument(
        "--join",
        choices=["continue", "crossfade"],
        default="continue",
        help="how the windows of a long video become one track: continue (each window's "
        "overlap continues the previous window's latent, then a short crossfade) or crossfade "
        "(independent windows, equal-power crossfade over the overlap)",
    )
    add_mask_args(p)
    p.add_argument("--prompt", help="prompt for clips whose catalog row has none")
    p.add_argument(
        "--negative-prompt",
        help="sounds to steer away from (default: the model's stored empty-prompt features)",
    )
    p.add_argument("--seed", type=int, default=42, help="noise seed per clip (default 42)")
    p.add_argument("--cfg", type=float, default=4.5, help="guidance strength (default 4.5)")
    p.add_argument("--steps", type=int, default=25, help="Euler steps (default 25)")
    p.add_argument("--max-duration", type=float, default=8.0, help="seconds per clip (default 8)")
    p.add_argument("--format", choices=["flac", "wav"], default="flac", help="audio file format")
    p.add_argument(
        "--bits", type=int, choices=[16, 24], default=24, help="sample depth (default 24)"
    )
    p.add_argument(
        "--loudness",
        type=float,
        help="normalise each track to this integrated loudness in LUFS (e.g. -23)",
    )
    p.add_argument(
        "--peak",
        type=float,
        help="true-peak ceiling in dBTP (default -1 with --loudness, else none)",
    )
    p.add_argument("--mux", action="store_true", help="also write the dubbed video")
    p.add_argument(
        "--mix-original",
        type=float,
        metavar="DB",
        help="keep the source's own track in the dubbed video at this gain (default: replaced)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="FILE[@STRENGTH]",
        help="LoRA adapter file, repeatable (stacked); strength default 1",
    )
    p.add_argument("--batch-size", type=int, default=8, help="clips per generator batch")
    p.add_argument("--actors", type=int, help="generator actors (default: one per GPU, else 1)")
    p.add_argument("--gpus-per-actor", type=float, help="GPU share of a generator actor")
    p.add_argument("--encoder-actors", type=int, help="feature encoder actors (catalog input)")
    p.add_argument("--actor-memory-gb", type=float, help="heap reserved per model actor")
    p.add_argument("--shard-size", type=int, default=64, help="clips per committed shard")
    p.add_argument("--retry-errors", action="store_true", help="redo clips that failed before")
    p.add_argument(
        "--fail-on-error",
        action="store_true",
        help="exit 1 if any clip failed (default: only if every clip failed)",
    )
    p.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--no-progress", action="store_true", help="no Ray Data progress output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from selva_core.variants import UnknownVariantError

    from ..generate import GenerateConfig, GenerateInputError, run_generate
    from ..io.catalog import CatalogError
    from ..io.output_dir import SettingsMismatchError

    config = GenerateConfig(
        input=args.input,
        output=args.output,
        variant=args.variant,
        max_duration=args.max_duration,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        cfg=args.cfg,
        steps=args.steps,
        audio_format=args.format,
        bits=args.bits,
        loudness=args.loudness,
        peak=args.peak,
        mux=args.mux,
        mix_original=args.mix_original,
        adapters=args.adapter,
        precision=args.precision,
        device=args.device,
        batch_size=args.batch_size,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        encoder_actors=args.encoder_actors,
        actor_memory_gb=args.actor_memory_gb,
        shard_size=args.shard_size,
        fail_on_error=args.fail_on_error,
        retry_errors=args.retry_errors,
        weights_dir=args.weights_dir,
        offline=args.offline,
        ray_address=args.ray_address,
        allow_roots=args.allow_root or None,
        progress=not args.no_progress,
        window=args.window,
        overlap=args.overlap,
        join=args.join,
        mask_strength=args.mask_strength,
        mask_paths=mask_path_tuple(args.mask_paths),
    )
    try:
        summary = run_generate(config)
    except (
        CatalogError,
        SettingsMismatchError,
        UnknownVariantError,
        GenerateInputError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return summary.exit_code(args.fail_on_error)
