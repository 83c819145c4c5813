"""`selva-ray doctor`: what is installed, whether it matches the lock, and what is broken."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="check the installation: versions, CUDA, torchaudio, the lock",
        description=(
            "Print the versions of torch, torchvision, torchaudio, ray, pyarrow, av, "
            "transformers and open_clip, whether CUDA is available, whether torchaudio's native "
            "library loads, and every needed package whose installed version differs from the "
            "lock (constraints.txt). Exit 1 when something is off."
        ),
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..environment import report

    lines, healthy = report()
    print("\n".join(lines))
    return 0 if healthy else 1
