"""The qa job's settings: one declaration each (flag, type, default, range, help)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from .. import shared_settings as s
from .. import validate
from ..settings import NEGATED, opt

DESYNC = "DeSync (audio-visual offset, full Synchformer)"


def desync_variant_name(text: str) -> str:
    """argparse type: `synchformer` or a variant name (tiny ones score with random weights)."""
    from selva_core.variants import VARIANTS

    if text != "synchformer" and text not in VARIANTS:
        raise argparse.ArgumentTypeError(
            f"unknown variant {text!r}; choose synchformer, tiny or a variant name"
        )
    return text


def default_thresholds():
    from selva_core.qa import QAThresholds  # torch: only when a config is made

    return QAThresholds()


@dataclass
class QAConfig(s.BatchJobSettings):
    input: str = s.input_opt("catalog folder or manifest (path or URI)")
    output: str = s.output_opt()
    allow_roots: list[str] | None = s.allow_roots_opt()
    # the thresholds file and flags (shared_settings.add_threshold_args) make this object
    thresholds: Any = None
    max_duration: float = opt(
        600.0,
        type=validate.float_range(0.0, validate.MAX_QA_SECONDS, low_open=True),
        help="seconds measured per clip from its start, unless the catalog says, at most "
        f"{validate.MAX_QA_SECONDS:g} (default 600)",
    )
    desync: bool = opt(
        True, kind=NEGATED, group=DESYNC, help="skip DeSync (desync_s stays null, no model)"
    )
    # "synchformer" (published weights) or a tiny variant; None skips DeSync too
    desync_variant: str | None = opt(
        "synchformer",
        type=desync_variant_name,
        group=DESYNC,
        help="synchformer (published synchformer_state_dict.pth, default) or tiny (seeded "
        "random weights: offline runs and tests; the scores mean nothing)",
    )
    desync_precision: str = s.precision_opt(
        help="DeSync model precision (default fp32: scores are argmaxes over a 0.2 s grid)",
        choices=("bf16", "fp16", "fp32"),
        default="fp32",
        group=DESYNC,
    )
    device: str = s.device_opt(help="cpu, cuda or auto (default: GPUs if any)", group=DESYNC)
    actors: int | None = s.actors_opt("DeSync", group=DESYNC)
    gpus_per_actor: float = s.gpus_per_actor_opt("DeSync", group=DESYNC)
    actor_memory_gb: float | None = s.actor_memory_opt("DeSync", group=DESYNC)
    desync_batch_size: int = opt(
        4,
        type=validate.int_range(1, 1024),
        group=DESYNC,
        help="clips per actor call (default 4)",
    )
    weights_dir: str | None = s.weights_dir_opt(group=DESYNC)
    offline: bool = s.offline_opt(group=DESYNC)

    def __post_init__(self) -> None:
        if self.thresholds is None:
            self.thresholds = default_thresholds()

    def desync_settings(self):
        """The DeSync model's settings (None: no DeSync)."""
        if not self.desync or self.desync_variant is None:
            return None
        from ..stages.desync import DesyncSettings

        return DesyncSettings(
            self.desync_variant,
            precision=self.desync_precision,
            weights_dir=self.weights_dir,
            offline=self.offline,
        )
