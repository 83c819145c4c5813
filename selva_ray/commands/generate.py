"""`selva-ray generate`: batch generation and dubbing of a catalog (or extracted features)."""

from __future__ import annotations

import argparse
import sys

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
from .qa import add_threshold_args, thresholds_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate an audio track (and a dubbed video) for every clip, on Ray",
        description=(
            "For every clip of INPUT write OUTPUT/audio/<id>.flac (exactly the clip's duration, "
            "at the model's rate), with --mux OUTPUT/video/<id>.mp4 (video packets copied, "
            "never re-encoded), and one row per clip in OUTPUT/results/ with the track's QA "
            "metrics, DeSync score and flags (the schema `selva-ray qa` writes; see `selva-ray "
            "report`). Bad clips go to OUTPUT/errors/. Rerunning does only the clips without a "
            "result row and file."
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
    p.add_argument(
        "--prompt",
        help="prompt for clips whose catalog row has none (with it a manifest needs no "
        "prompt column)",
    )
    p.add_argument(
        "--negative-prompt",
        help="sounds to steer away from (default: the model's stored empty-prompt features)",
    )
    p.add_argument(
        "--seed",
        type=validate.seed,
        default=42,
        help=f"noise seed per clip, 0..{validate.MAX_SEED}",
    )
    p.add_argument(
        "--cfg", type=validate.cfg, default=4.5, help=f"guidance strength, 0..{validate.MAX_CFG:g}"
    )
    p.add_argument(
        "--steps", type=validate.steps, default=25, help=f"Euler steps, 1..{validate.MAX_STEPS}"
    )
    p.add_argument(
        "--max-duration",
        type=validate.seconds,
        default=8.0,
        help=f"seconds per clip, at most {validate.MAX_CLIP_SECONDS:g}",
    )
    p.add_argument("--format", choices=["flac", "wav"], default="flac", help="audio file format")
    p.add_argument("--bits", type=int, choices=[16, 24], default=24, help="sample depth")
    p.add_argument(
        "--loudness",
        type=validate.level_db,
        help=f"normalise each track to this integrated loudness in LUFS, "
        f"{validate.MIN_LEVEL_DB:g}..0 (e.g. -23; default: the model's level)",
    )
    p.add_argument(
        "--peak",
        type=validate.level_db,
        help=f"true-peak ceiling in dBTP, {validate.MIN_LEVEL_DB:g}..0 (default -1 with "
        "--loudness, else none)",
    )
    p.add_argument(
        "--mux",
        action="store_true",
        help="also write the dubbed video. Its video packets are copied, not re-encoded, so a "
        "clip with a start (the catalog's `start` column) begins at the keyframe at or before "
        "that start: on a long-GOP source the video opens up to one GOP early, silent until "
        "the start, with the track aligned to the picture",
    )
    p.add_argument(
        "--mix-original",
        type=validate.gain_db,
        metavar="DB",
        help="keep the source's own track in the dubbed video at this gain, -120..0 dB "
        "(needs --mux; default: replaced)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="FILE[@STRENGTH]",
        help="LoRA adapter file, repeatable (stacked); strength default 1",
    )
    add_threshold_args(p)
    g = p.add_argument_group("DeSync of the generated tracks (full Synchformer)")
    g.add_argument(
        "--no-desync",
        action="store_true",
        help="skip DeSync (desync_s null, no flag; synchformer_state_dict.pth not needed)",
    )
    g.add_argument(
        "--desync-actors",
        type=validate.actor_count,
        metavar="N",
        help="DeSync actors (default: one per GPU, else 1)",
    )
    p.add_argument(
        "--batch-size",
        type=validate.int_range(1, 4096),
        default=None,
        help="clips per generator batch (default: 8; on CPUs at most 8, fewer when that gives "
        "every generator actor two batches)",
    )
    add_actor_args(
        p,
        role="generator",
        gpus_default=None,
        gpus_help="GPU share of a generator actor (default: 1, or 0.5 beside an encoder)",
        actors_default="one per GPU; on CPUs one per core, each with one torch thread, as "
        "many as the nodes' memory holds",
    )
    p.add_argument(
        "--encoder-actors",
        type=validate.actor_count,
        help="feature encoder actors (catalog input; default: one per GPU, else 1)",
    )
    add_run_args(p)
    p.set_defaults(run=run)


def check_inputs(args: argparse.Namespace):
    """Everything the driver can check before Ray or a model starts, cheapest first (no torch
    here). Returns the catalog read (records, problems), or None for a features folder."""
    if args.mix_original is not None and not args.mux:
        raise validate.UsageError("--mix-original needs --mux (it mixes into the dubbed video)")
    validate.check_device(args.device, local=validate.local_cluster(args.ray_address))
    validate.check_output_folder(args.output, kind="results")
    for spec in args.adapter:
        check_adapter_file(spec)
    meta = validate.features_meta(args.input)
    if meta is None:
        catalog = validate.read_input_catalog(
            args.input,
            max_duration=args.max_duration,
            allow_roots=args.allow_root or None,
            default_prompt=args.prompt,
            prompt_flag="--prompt",
            variant=args.variant,
        )
        keys = None  # the encoders run too
    else:
        made_for = meta["settings"].get("variant")
        if made_for != args.variant:
            raise validate.UsageError(
                f"features in {args.input} were made for variant {made_for!r}, not "
                f"{args.variant!r}; pass --variant {made_for}"
            )
        validate.check_features_clips(args.input)
        catalog = None
        keys = validate.decoder_weight_keys(args.variant)
        if args.negative_prompt is not None and keys:
            keys += ("clip_dfn5b",)  # a negative prompt given as text goes through CLIP
    if not args.skip_weights_check:
        validate.check_weights(args.variant, args.weights_dir, offline=args.offline, keys=keys)
    return catalog


def check_adapter_file(text: str) -> None:
    """A local adapter file exists and looks like one (a known suffix; a safetensors header
    with selva's adapter metadata), without torch. The job reads every adapter whole, still
    before Ray starts."""
    head, sep, tail = text.rpartition("@")
    path = text
    if sep:
        try:
            float(tail)
            path = head
        except ValueError:
            pass  # an '@' inside the file name
    if "://" in path and not path.startswith("file://"):
        return
    validate.check_adapter_header(path.removeprefix("file://"), flag="--adapter")


def config_from_args(args: argparse.Namespace):
    """GenerateConfig of a command line (ThresholdsError for a bad thresholds file)."""
    from ..config_file import job_settings
    from ..generate import GenerateConfig

    return GenerateConfig(
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
        thresholds=thresholds_from_args(args),
        desync=not args.no_desync,
        desync_actors=args.desync_actors,
        flags=job_settings(args),
        window=args.window,
        overlap=args.overlap,
        join=args.join,
        mask_strength=args.mask_strength,
        mask_paths=mask_path_tuple(args.mask_paths),
    )


def run(args: argparse.Namespace) -> int:
    catalog = check_inputs(args)  # before the job's imports (torch): mistakes answer at once
    from selva_core.qa import ThresholdsError
    from selva_core.variants import UnknownVariantError
    from selva_core.weights import WeightsError

    from ..generate import GenerateInputError, run_generate
    from ..io.catalog import CatalogError
    from ..io.output_dir import SettingsMismatchError

    try:
        summary = run_generate(config_from_args(args), catalog=catalog)
    except (
        CatalogError,
        SettingsMismatchError,
        UnknownVariantError,
        GenerateInputError,
        WeightsError,
        ThresholdsError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return summary.exit_code(args.fail_on_error)
