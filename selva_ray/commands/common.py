"""Options shared by the commands that run a model: variant, device, precision, weights."""

from __future__ import annotations

import argparse

from ..runtime import DTYPES, resolve_device, resolve_dtype


def add_model_args(p: argparse.ArgumentParser, *, default_variant: str) -> None:
    p.add_argument(
        "--variant",
        default=default_variant,
        help=f"model variant (default {default_variant}; `tiny` runs offline on random weights; "
        "list them with `selva-ray weights list`)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument(
        "--precision",
        choices=sorted(DTYPES),
        default=None,
        help="model precision (default: bf16 on GPU, fp32 on CPU)",
    )
    p.add_argument("--weights-dir", help="local weights folder (default $SELVA_WEIGHTS_DIR)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="never download; fail with the fetch command when a file is missing",
    )


def resolve_store(args: argparse.Namespace):
    from selva_core.weights import WeightStore

    return WeightStore(args.weights_dir, allow_download=False if args.offline else None)


def pipeline_config(args: argparse.Namespace, **overrides):
    from selva_core.pipeline import PipelineConfig

    device = resolve_device(args.device)
    return PipelineConfig(
        variant=args.variant,
        dtype=resolve_dtype(args.precision, device),
        device=device,
        **overrides,
    )
