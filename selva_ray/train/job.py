"""The LoRA training job's driver: check the features and the run folder, split the clips,
hand both splits to Ray Train as Ray Datasets, run `TorchTrainer.fit`, report.

Run folder (`--output`, a local or shared-filesystem path every worker can write):

    _meta.json          {"job": "train", "settings": ...}: a resumed run must keep the
                        settings that fix its updates (`selva-ray report` shows them)
    split.json          train / validation clip ids (fixed at the first start)
    metrics.jsonl       one line per step (+ step 0: validation loss before training)
    loss.png            train loss raw and smoothed, validation loss
    eval/step_N/        preview FLACs, reference FLACs, spectrogram PNGs, metrics.json
    checkpoints/        Ray Train storage: step_NNNNNN/{state.pt, adapter.safetensors}
    adapter.safetensors           the trained adapter (selva_core.lora format)
    adapter.surgery.safetensors   the same after Spectral Surgery (unless --no-surgery)
    summary.json        the run summary (losses, clips/s, surgery calibration loss)

`--resume` reruns with the same `RunConfig(name, storage_path)`, so Ray Train hands the
workers the latest checkpoint; `FailureConfig(max_failures)` restarts a worker group that
lost a worker from that checkpoint within the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config_file import config_record
from ..io.catalog import absolute
from ..io.output_dir import OutputDir
from ..runner.connect import connect
from ..runner.plan import TrainPlan, plan_training
from .config import TrainConfig, TrainConfigError
from .data import (
    FeatureFolderError,
    check_windows,
    clip_dataset,
    inspect_features,
    list_clips,
    split_ids,
)
from .runlog import read_json, write_json

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # off where the cluster ends here
log = logging.getLogger(__name__)

CONFIG_FILE = "_meta.json"
SPLIT_FILE = "split.json"
STORAGE_NAME = "checkpoints"


class TrainFailed(RuntimeError):
    """Training stopped with an error (the command exits 1)."""


@dataclass
class TrainSummary:
    output: str
    status: str = "complete"
    steps: int = 0
    num_train: int = 0
    num_val: int = 0
    wall_s: float = 0.0
    details: dict = field(default_factory=dict)

    def exit_code(self, fail_on_error: bool = False) -> int:
        """A run that ended has trained (a failed one raises TrainFailed)."""
        return 0

    def lines(self) -> list[str]:
        d = self.details
        out = [
            f"{self.status}: {self.steps} steps on {self.num_train} training clips "
            f"({self.num_val} validation) in {self.wall_s:.1f} s"
        ]
        if d.get("final_train_loss") is not None:
            rate = d.get("clips_per_s")
            out.append(
                f"train loss {d['final_train_loss']:.4f}"
                + (f", {rate:.2f} clips/s" if rate else "")
            )
        if d.get("final_val_loss") is not None:
            out.append(f"validation loss {d['first_val_loss']:.4f} -> {d['final_val_loss']:.4f}")
        if d.get("adapter"):
            out.append(f"adapter: {d['adapter']}")
        surgery = d.get("surgery") or {}
        if surgery.get("ran"):
            out.append(
                f"spectral surgery: {surgery['adapter']} (calibration loss "
                f"{surgery['calibration_loss_before']:.5f} -> "
                f"{surgery['calibration_loss_after']:.5f})"
            )
        out.append(f"run folder: {self.output} (metrics.jsonl, loss.png, eval/)")
        return out


def _prepare_run_dir(config: TrainConfig, run_dir: Path) -> dict | None:
    """Claim the run folder, or check a resumed run's settings; returns the saved settings."""
    meta = read_json(run_dir / CONFIG_FILE)
    saved = meta.get("settings") if meta and meta.get("job") == "train" else None
    if meta is not None and saved is None:
        raise TrainConfigError(f"{run_dir} holds another job's output; choose another --output")
    if saved is None:
        if config.resume:
            raise TrainConfigError(f"--resume: {run_dir} holds no run to resume")
        return None
    if not config.resume:
        raise TrainConfigError(
            f"{run_dir} already holds a training run; pass --resume to continue it, or "
            f"choose another --output"
        )
    conflicts = config.resume_conflicts(saved)
    if conflicts:
        raise TrainConfigError(
            "--resume with settings that change the run: " + "; ".join(conflicts)
        )
    return saved


def _train_val(config: TrainConfig, info, listing) -> tuple[list, list]:
    """The clip-level split; refused when the training side cannot fill one global batch."""
    train, val = split_ids(listing.usable, config.val_fraction, listing.groups)
    if len(train) < config.batch_size:
        raise FeatureFolderError(
            f"{info.path}: {len(train)} training clips with audio (of {len(listing.usable)}, "
            f"{len(val)} kept for validation) but the global batch is {config.batch_size}; "
            f"lower --batch-size or add clips"
        )
    return train, val


def _split(config: TrainConfig, info, run_dir: Path) -> dict:
    saved = read_json(run_dir / SPLIT_FILE)
    if saved is not None:
        return saved
    listing = list_clips(info)
    if listing.silent:
        log.warning(
            "%d clip(s) have no audio track and are left out of training", len(listing.silent)
        )
    train, val = _train_val(config, info, listing)
    blob = json.dumps({"train": train, "val": val}).encode()
    split = {
        "train": train,
        "val": val,
        "silent": listing.silent,
        "val_fraction": config.val_fraction,
        "hash": hashlib.sha256(blob).hexdigest()[:16],
    }
    write_json(run_dir / SPLIT_FILE, split)
    return split


def run_train(config: TrainConfig) -> TrainSummary:
    """Run (or resume) a training run; the run folder is held by this run's lease from the
    end of the checks to the end of training, so a second run into it exits 2."""
    with ExitStack() as lease:
        return _run_train(config, lease)


def _run_train(config: TrainConfig, lease: ExitStack) -> TrainSummary:
    t0 = time.perf_counter()
    config.check()
    # workers resolve paths in their own working folder: hand them absolute ones
    config = replace(config, features=absolute(config.features))
    info = inspect_features(config.features, config.variant)
    check_windows(info, config.window, config.overlap)
    config = replace(config, variant=info.variant)
    run_dir = Path(config.output).absolute()
    config = replace(config, output=str(run_dir))
    if config.dry_run:
        return _dry_run(config, info, run_dir, t0)
    if config.resume:
        done = read_json(run_dir / "summary.json")
        if done and done.get("status") == "complete" and done.get("steps") == config.steps:
            _prepare_run_dir(config, run_dir)
            return _summary(config, run_dir, t0, status="already complete")
    _prepare_run_dir(config, run_dir)
    connection = connect(config.ray_address, progress=False)
    plan = plan_training(config.workers, config.cpus_per_worker, use_gpu=config.use_gpu)
    log.info("train %s", plan.summary())
    lease.enter_context(OutputDir(str(run_dir)).acquire_lease())
    _prepare_run_dir(config, run_dir)  # again: a run that held the folder may have just ended
    split = _split(config, info, run_dir)  # reads the features; writes nothing if they fail
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(split["train"]) < config.batch_size:
        raise FeatureFolderError(
            f"{len(split['train'])} training clips but the global batch is {config.batch_size}"
        )
    meta = {"job": "train", "settings": config.to_dict()}
    if config.resume:
        meta = read_json(run_dir / CONFIG_FILE)  # the first start's settings stay
    record = {
        "config": config_record(config),
        "plan": plan.describe(),
        "ray": connection.describe(),
    }
    write_json(run_dir / CONFIG_FILE, {**meta, **record})
    log.info(
        "training %s LoRA r%d (%s) on %d clips (%d validation), %d worker(s), %d steps",
        config.variant,
        config.rank,
        config.init,
        len(split["train"]),
        len(split["val"]),
        config.workers,
        config.steps,
    )
    _fit(config, info, split, run_dir, plan, own_cluster=connection.ends_with_driver)
    return _summary(config, run_dir, t0)


def _dry_run(config: TrainConfig, info, run_dir: Path, t0: float):
    """`--dry-run`: the worker group planned for the cluster view (`runner.dry_run`), the
    split and the steps, with the run folder only read."""
    import math

    from ..runner.dry_run import DryRun, cluster_view

    saved = _prepare_run_dir(config, run_dir)  # refuses what a run would refuse; writes nothing
    view, where = cluster_view(config.ray_address)
    plan = plan_training(config.workers, config.cpus_per_worker, use_gpu=config.use_gpu, view=view)
    listing = list_clips(info)
    train, val = _train_val(config, info, listing)
    state = "resumes the run there" if saved else "does not exist (a run creates it)"
    if saved is None and run_dir.exists():
        state = "exists, holds no run (a run claims it)"
    estimate = {
        "clips with audio": len(listing.usable),
        "clips without audio (left out)": len(listing.silent),
        "training clips": len(train),
        "validation clips": len(val),
        "steps": config.steps,
        "global batch (clips per step)": config.batch_size,
        "micro-batch per worker": config.micro_batch,
        "epochs": config.steps * config.batch_size / max(1, len(train)),
        "clip passes (steps x batch)": config.steps * config.batch_size,
        "evaluations": math.ceil(config.steps / config.eval_every) if config.eval_every else 0,
    }
    return DryRun(
        job="train",
        input=config.features,
        output=f"{run_dir} ({state})",
        cluster=where,
        plan=plan,
        estimate=estimate,
        wall_s=time.perf_counter() - t0,
    )


def _fit(
    config: TrainConfig,
    info,
    split: dict,
    run_dir: Path,
    plan: TrainPlan,
    *,
    own_cluster: bool,
) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    from .loop import train_loop_per_worker

    datasets = {
        "train": clip_dataset(info, split["train"], plan.reader_cpus),
        "val": clip_dataset(info, split["val"], plan.reader_cpus),
    }
    resources = {"CPU": plan.cpus_per_worker}
    if config.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(),
            "num_train": len(split["train"]),
            "num_val": len(split["val"]),
            "max_duration": info.max_duration,
            "features": info.path,
            "features_settings_hash": info.settings_hash,
            "split_hash": split["hash"],
            "storage_name": STORAGE_NAME,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers, use_gpu=config.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=STORAGE_NAME,
            storage_path=str(run_dir),
            # max_failures bounds worker-group restarts; controller_failure_limit bounds the
            # retries of a worker group that cannot start (Ray's default: for ever)
            failure_config=ray.train.FailureConfig(
                max_failures=config.max_failures,
                controller_failure_limit=config.max_failures,
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
        # Every worker reads both splits whole: batches are cut from a global permutation.
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    # One node that ends with this driver (a private cluster, or the one the caller's own
    # `ray.init()` started): no other node can be preempted under the run, so Ray Train's
    # preemption watcher (an actor polling for drained nodes) has nothing to watch. Ray
    # Train passes the variable from this driver to its controller, in `fit`; it is set for
    # this run only (a user's own setting wins), so that a later run in this process on a
    # cluster joined by address keeps the watcher.
    watcher_off = own_cluster and PREEMPTION_WATCHER not in os.environ
    if own_cluster:
        _without_pg_cleaner(trainer)
    if watcher_off:
        os.environ[PREEMPTION_WATCHER] = "0"
    interrupted = _abort_on_signals(trainer, run_dir)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        trainer.fit()
    except (ray.train.TrainingFailedError, ray.exceptions.RayActorError, SystemExit) as exc:
        if interrupted.is_set():
            raise KeyboardInterrupt(interrupted.message(run_dir)) from None
        if isinstance(exc, SystemExit):
            raise
        raise TrainFailed(
            f"training failed ({_first_line(exc)}); rerun with --resume to continue from the "
            f"last checkpoint in {run_dir / STORAGE_NAME}"
        ) from exc
    finally:
        if watcher_off:
            os.environ.pop(PREEMPTION_WATCHER, None)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in previous.items():  # the command's own handlers again
                signal.signal(sig, handler)
    if interrupted.is_set():
        raise KeyboardInterrupt(interrupted.message(run_dir))


class _Interrupted(threading.Event):
    signal = "SIGINT"

    def message(self, run_dir: Path) -> str:
        return (
            f"{self.signal}; rerun with --resume to continue from the last checkpoint in {run_dir}"
        )


def _abort_on_signals(trainer, run_dir: Path) -> _Interrupted:
    """Ctrl-C and SIGTERM abort the run through Ray Train's controller (its checkpoints stay
    for --resume) and then end the command as an interrupt (one line, exit 130). Ray Train
    installs its own SIGINT handler in `fit`, which exits the process in its own way; ours
    takes its place and handles SIGTERM too."""
    import ray

    interrupted = _Interrupted()

    def register(controller) -> None:
        def handler(signum, frame) -> None:
            if interrupted.is_set():
                raise KeyboardInterrupt(interrupted.message(run_dir))  # a second signal: now
            interrupted.signal = signal.Signals(signum).name
            interrupted.set()
            log.info("%s: aborting the training run", interrupted.signal)
            with contextlib.suppress(ray.exceptions.RayActorError):
                ray.get(controller.abort.remote())

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)

    trainer._register_sigint_handler = register  # Ray Train's hook for its handler
    return interrupted


def _without_pg_cleaner(trainer) -> None:
    """Leave out Ray Train's PlacementGroupCleaner on a cluster that ends with this driver
    (the private cluster a command starts, or the caller's own local `ray.init()`).

    The cleaner is a detached actor that removes the run's placement group once the Train
    controller is gone, asking Ray's state API whether it lives; the actor finds that API
    through address "auto", i.e. whatever Ray instance the host shows it, not necessarily
    the cluster it runs on. With another Ray on the host that printed a `ConnectionError:
    Found multiple active Ray instances` traceback in every run (or, with another cluster
    registered by `ray start`, asked that cluster about our controller). Such a cluster
    ends with the driver and takes its placement groups with it, so there is nothing for the
    cleaner to do. Ray Train has no setting for it: its default callbacks are filtered, as
    `_abort_on_signals` takes its SIGINT hook. Clusters joined by address keep it."""
    defaults = trainer._create_default_callbacks

    def callbacks() -> list:
        return [cb for cb in defaults() if type(cb).__name__ != "PlacementGroupCleanerCallback"]

    trainer._create_default_callbacks = callbacks


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _summary(config: TrainConfig, run_dir: Path, t0: float, status: str | None = None):
    from .loop import read_summary

    details = read_summary(run_dir) or {}
    if not details:
        raise TrainFailed(f"training ended without a summary in {run_dir}")
    return TrainSummary(
        output=str(run_dir),
        status=status or details.get("status", "complete"),
        steps=details.get("steps", config.steps),
        num_train=details.get("num_train", 0),
        num_val=details.get("num_val", 0),
        wall_s=time.perf_counter() - t0,
        details=details,
    )
