"""The driver-side checks of the model options (variant, device, weights) and what a command
that runs a model in this process builds from them. The options themselves are declared once,
in `selva_ray.shared_settings`.

Nothing here imports torch or Ray at module level: the parser must build in milliseconds.
"""

from __future__ import annotations

import argparse

from .. import validate
from ..runtime import resolve_device, resolve_dtype
from ..settings import add_options, from_args
from ..shared_settings import add_threshold_args, thresholds_from_args


def add_job_options(
    p: argparse.ArgumentParser, config_cls: type, run, *, thresholds: bool = False
) -> None:
    """A Ray job's flags: one per setting of its config class (`selva_ray.settings`), then the
    QA threshold flags for a job that flags clips. `run` runs the command; `job_config` builds
    the config of its command line."""
    add_options(p, config_cls)
    if thresholds:
        add_threshold_args(p)
    p.set_defaults(run=run, job_config_class=config_cls)


def job_config(args: argparse.Namespace):
    """The config of a Ray job's command line (`add_job_options`): each setting from its flag,
    the settings given recorded for `--print-config` and the run's `_meta.json`, and the QA
    thresholds of a job with threshold flags (ThresholdsError for a bad thresholds file)."""
    from ..config_file import job_settings

    extra = {"thresholds": thresholds_from_args(args)} if hasattr(args, "qa_thresholds") else {}
    return from_args(args.job_config_class, args, flags=job_settings(args), **extra)


def check_model_args(args: argparse.Namespace, *, local_device: bool = True) -> None:
    """Driver-side checks of the model options: variant, device, every weight file at once."""
    validate.check_variant(args.variant)
    validate.check_device(args.device, local=local_device)
    validate.check_weights(args.variant, args.weights_dir, offline=args.offline)


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


def finish(summary, fail_on_error: bool = False) -> int:
    """Print a job's summary lines; its exit status (1 when clips failed as the flags say)."""
    for line in summary.lines():
        print(line)
    return summary.exit_code(fail_on_error)
