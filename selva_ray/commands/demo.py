"""`selva-ray demo`: the whole chain offline on the embedded catalog, local Ray, tiny model:
extract -> train a LoRA -> generate with and without it (muxed) -> report pages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import validate
from ..shared_settings import RAY_ADDRESS_HELP, variant_name


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole chain offline on a built-in catalog: extract, train, generate, report",
        description=(
            "Write a small built-in catalog of synthetic videos to OUTPUT/catalog, start one "
            "local Ray cluster, and run the jobs on it exactly as their commands do: `extract` "
            "with audio latents (OUTPUT/features), `train` a LoRA for a few steps on 2 Ray "
            "Train workers (OUTPUT/train), `generate` every clip with and without the adapter, "
            "muxed (OUTPUT/generate, OUTPUT/generate-lora), and `report` pages of those runs. "
            "Ends with a table of the stages, their times and outputs. Run it again: every "
            "stage finds its work done and skips it. The `tiny` variants need no weights; a "
            "real one (`--variant small_16k --weights-dir D`) needs its files in D."
        ),
    )
    p.add_argument("--output", type=Path, default=Path("selva-demo"), help="output folder")
    p.add_argument(
        "--variant",
        type=variant_name,
        default="tiny",
        help="tiny, tiny_44k or mmaudio_tiny (random weights, offline), or a real variant "
        "whose weights are in --weights-dir (default: tiny)",
    )
    p.add_argument("--weights-dir", help="weights folder for a real variant (never downloads)")
    p.add_argument(
        "--steps", type=validate.int_range(1, 10_000), default=4, help="LoRA training steps"
    )
    p.add_argument("--ray-address", help=RAY_ADDRESS_HELP)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    validate.check_output_writable(str(args.output))
    validate.check_weights(args.variant, args.weights_dir, offline=True)

    from ..demo import DemoConfig, DemoStageError, run_demo

    config = DemoConfig(
        output=args.output,
        variant=args.variant,
        weights_dir=args.weights_dir,
        ray_address=args.ray_address,
        train_steps=args.steps,
    )
    try:
        result = run_demo(config)
    except DemoStageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print()
    for line in result.table():
        print(line)
    return result.exit_code
