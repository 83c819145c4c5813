"""The per-worker LoRA train loop (Ray Train V2 `TorchTrainer`).

Every worker: reads the training clips through Ray Data (`get_dataset_shard`) into memory,
builds the same frozen base (PiSSA factors computed once on rank 0 and broadcast; DDP then
broadcasts every parameter and buffer from rank 0 at wrap time), trains only the adapter
(fp32 parameters and AdamW state; base in bf16 autocast on GPU, fp32 on CPU), and runs its
slice of each global batch. DDP all-reduces the adapter gradients, the only ones that exist.

Rank 0 alone evaluates, writes `metrics.jsonl`, `loss.png`, `eval/step_N/`, the checkpoints
(adapter, optimizer, scheduler, step, RNG states, through `ray.train.report`) and, at the end,
the adapter file and its Spectral Surgery twin.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from selva_core.flow_loss import flow_matching_loss, sample_timesteps

from .config import TrainConfig
from .data import ClipSet, derived_seed, global_batch, normalized_targets, steps_per_epoch
from .runlog import SUMMARY, RunLog, format_eta, read_json, write_json

ADAPTER = "default"
STATE_FILE = "state.pt"
FAIL_MARKER = ".fail_injected"


class FlowObjective(nn.Module):
    """Per-clip flow-matching losses; the module DDP wraps (its forward is the train step)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, x1, clip_f, sync_f, text_f, x0, t, lengths) -> torch.Tensor:
        g = self.generator
        cond = g.preprocess_conditions(clip_f, sync_f, text_f)
        return flow_matching_loss(g, x1, cond, x0, t, reduction="none", lengths=lengths)


# ---- schedule and per-clip draws --------------------------------------------------------------


def lr_factor(config: TrainConfig):
    """Multiplier of the base lr at optimizer step s (0-based): linear warmup to 1 over
    `warmup` steps (the first step already moves), then constant or cosine to 0 at `steps`."""
    warm, total, cosine = config.warmup, config.steps, config.lr_schedule == "cosine"

    def factor(s: int) -> float:
        if warm and s < warm:
            return (s + 1) / warm
        if not cosine or total <= warm:
            return 1.0
        progress = min(1.0, (s - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def timestep_sampler(config: TrainConfig, step: int) -> str:
    if config.timesteps == "curriculum":
        switch = int(config.steps * config.curriculum_switch)
        return "logit_normal" if step < switch else "uniform"
    return config.timesteps


@dataclass
class ClipDraw:
    drop_video: bool
    drop_text: bool
    t: float
    x0: torch.Tensor  # (L, C)
    eps: torch.Tensor | None  # latent-noise direction (L, C)


def clip_draw(config: TrainConfig, step: int, position: int, shape) -> ClipDraw:
    """The random draws of the clip at `position` of global batch `step`; a pure function of
    (seed, step, position), so any worker count and any resume give the same numbers."""
    gen = torch.Generator().manual_seed(derived_seed("clip", config.seed, step, position))
    drop_video = bool(torch.rand(1, generator=gen) < config.cfg_dropout)
    drop_text = bool(torch.rand(1, generator=gen) < config.cfg_dropout)
    t = sample_timesteps(
        1, timestep_sampler(config, step), sigma=config.logit_normal_sigma, generator=gen
    )
    x0 = torch.randn(shape, generator=gen)
    eps = torch.randn(shape, generator=gen) if config.latent_noise > 0 else None
    return ClipDraw(drop_video, drop_text, float(t), x0, eps)


def mixup_plan(config: TrainConfig, step: int) -> tuple[np.ndarray, float] | None:
    """(partner position of each position, lambda) for latent mixup at this step, or None.

    One lambda ~ Beta(a, a) per global batch and a permutation of its positions (MusicLDM);
    only the target latents are mixed, the conditions stay the clip's own."""
    if config.mixup <= 0 or config.batch_size < 2:
        return None
    rng = np.random.default_rng(derived_seed("mixup", config.seed, step))
    return rng.permutation(config.batch_size), float(rng.beta(config.mixup, config.mixup))


# ---- the worker -------------------------------------------------------------------------------


@dataclass
class Worker:
    config: TrainConfig
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    from selva_core import build
    from selva_core.lora import LoRAConfig, apply_lora, lora_layers
    from selva_core.variants import get_spec
    from selva_core.weights import WeightStore

    config = TrainConfig.from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    w = Worker(config, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    run_dir = Path(config.output)
    spec = get_spec(config.variant)
    on_gpu = w.device.type == "cuda"
    precision = config.precision or ("bf16" if on_gpu else "fp32")
    base_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    autocast = torch.autocast("cuda", dtype=base_dtype) if on_gpu and precision != "fp32" else None

    train = ClipSet.from_batches(
        ray.train.get_dataset_shard("train").iter_batches(batch_size=64, batch_format="numpy")
    )
    if len(train) != loop_config["num_train"]:
        raise RuntimeError(
            f"worker {w.rank} read {len(train)} training clips, expected {loop_config['num_train']}"
        )
    val = ClipSet.empty()
    if w.is_main:
        val = ClipSet.from_batches(
            ray.train.get_dataset_shard("val").iter_batches(batch_size=64, batch_format="numpy")
        )

    store = WeightStore(config.weights_dir, allow_download=False if config.offline else None)
    duration = loop_config["max_duration"]
    if config.random_weights:
        generator = build.random_generator(spec)
        generator.set_sequence(spec.sequence(duration))
        generator = generator.to(w.device, base_dtype).eval().requires_grad_(False)
    else:
        generator = build.load_generator(
            spec, store, dtype=base_dtype, device=w.device, duration=duration
        )
    train_seq = spec.sequence(duration)
    lora = LoRAConfig(
        rank=config.rank,
        alpha=config.lora_alpha,
        targets=config.targets,
        rslora=config.rslora,
        init=config.init,
        seed=config.seed,
    )
    _check_same_base(generator, lora, w)
    state = _latest_state(ray.train.get_checkpoint(), run_dir / loop_config["storage_name"])
    pissa = None
    if config.init == "pissa":
        # A resumed run reuses the factors it started from, so its base is bit-identical.
        pissa = _saved_pissa(state, lora) or _shared_pissa_init(generator, lora, w)
    apply_lora(generator, lora, adapter=ADAPTER, pissa_init=pissa)
    layers = lora_layers(generator, ADAPTER)
    a_params = [m.lora_A[ADAPTER] for m in layers.values()]
    b_params = [m.lora_B[ADAPTER] for m in layers.values()]
    params = a_params + b_params
    named = {f"{n}.lora_A": m.lora_A[ADAPTER] for n, m in layers.items()}
    named |= {f"{n}.lora_B": m.lora_B[ADAPTER] for n, m in layers.items()}

    objective: nn.Module = FlowObjective(generator)
    if w.world > 1:
        objective = ray.train.torch.prepare_model(
            objective, parallel_strategy_kwargs={"find_unused_parameters": False}
        )
    optimizer = torch.optim.AdamW(
        [
            {"params": a_params, "lr": config.lr},
            {"params": b_params, "lr": config.lr * config.lora_plus_ratio},
        ],
        weight_decay=0.0,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))

    log = RunLog(run_dir)
    start = 0
    if state is not None:
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(state["lora"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng(state["rng"])
        start = int(state["step"])
        if w.is_main:
            log.truncate(start)
            log.note_resume(start)
            print(f"[train] resumed from the checkpoint of step {start}", flush=True)

    # Normalised, zero-padded targets of every training clip (CPU); conditions on demand.
    x1_all = normalized_targets(train.latent, train.lengths, generator)
    clip_all, sync_all, text_all = train.conditions(generator)
    empty = {
        "clip": generator.empty_clip_feat.detach().float().cpu(),
        "sync": generator.empty_sync_feat.detach().float().cpu(),
        "text": generator.empty_string_feat.detach().float().cpu(),
    }
    data = _TrainTensors(x1_all, clip_all, sync_all, text_all, train.lengths, empty)
    b_local = config.batch_size // w.world
    micro = config.micro_batch
    evaluator = _Evaluator(config, spec, generator, store, w, val, train_seq, autocast)
    if start == 0 and w.is_main:
        log.truncate(-1)  # a fresh start: nothing of an earlier attempt stays
        record = {"step": 0, "val_loss": evaluator.run(0), "time": time.time()}
        log.append(record)
        log.plot()

    progress = _Progress(config, start, w.is_main)
    for step in range(start, config.steps):
        t0 = time.perf_counter()
        idx = global_batch(len(train), config.batch_size, config.seed, step)
        mix = mixup_plan(config, step)
        lr_now = [g["lr"] for g in optimizer.param_groups]
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for m in range(config.grad_accum):
            first = w.rank * b_local + m * micro
            positions = list(range(first, first + micro))
            batch = _micro_batch(config, step, positions, idx, mix, data)
            batch = {k: v.to(w.device, non_blocking=True) for k, v in batch.items()}
            sync_ctx = objective.no_sync() if w.world > 1 and m < config.grad_accum - 1 else None
            with sync_ctx or nullcontext(), autocast or nullcontext():
                per_clip = objective(**batch).float()
                (per_clip.sum() / b_local).backward()
            loss_sum += per_clip.detach().double().sum().cpu()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
        optimizer.step()
        scheduler.step()
        loss = _global_mean(loss_sum, config.batch_size, w)
        done = step + 1
        elapsed = time.perf_counter() - t0
        record = {
            "step": done,
            "epoch": step // steps_per_epoch(len(train), config.batch_size),
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr_now[0],
            "lr_b": lr_now[1],
            "clips_per_s": config.batch_size / elapsed if elapsed > 0 else None,
            "time": time.time(),
        }
        if w.is_main and (done % config.eval_every == 0 or done == config.steps):
            record["val_loss"] = evaluator.run(done)
        if w.is_main:
            log.append(record)
            if "val_loss" in record:
                log.plot()
        progress.update(done, loss, config.batch_size, elapsed)
        if config.fail_at_step == done and w.rank == w.world - 1:
            marker = run_dir / FAIL_MARKER
            if not marker.exists():
                marker.write_text(f"worker {w.rank} killed after step {done}\n")
                print(f"[train] test hook: worker {w.rank} exits after step {done}", flush=True)
                os._exit(1)
        if done % config.save_every == 0 or done == config.steps:
            _report(done, record, named, optimizer, scheduler, generator, config, w)

    if w.is_main:
        _finish(config, spec, generator, train, x1_all, log, loop_config, evaluator)


# ---- pieces of the loop -----------------------------------------------------------------------


@dataclass(frozen=True)
class _TrainTensors:
    """Every training clip's inputs on the CPU, made once per run: normalised zero-padded
    targets, conditions, valid lengths, and the generator's empty (dropped) conditions."""

    x1: torch.Tensor
    clip: torch.Tensor
    sync: torch.Tensor
    text: torch.Tensor
    lengths: torch.Tensor
    empty: dict[str, torch.Tensor]


def _micro_batch(config, step, positions, idx, mix, data: _TrainTensors) -> dict[str, torch.Tensor]:
    """Inputs of the clips at global-batch `positions` of step `step`, on the CPU."""
    rows = idx[positions]
    x1 = data.x1[rows].clone()
    lens = data.lengths[rows]
    if mix is not None:
        partner, lam = mix
        x1 = lam * x1 + (1.0 - lam) * data.x1[idx[partner[positions]]]
    clip_f, sync_f, text_f = (
        data.clip[rows].clone(),
        data.sync[rows].clone(),
        data.text[rows].clone(),
    )
    latent_shape = tuple(data.x1.shape[1:])
    x0, ts = [], []
    for i, pos in enumerate(positions):
        d = clip_draw(config, step, pos, latent_shape)
        if d.drop_video:
            clip_f[i] = data.empty["clip"].expand_as(clip_f[i])
            sync_f[i] = data.empty["sync"].expand_as(sync_f[i])
        if d.drop_text:
            text_f[i] = data.empty["text"]
        if d.eps is not None:
            n = int(lens[i])
            std = x1[i, :n].std() if n > 1 else x1.new_tensor(1.0)
            x1[i] = x1[i] + d.eps * (config.latent_noise * std)
        x0.append(d.x0)
        ts.append(d.t)
    frames = torch.arange(x1.shape[1])
    x1 = x1 * (frames[None, :] < lens[:, None])[..., None]
    return {
        "x1": x1,
        "clip_f": clip_f,
        "sync_f": sync_f,
        "text_f": text_f,
        "x0": torch.stack(x0),
        "t": torch.tensor(ts, dtype=torch.float32),
        "lengths": lens,
    }


def _global_mean(local_sum: torch.Tensor, batch_size: int, w: Worker) -> float:
    if w.world == 1:
        return float(local_sum) / batch_size
    import torch.distributed as dist

    t = local_sum.to(w.device)
    dist.all_reduce(t)
    return float(t) / batch_size


def _check_same_base(generator, lora, w: Worker) -> None:
    """Refuse to train when workers loaded different base weights (e.g. other files)."""
    if w.world == 1:
        return
    import torch.distributed as dist

    from selva_core.lora import find_targets
    from selva_core.lora.layer import linear_digest

    layers, _ = find_targets(generator, lora.targets)
    mine = [
        linear_digest(generator.get_submodule(n).weight, generator.get_submodule(n).bias)
        for n in layers
    ]
    every: list = [None] * w.world
    dist.all_gather_object(every, mine)
    if any(e != every[0] for e in every):
        raise RuntimeError("workers loaded different base weights; stage identical files")


def _shared_pissa_init(generator, lora, w: Worker):
    """PiSSA factors computed once (rank 0) and broadcast, so every rank starts bit-equal."""
    from selva_core.lora import compute_pissa_init, find_targets
    from selva_core.lora.pissa import PissaFactors

    if w.world == 1:
        return compute_pissa_init(generator, lora, device=w.device)
    import torch.distributed as dist

    mine = compute_pissa_init(generator, lora, device=w.device) if w.is_main else None
    layers, _ = find_targets(generator, lora.targets)
    out = {}
    for name in layers:
        linear = generator.get_submodule(name)
        if mine is not None:
            a, b = mine[name].a0.to(w.device), mine[name].b0.to(w.device)
        else:
            a = torch.empty(lora.rank, linear.in_features, device=w.device)
            b = torch.empty(linear.out_features, lora.rank, device=w.device)
        dist.broadcast(a, 0)
        dist.broadcast(b, 0)
        out[name] = PissaFactors(a.cpu(), b.cpu(), lora.scale)
    return out


def _load_state(directory: Path) -> dict | None:
    try:
        return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None  # absent or torn (a crash during the upload)


def _latest_state(checkpoint, storage: Path) -> dict | None:
    """The newest whole checkpoint: Ray Train's latest, or a newer one in the run's storage.

    The controller registers a reported checkpoint when it next polls the workers, so a
    worker that dies right after reporting can leave a whole checkpoint that
    `get_checkpoint()` does not know yet; the folder is this run's alone (the driver refuses
    a folder holding another run), so every step_N in it belongs to this run."""
    best = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            best = _load_state(Path(d))
    found = sorted(storage.glob("step_*"), reverse=True) if storage.is_dir() else []
    for directory in found:
        step = int(directory.name.split("_")[1]) if directory.name[5:].isdigit() else -1
        if best is not None and step <= best["step"]:
            break
        state = _load_state(directory)
        if state is not None:
            return state
    return best


def _saved_pissa(state: dict | None, lora):
    """The PiSSA factors a checkpoint was trained from, or None."""
    from selva_core.lora.pissa import PissaFactors

    if not state or not state.get("pissa"):
        return None
    return {
        name: PissaFactors(f["a0"].float(), f["b0"].float(), lora.scale)
        for name, f in state["pissa"].items()
    }


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": _plain(random.getstate()),
        "numpy": _plain(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _plain(value):
    """RNG states as tensors, lists and numbers (loadable with weights_only=True)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.astype(np.int64))
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], npy[1].numpy().astype(np.uint32), *npy[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _training_record(config: TrainConfig, loop_config: dict) -> dict:
    return {
        "lr": config.lr,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "steps": config.steps,
        "extra": {
            "config": config.to_dict(),
            "data": {
                k: loop_config[k]
                for k in (
                    "features",
                    "features_settings_hash",
                    "num_train",
                    "num_val",
                    "split_hash",
                )
            },
            "objective": "flow matching, loss masked to valid latent frames",
        },
    }


def _report(step, record, named, optimizer, scheduler, generator, config, w) -> None:
    import ray.train

    from selva_core.lora import lora_layers, save_adapter

    metrics = {k: v for k, v in record.items() if v is not None}
    if not w.is_main:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        state = {
            "step": step,
            "lora": {k: v.detach().cpu().clone() for k, v in named.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "pissa": {
                name: {"a0": m.pissa_A0[ADAPTER].cpu(), "b0": m.pissa_B0[ADAPTER].cpu()}
                for name, m in lora_layers(generator, ADAPTER).items()
                if ADAPTER in m.pissa_A0
            },
        }
        torch.save(state, Path(d) / STATE_FILE)
        # A usable adapter file in every checkpoint (plain delta; the model is not changed).
        save_adapter(Path(d) / "adapter.safetensors", generator, ADAPTER, variant=config.variant)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(d),
            checkpoint_dir_name=f"step_{step:06d}",
        )


class _Evaluator:
    """Validation loss and previews at one step (rank 0)."""

    def __init__(self, config, spec, generator, store, w, val, train_seq, autocast):
        self.config, self.spec, self.generator, self.store = config, spec, generator, store
        self.w, self.val, self.train_seq, self.autocast = w, val, train_seq, autocast
        self._previewer = None

    def run(self, step: int) -> float | None:
        cfg, gen = self.config, self.generator
        if not self.w.is_main or len(self.val) == 0:
            return None
        was_training = gen.training
        gen.eval()
        try:
            loss = _validation(self, cfg)
            n = min(cfg.preview_clips, len(self.val))
            rows = []
            if n:
                if self._previewer is None:
                    from .evaluate import Previewer

                    self._previewer = Previewer(
                        self.spec, gen, self.store, str(self.w.device), gen.dtype
                    )
                out_dir = Path(cfg.output) / "eval" / f"step_{step}"
                # As the generation job runs it: the base in its dtype, no autocast.
                rows = self._previewer.run(
                    self.val.select(list(range(n))),
                    out_dir,
                    seed=cfg.seed,
                    steps=cfg.preview_steps,
                    cfg=cfg.preview_cfg,
                    train_seq=self.train_seq,
                )
                write_json(
                    out_dir / "metrics.json",
                    {"step": step, "val_loss": loss, "mean": _means(rows), "clips": rows},
                )
        finally:
            gen.train(was_training)
        return loss


def _means(rows: list[dict]) -> dict[str, float]:
    """Mean of each numeric metric over the preview clips (what `selva-ray report` plots)."""
    keys = [k for k, v in (rows[0] if rows else {}).items() if isinstance(v, int | float)]
    out = {}
    for k in keys:
        values = [r[k] for r in rows if isinstance(r.get(k), int | float) and k != "seed"]
        if values and k not in ("seed", "duration"):
            out[k] = sum(values) / len(values)
    return out


def _validation(ev: _Evaluator, cfg: TrainConfig) -> float | None:
    from .evaluate import validation_loss

    return validation_loss(
        ev.generator, ev.val, seed=cfg.seed, timesteps=cfg.eval_timesteps, autocast=ev.autocast
    )


class _Progress:
    """A line every `progress_every_s` seconds on rank 0: step, loss, clips/s, ETA."""

    def __init__(self, config: TrainConfig, start: int, enabled: bool):
        self.config, self.enabled = config, enabled
        self.last = time.perf_counter()
        self.window: list[tuple[float, int, float]] = []

    def update(self, step: int, loss: float, clips: int, seconds: float) -> None:
        if not self.enabled:
            return
        self.window.append((loss, clips, seconds))
        now = time.perf_counter()
        if now - self.last < self.config.progress_every_s and step < self.config.steps:
            return
        losses, n, secs = zip(*self.window, strict=True)
        rate = sum(n) / max(sum(secs), 1e-9)
        per_step = sum(secs) / len(secs)
        eta = format_eta((self.config.steps - step) * per_step)
        print(
            f"[train] step {step}/{self.config.steps} loss {sum(losses) / len(losses):.4f} "
            f"{rate:.2f} clips/s ETA {eta}",
            flush=True,
        )
        self.window.clear()
        self.last = now


# ---- the end of a run -------------------------------------------------------------------------


def _finish(config, spec, generator, train, x1_all, log, loop_config, evaluator) -> None:
    """Adapter file, Spectral Surgery twin, loss plot and run summary (rank 0)."""
    from selva_core.flow_loss import FlowBatch
    from selva_core.lora import SurgeryConfig, spectral_surgery

    run_dir = Path(config.output)
    record = _training_record(config, loop_config)
    adapter = run_dir / "adapter.safetensors"
    _save(adapter, generator, config, record)
    records = log.records()
    train_losses = [r["loss"] for r in records if r.get("loss") is not None]
    val_losses = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    summary = {
        "status": "complete",
        "steps": config.steps,
        "variant": config.variant,
        "adapter": str(adapter),
        "num_train": loop_config["num_train"],
        "num_val": loop_config["num_val"],
        "final_train_loss": train_losses[-1] if train_losses else None,
        "first_val_loss": val_losses[0][1] if val_losses else None,
        "final_val_loss": val_losses[-1][1] if val_losses else None,
        "clips_per_s": _mean_rate(records),
        "resumed_from": log.resumes(),
        "surgery": {"ran": False},
        "finished_at": time.time(),
    }
    if config.surgery:
        clips = train.select(list(range(min(32, len(train)))))
        clip_f, sync_f, text_f = clips.conditions(generator)
        calib = FlowBatch(x1_all[: len(clips)], clip_f, sync_f, text_f, clips.lengths)
        surgery_cfg = SurgeryConfig(num_clips=len(clips), seed=config.seed)
        generator.eval()
        report = spectral_surgery(generator, [calib], surgery_cfg, adapter=ADAPTER)
        path = run_dir / "adapter.surgery.safetensors"
        _save(path, generator, config, record)
        summary["surgery"] = {
            "ran": True,
            "adapter": str(path),
            "policy": surgery_cfg.policy,
            "calibration_clips": report.num_clips,
            "calibration_loss_before": report.loss_before,
            "calibration_loss_after": report.loss_after,
            "kept": report.kept,
            "shrunk": report.shrunk,
        }
    log.plot()
    write_json(run_dir / SUMMARY, summary)
    print(f"[train] done: {adapter}" + (" (+ surgery)" if config.surgery else ""), flush=True)


def _save(path: Path, generator, config: TrainConfig, record: dict) -> None:
    from selva_core.lora import save_adapter

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.safetensors")
    save_adapter(tmp, generator, ADAPTER, variant=config.variant, training=record)
    tmp.replace(path)


def _mean_rate(records: list[dict]) -> float | None:
    rates = [r["clips_per_s"] for r in records if r.get("clips_per_s")]
    return sum(rates) / len(rates) if rates else None


def read_summary(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / SUMMARY)
