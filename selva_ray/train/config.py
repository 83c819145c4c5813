"""Settings of a LoRA training run, their checks, and which of them a resumed run must keep."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from selva_core.defaults import DEFAULT_CFG, DEFAULT_STEPS

from .. import shared_settings as s
from .. import validate
from ..errors import UsageError
from ..settings import BOTH, NEGATED, SWITCH, opt, resumable

LR_SCHEDULES = ("constant", "cosine")
TIMESTEP_MODES = ("uniform", "logit_normal", "curriculum")
INIT_MODES = ("standard", "pissa")


def extract_command(features: str, variant: str | None, *, suffix: str = "") -> str:
    """The extract command that makes a features folder training can use. `suffix`: the
    folder already holds features made otherwise, which extract refuses to mix, so the
    command writes `<features><suffix>` beside it."""
    output = f"{features.rstrip('/')}{suffix}"
    return (
        f"selva-ray extract --input CATALOG --output {output} --variant {variant or 'VARIANT'} "
        "--with-audio-latents"
    )


RESUMABLE = {"resumable": True}  # a plain field a resumed run may change


class TrainConfigError(UsageError):
    """Unusable settings (the command exits 2)."""


CLUSTER, ADAPTER, OPTIMISATION, EVALUATION = (
    "cluster",
    "adapter",
    "optimisation",
    "evaluation and checkpoints",
)


@dataclass
class TrainConfig:
    features: str = opt(help="features folder (with audio latents)", required=True, resumable=True)
    output: str = opt(help="run folder (local or shared filesystem)", required=True, resumable=True)
    # None: the variant the features were extracted for
    variant: str | None = s.variant_opt(None, "model variant (default: the features' variant)")
    workers: int = opt(
        1,
        type=validate.int_range(1, 1024),
        group=CLUSTER,
        help="Ray Train workers (default 1)",
        resumable=True,
    )
    use_gpu: bool = opt(
        False, kind=SWITCH, group=CLUSTER, help="one GPU per worker", resumable=True
    )
    # None: the planner's even share (runner.plan)
    cpus_per_worker: float | None = opt(
        None,
        type=validate.float_range(0.0, 1024.0, low_open=True),
        group=CLUSTER,
        help="CPUs reserved per worker (default: an even share of the cluster's CPUs, at most "
        "1, after the data reader's; a size that does not fit is refused)",
        resumable=True,
    )
    # base weights; None: bf16 (autocast) on GPU, fp32 on CPU
    precision: str | None = s.precision_opt(
        help="base weights (default: bf16 autocast on GPU, fp32 on CPU; adapters are fp32)",
        choices=("fp32", "bf16"),
        group=CLUSTER,
    )
    max_failures: int = opt(
        2,
        type=validate.int_range(0, 1000),
        group=CLUSTER,
        help="worker-group restarts, and retries of a worker group that cannot start (default 2)",
        resumable=True,
    )
    ray_address: str | None = s.ray_address_opt(group=CLUSTER, resumable=True)
    weights_dir: str | None = s.weights_dir_opt(group=CLUSTER, resumable=True)
    offline: bool = s.offline_opt(group=CLUSTER, resumable=True)
    check_weights: bool = s.check_weights_opt(group=CLUSTER, resumable=True)
    dry_run: bool = s.dry_run_opt(group=CLUSTER, resumable=True)
    rank: int = opt(
        16, type=validate.int_range(1, 1024), group=ADAPTER, help="LoRA rank, 1..1024 (default 16)"
    )
    alpha: float | None = opt(  # None: 2 * rank
        None,
        type=validate.float_range(0.0, 1e6, low_open=True),
        group=ADAPTER,
        help="LoRA alpha, > 0 (default 2 x rank)",
    )
    init: str = opt("pissa", choices=("pissa", "standard"), group=ADAPTER, help="default pissa")
    rslora: bool = opt(
        True,
        kind=BOTH,
        group=ADAPTER,
        help="scale alpha/sqrt(r) instead of alpha/r (default on)",
    )
    targets: tuple[str, ...] = opt(
        ("attn.qkv",),
        flag="--target",
        cli_default="attn.qkv",
        group=ADAPTER,
        help="comma-separated layer suffixes to adapt (default attn.qkv; e.g. attn.qkv,linear1)",
    )
    # optimisation (steps are optimizer steps; one consumes the whole global batch)
    steps: int = opt(
        2000,
        type=validate.int_range(1, 10_000_000),
        group=OPTIMISATION,
        help="optimizer steps (default 2000)",
    )
    # global: clips per optimizer step over all workers and micro-batches
    batch_size: int = opt(
        4, type=validate.int_range(1, 65536), group=OPTIMISATION, help="global batch (default 4)"
    )
    grad_accum: int = opt(
        1,
        type=validate.int_range(1, 65536),
        group=OPTIMISATION,
        help="micro-batches per step (default 1)",
    )
    lr: float = opt(
        1e-4,
        type=validate.float_range(0.0, 1.0, low_open=True),
        group=OPTIMISATION,
        help="learning rate, in (0, 1] (default 1e-4)",
    )
    lora_plus_ratio: float = opt(  # lr of every lora_B = lr * ratio (LoRA+)
        1.0,
        type=validate.float_range(0.0, 1000.0, low_open=True),
        group=OPTIMISATION,
        help="lr of B = lr x ratio, in (0, 1000] (default 1)",
    )
    lr_schedule: str = opt(
        "constant",
        choices=LR_SCHEDULES,
        group=OPTIMISATION,
        help="after warmup: constant or cosine decay to 0",
    )
    warmup: int = opt(
        100, type=validate.int_range(0), group=OPTIMISATION, help="warmup steps (default 100)"
    )
    grad_clip: float = 1.0
    # objective
    timesteps: str = opt(
        "uniform",
        choices=TIMESTEP_MODES,
        group=OPTIMISATION,
        help="t sampler (curriculum: logit-normal for 60%% of steps, then uniform)",
    )
    logit_normal_sigma: float = 1.0
    curriculum_switch: float = 0.6  # curriculum: logit-normal before this fraction of steps
    cfg_dropout: float = opt(
        0.1,
        type=validate.ratio,
        group=OPTIMISATION,
        help="condition dropout, 0..1 (default 0.1)",
    )
    mixup: float = opt(  # Beta(a, a) latent mixup; 0 is off
        0.0,
        type=validate.float_range(0.0, 1000.0),
        group=OPTIMISATION,
        help="latent mixup Beta(a,a), 0..1000; 0 = off (default)",
    )
    latent_noise: float = opt(  # x1 += eps * sigma * std(x1); 0 is off
        0.0,
        type=validate.float_range(0.0, 10.0),
        group=OPTIMISATION,
        help="latent noise sigma, 0..10; 0 = off (default)",
    )
    seed: int = s.seed_opt(f"0..{validate.MAX_SEED} (default 42)", group=OPTIMISATION)
    # data, evaluation, checkpoints
    val_fraction: float = opt(
        0.1,
        type=validate.float_range(0.0, 0.9),
        group=EVALUATION,
        help="held-out share of the clips, 0..0.9 (default 0.1)",
    )
    eval_every: int = opt(
        500,
        type=validate.positive_int,
        group=EVALUATION,
        help="steps between evals (default 500)",
        resumable=True,
    )
    save_every: int = opt(
        500,
        type=validate.positive_int,
        group=EVALUATION,
        help="steps between checkpoints (default 500)",
        resumable=True,
    )
    eval_timesteps: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    preview_clips: int = opt(
        2,
        type=validate.int_range(0, 100),
        group=EVALUATION,
        help="preview clips per eval (default 2)",
        resumable=True,
    )
    preview_steps: int = field(default=DEFAULT_STEPS, metadata=RESUMABLE)
    preview_cfg: float = field(default=DEFAULT_CFG, metadata=RESUMABLE)
    surgery: bool = opt(
        True,
        kind=NEGATED,
        group=EVALUATION,
        help="skip Spectral Surgery at the end",
        resumable=True,
    )
    resume: bool = opt(
        False, kind=SWITCH, group=EVALUATION, help="continue the run in --output", resumable=True
    )
    progress_every_s: float = field(default=10.0, metadata=RESUMABLE)
    # Long videos: the features folder's windows are the training samples (one window with its
    # own audio each); given, these must match how the folder was cut (None: as it was).
    window: float | None = s.window_opt(
        None,
        "window length the features were cut into (default: as extracted; a different value "
        "is refused)",
        group=EVALUATION,
        resumable=True,
    )
    overlap: float | None = s.overlap_opt(
        None,
        "window overlap the features were cut with (default: as extracted)",
        group=EVALUATION,
        resumable=True,
    )
    # Test hook: the last worker dies (os._exit) once, after finishing this step.
    fail_at_step: int | None = field(default=None, metadata=RESUMABLE)
    # Benchmarks: seeded random generator weights for a published variant (nothing loaded).
    random_weights: bool = False
    flags: dict | None = None  # the command line's settings (`--print-config`), to _meta.json

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = tuple(t for t in self.targets.replace(",", " ").split() if t)
        self.targets = tuple(self.targets)
        self.eval_timesteps = tuple(float(t) for t in self.eval_timesteps)

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank

    @property
    def micro_batch(self) -> int:
        """Clips per forward pass on one worker."""
        return self.batch_size // (self.workers * self.grad_accum)

    def check(self) -> None:
        """Raise TrainConfigError naming the first unusable setting."""
        positive = {
            "workers": self.workers,
            "rank": self.rank,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "eval_every": self.eval_every,
            "save_every": self.save_every,
            "preview_steps": self.preview_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.batch_size % (self.workers * self.grad_accum):
            raise TrainConfigError(
                f"--batch-size {self.batch_size} must be a multiple of --workers x --grad-accum "
                f"({self.workers} x {self.grad_accum}): every worker runs the same micro-batch"
            )
        if self.init not in INIT_MODES:
            raise TrainConfigError(f"--init must be one of {INIT_MODES}, got {self.init!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainConfigError(f"--lr-schedule must be one of {LR_SCHEDULES}")
        if self.timesteps not in TIMESTEP_MODES:
            raise TrainConfigError(f"--timesteps must be one of {TIMESTEP_MODES}")
        if not self.lr > 0 or not self.lora_plus_ratio > 0:
            raise TrainConfigError("--lr and --lora-plus-ratio must be > 0")
        if self.alpha is not None and not self.alpha > 0:
            raise TrainConfigError(f"--alpha must be > 0, got {self.alpha}")
        if self.warmup < 0 or self.preview_clips < 0 or self.max_failures < 0:
            raise TrainConfigError("--warmup, --preview-clips and --max-failures must be >= 0")
        if not 0.0 <= self.cfg_dropout <= 1.0:
            raise TrainConfigError(f"--cfg-dropout must be in [0, 1], got {self.cfg_dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TrainConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.mixup < 0 or self.latent_noise < 0:
            raise TrainConfigError("--mixup and --latent-noise must be >= 0")
        if not self.targets:
            raise TrainConfigError("--target must name at least one layer suffix")
        if not all(0.0 < t < 1.0 for t in self.eval_timesteps):
            raise TrainConfigError("evaluation timesteps must lie in (0, 1)")
        if self.precision not in (None, "fp32", "bf16"):
            # fp16 would need loss scaling; bf16 has fp32's range and needs none.
            raise TrainConfigError(f"--precision must be fp32 or bf16, got {self.precision}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("flags")  # a record of the command line, not a setting of the run
        d["targets"] = list(self.targets)
        d["eval_timesteps"] = list(self.eval_timesteps)
        return d

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def trajectory(self) -> dict:
        """The settings that fix the sequence of updates (see RESUMABLE_CHANGES)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUMABLE_CHANGES}

    def resume_conflicts(self, saved: dict) -> list[str]:
        """'name: saved -> now' for every trajectory setting that differs from a saved run."""
        old = TrainConfig.from_dict(saved).trajectory()
        new = self.trajectory()
        return [
            f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}"
            for k in sorted(new)
            if old.get(k) != new.get(k)
        ]


# Settings a resumed run may change: where and how it runs, how often it reports (each marked
# `resumable` where it is declared). Everything else fixes the sequence of updates, so
# changing it would not continue the same run. The worker count may change because the global
# batch, its sampling and every per-clip random draw are independent of it; the windows are
# only checked against the features folder (its windows are fixed).
RESUMABLE_CHANGES = resumable(TrainConfig)
