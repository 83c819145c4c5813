"""LoRA training at real `small_16k` sizes (random weights, CPU): step time and clips/s of the
Ray Train job at 1 and 2 workers, peak memory of LoRA vs full fine-tuning, adapter bytes.

    python bench/bench_train.py [--steps 4] [--batch-size 2] [--workers 1,2] [--json out.json]

Every figure comes from this one run:
- step time / clips/s: the real job (`run_train`, TorchTrainer, gloo) on a synthetic features
  folder of `small_16k` shape (random tensors written through the feature schema); the first
  step of each run is left out (warm-up); the median of the rest is reported.
- peak memory: a fresh process per mode runs forward + backward + AdamW steps on the same
  batch and reports its peak RSS (`ru_maxrss`), minus the peak of a process that only builds
  the model and runs the forward pass without gradients.
- adapter bytes: `save_adapter` files at r16/r64/r128 (`attn.qkv`), standard and PiSSA init
  (a PiSSA file stores its rank-2r delta against the original weights).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANT = "small_16k"


def write_features(folder: Path, clips: int, duration: float) -> None:
    """A features folder of `small_16k` shape with random tensors (fp16), via the I/O package."""
    import pyarrow as pa

    from selva_core.variants import get_spec
    from selva_ray.io.feature_schema import FeatureLayout, tensor_array, to_storage
    from selva_ray.io.output_dir import OutputDir

    layout = FeatureLayout.for_run(
        get_spec(VARIANT), max_duration=duration, with_audio_latents=True
    )
    out = OutputDir(str(folder))
    out.claim(layout.describe())
    rng = np.random.default_rng(0)
    values = {}
    for f in layout.arrow_schema():
        if isinstance(f.type, pa.FixedShapeTensorType):
            shape = (clips, *f.type.shape)
            data = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
            values[f.name] = tensor_array(to_storage(data, "float16"), tuple(f.type.shape))
        elif f.name == "id":
            values[f.name] = pa.array([f"clip-{i:04d}" for i in range(clips)])
        elif f.name in ("sync_len", "latent_len", "clip_len"):
            n = {"sync_len": layout.sync_len, "latent_len": layout.latent_len}.get(f.name, 0)
            values[f.name] = pa.array([n] * clips, f.type)
        elif f.name == "duration":
            values[f.name] = pa.array([duration] * clips, f.type)
        elif pa.types.is_string(f.type):
            values[f.name] = pa.array(["bench"] * clips, f.type)
        elif pa.types.is_boolean(f.type):
            values[f.name] = pa.array([True] * clips, f.type)
        else:
            values[f.name] = pa.array([0] * clips, f.type)
    out.stage("bench-00000", "features", pa.table(values, schema=layout.arrow_schema()))
    out.commit("bench-00000")


def time_job(features: Path, workers: int, steps: int, batch: int, root: Path) -> dict:
    from selva_ray.train import TrainConfig, run_train

    run = root / f"run-w{workers}"
    t0 = time.perf_counter()
    run_train(
        TrainConfig(
            features=str(features),
            output=str(run),
            workers=workers,
            steps=steps,
            batch_size=batch,
            rank=16,
            init="pissa",
            warmup=0,
            val_fraction=0.0,
            eval_every=steps,
            save_every=steps,
            preview_clips=0,
            surgery=False,
            random_weights=True,
            progress_every_s=1e9,
        )
    )
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["clips_per_s"] for r in rows if r.get("clips_per_s")][1:]  # skip warm-up
    rate = statistics.median(rates)
    return {
        "workers": workers,
        "steps_timed": len(rates),
        "step_s": batch / rate,
        "clips_per_s": rate,
        "job_wall_s": wall,
    }


def memory_probe(mode: str, batch: int, duration: float) -> None:
    """Run in a child process: print peak RSS (MiB) after a few steps of `mode`."""
    from selva_core.build import random_generator
    from selva_core.flow_loss import FlowBatch, FlowLossConfig, training_loss
    from selva_core.lora import LoRAConfig, apply_lora, lora_parameters
    from selva_core.variants import get_spec

    torch.manual_seed(0)
    spec = get_spec(VARIANT)
    gen = random_generator(spec)
    gen.set_sequence(spec.sequence(duration))
    gen.requires_grad_(False)
    if mode == "lora":
        apply_lora(gen, LoRAConfig(rank=16, init="pissa", rslora=True))
        params = lora_parameters(gen)
    elif mode == "full":
        params = [p for n, p in gen.named_parameters() if n not in ("latent_mean", "latent_std")]
        for p in params:
            p.requires_grad_(True)
    else:
        params = []
    c = gen.config
    batch_data = FlowBatch(
        torch.randn(batch, gen.latent_seq_len, c.latent_dim),
        torch.randn(batch, gen.clip_seq_len, c.clip_dim),
        torch.randn(batch, gen.sync_seq_len, c.sync_dim),
        torch.randn(batch, 77, c.text_dim),
    )
    g = torch.Generator().manual_seed(0)
    if params:
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
        gen.train()
        for _ in range(2):
            loss = training_loss(gen, batch_data, FlowLossConfig(), g)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            training_loss(gen, batch_data, FlowLossConfig(), g)
    trainable = sum(p.numel() for p in params)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "peak_rss_mib": peak, "trainable": trainable}))


def measure_memory(batch: int, duration: float) -> dict:
    out = {}
    for mode in ("forward", "lora", "full"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-probe",
                mode,
                "--batch-size",
                str(batch),
                "--duration",
                str(duration),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ),
        )
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def adapter_bytes() -> list[dict]:
    from selva_core.build import random_generator
    from selva_core.lora import LoRAConfig, apply_lora, save_adapter

    rows = []
    for rank in (16, 64, 128):
        for init in ("standard", "pissa"):
            gen = random_generator(VARIANT)
            applied = apply_lora(gen, LoRAConfig(rank=rank, init=init, rslora=True))
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "a.safetensors"
                file = save_adapter(path, gen)
                rows.append(
                    {
                        "rank": rank,
                        "init": init,
                        "layers": applied.count,
                        "parameters": file.num_parameters,
                        "bytes": path.stat().st_size,
                    }
                )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--json", default="bench_train.json")
    p.add_argument("--memory-probe", choices=["forward", "lora", "full"])
    args = p.parse_args()
    # One intra-op thread, as Ray gives each 1-CPU Train worker (and because multi-threaded
    # LAPACK SVD is pathologically slow on an oversubscribed machine).
    torch.set_num_threads(1)
    if args.memory_probe:
        memory_probe(args.memory_probe, args.batch_size, args.duration)
        return

    import ray

    workers = [int(w) for w in args.workers.split(",")]
    results: dict = {
        "variant": VARIANT,
        "duration_s": args.duration,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": common.machine_info(),
    }
    load = common.LoadSampler().__enter__()
    print("adapter files ...", flush=True)
    results["adapters"] = adapter_bytes()
    print("memory probes ...", flush=True)
    results["memory"] = measure_memory(args.batch_size, args.duration)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        write_features(root / "features", clips=max(8, 2 * args.batch_size), duration=args.duration)
        ray.init(address="local", num_cpus=max(workers) + 2, include_dashboard=False)
        try:
            results["jobs"] = []
            for w in workers:
                print(f"training job, {w} worker(s) ...", flush=True)
                results["jobs"].append(
                    time_job(root / "features", w, args.steps, args.batch_size, root)
                )
        finally:
            ray.shutdown()
    load.__exit__(None, None, None)
    results["load_average"] = load.summary()
    report(results)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")


def report(r: dict) -> None:
    print(
        f"\nLoRA training bench: {r['variant']}, {r['duration_s']:.0f} s clips, "
        f"global batch {r['batch_size']}, CPU ({r['cpus']} cores), random weights"
    )
    la = r["load_average"]
    print(f"machine: {common.machine_line(r['machine'])}")
    print(
        f"load average during the run: min {la['min']:.1f}, mean {la['mean']:.1f}, "
        f"max {la['max']:.1f}\n"
    )
    print("| workers | step s | clips/s | vs 1 worker | job wall s (incl. start) |")
    print("|---|---|---|---|---|")
    base = r["jobs"][0]["clips_per_s"]
    for j in r["jobs"]:
        print(
            f"| {j['workers']} | {j['step_s']:.2f} | {j['clips_per_s']:.3f} | "
            f"{j['clips_per_s'] / base:.2f}x | {j['job_wall_s']:.0f} |"
        )
    m = r["memory"]
    fwd = m["forward"]["peak_rss_mib"]
    print("\n| mode | trainable params | peak RSS MiB | above forward-only MiB |")
    print("|---|---|---|---|")
    for mode in ("forward", "lora", "full"):
        x = m[mode]
        print(
            f"| {mode} | {x['trainable']:,} | {x['peak_rss_mib']:.0f} | "
            f"{x['peak_rss_mib'] - fwd:.0f} |"
        )
    lora_extra = m["lora"]["peak_rss_mib"] - fwd
    full_extra = m["full"]["peak_rss_mib"] - fwd
    print(
        f"\npeak RSS full / LoRA: {m['full']['peak_rss_mib'] / m['lora']['peak_rss_mib']:.2f}x"
        f"; training overhead above forward-only, full / LoRA: "
        f"{full_extra / max(lora_extra, 1e-9):.1f}x"
    )
    print("\n| rank | init | layers | parameters | file bytes |")
    print("|---|---|---|---|---|")
    for a in r["adapters"]:
        print(
            f"| {a['rank']} | {a['init']} | {a['layers']} | {a['parameters']:,} | {a['bytes']:,} |"
        )


if __name__ == "__main__":
    main()
