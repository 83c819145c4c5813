"""`selva-ray generate`: batch generation and dubbing of a catalog (or extracted features)."""

from __future__ import annotations

import argparse

from selva_core.defaults import DEFAULT_VARIANT

from .. import validate
from ..generate.config import GenerateConfig
from .common import add_job_options, finish, job_config


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
    add_job_options(p, GenerateConfig, run, thresholds=True)


def check_inputs(args: argparse.Namespace):
    """Everything the driver can check before Ray or a model starts, cheapest first (no torch
    here). Returns the catalog read (records, problems), or None for a features folder."""
    if args.mix_original is not None and not args.mux:
        raise validate.UsageError("--mix-original needs --mux (it mixes into the dubbed video)")
    validate.check_device(args.device, local=validate.local_cluster(args.ray_address))
    validate.check_output_folder(args.output, kind="results")
    for spec in args.adapters:
        check_adapter_file(spec)
    meta = validate.features_meta(args.input)
    if meta is None:
        args.variant = args.variant or DEFAULT_VARIANT
        catalog = validate.read_input_catalog(
            args.input,
            max_duration=args.max_duration,
            allow_roots=args.allow_roots or None,
            default_prompt=args.prompt,
            prompt_flag="--prompt",
            variant=args.variant,
        )
    else:
        made_for = meta["settings"].get("variant")
        if args.variant is None:
            args.variant = made_for  # a features folder supplies its variant
        if made_for != args.variant:
            raise validate.UsageError(
                f"features in {args.input} were made for variant {made_for!r}, not "
                f"{args.variant!r}; pass --variant {made_for}"
            )
        validate.check_features_clips(args.input)
        catalog = None
    if args.check_weights:
        validate.check_generate_weights(
            args.variant,
            args.weights_dir,
            offline=args.offline,
            from_features=meta is not None,
            negative_text=args.negative_prompt is not None,
            desync=args.desync,
        )
    return catalog


def check_adapter_file(text: str) -> None:
    """A local adapter file exists and looks like one (a known suffix; a safetensors header
    with selva's adapter metadata), and its strength is a number in range, without torch.
    The job reads every adapter whole, still before Ray starts."""
    from ..generate.adapters import parse_adapter

    path, _ = parse_adapter(text)
    if "://" in path and not path.startswith("file://"):
        return
    validate.check_adapter_header(path.removeprefix("file://"), flag="--adapter")


def run(args: argparse.Namespace) -> int:
    catalog = check_inputs(args)  # before the job's imports (torch): mistakes answer at once
    from ..generate import run_generate

    # unusable input or settings raise a usage error: one line, exit 2 (cli.main)
    return finish(run_generate(job_config(args), catalog=catalog), args.fail_on_error)
