"""`selva-ray demo`: the main job offline, on the embedded catalog, local Ray, tiny model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import validate


def tiny_variant(text: str) -> str:
    from selva_core.variants import VARIANTS

    tiny = [n for n, s in VARIANTS.items() if s.is_tiny]
    if text not in tiny:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a tiny variant; the demo runs {', '.join(tiny)} "
            "(use `selva-ray extract` for real weights)"
        )
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the feature-extraction job offline on a built-in catalog (tiny model)",
        description=(
            "Write a small built-in catalog of synthetic videos to OUTPUT/catalog, then run "
            "`selva-ray extract` on it with a local Ray cluster and the `tiny` variant "
            "(random weights, no downloads), audio latents included, into OUTPUT/features. "
            "Run it twice to see finished clips skipped."
        ),
    )
    p.add_argument("--output", type=Path, default=Path("selva-demo"), help="output folder")
    p.add_argument(
        "--variant", type=tiny_variant, default="tiny", help="tiny, tiny_44k or mmaudio_tiny"
    )
    p.add_argument("--ray-address", help="Ray cluster address (default: a local cluster)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    validate.check_output_writable(str(args.output))

    from ..demo import write_demo_catalog
    from ..extract import ExtractConfig, run_extract

    catalog = write_demo_catalog(args.output / "catalog")
    print(f"catalog: {catalog}")
    summary = run_extract(
        ExtractConfig(
            input=str(catalog),
            output=str(args.output / "features"),
            variant=args.variant,
            with_audio_latents=True,
            shard_size=2,
            batch_size=2,
            window=0.0,  # one row per demo clip (its 9 s clip is cut at --max-duration)
            ray_address=args.ray_address,
        )
    )
    for line in summary.lines():
        print(line)
    print("next: selva-ray generate-one VIDEO --prompt TEXT --variant tiny --mux")
    return summary.exit_code(fail_on_error=True)
