"""The generation stage alone, in one process: clips/s by batch size, batched vs two-pass CFG,
with vs without an adapter, ms per Euler step per clip and the real-time factor.

    python bench/bench_generation.py [--size small_16k] [--batches 1,4,16] [--steps 10]
        [--duration 8] [--variant-batch 4] [--threads 0] [--json bench_generation.json]

Features are random tensors of the variant's shapes for --duration s clips (sampling cost
does not depend on their values); `small_16k` runs at published sizes with random weights.
Each configuration is timed after one warm-up call at its batch size:

- sampling: the Euler loop (`--steps` steps, CFG 4.5); `ms/step/clip` = sampling time /
  steps / batch; with batched CFG the conditional and unconditional passes are one forward of
  2 x batch rows, two-pass CFG runs them as two forwards of batch rows;
- decode: VAE decoder + vocoder on the batch's latents;
- clips/s = batch / (sampling + decode); real-time factor = (sampling + decode) / (batch x
  duration): below 1 is faster than real time;
- adapters (at --variant-batch): a rank-16 LoRA on `attn.qkv` merged into the weights (what
  the generate job does: the cost should equal the base) and the same adapter left unmerged
  (a LoRA branch evaluated in every forward).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup_paths()

import torch  # noqa: E402


def build(size: str):
    from selva_core.pipeline import Pipeline, PipelineConfig

    config = PipelineConfig(variant=size)
    parts = common.components_factory(size)("cpu", config.dtype, "generator")
    return Pipeline(config, components=parts)


def inputs(pipe, batch: int, duration: float):
    seq = pipe.sequence(duration)
    gen = pipe.generator
    gen.set_sequence(seq)
    c = gen.config
    g = torch.Generator().manual_seed(0)
    sync_f = torch.randn(batch, seq.sync_seq_len, c.sync_dim, generator=g)
    text_f = torch.randn(batch, 77, c.text_dim, generator=g)
    if pipe.spec.uses_clip_frames:
        clip_f = torch.randn(batch, seq.clip_seq_len, c.clip_dim, generator=g)
    else:
        clip_f = gen.empty_clip_feat.unsqueeze(0).expand(batch, seq.clip_seq_len, -1)
    return clip_f, sync_f, text_f


@torch.no_grad()
def time_config(pipe, batch: int, steps: int, duration: float, batch_cfg: bool) -> dict:
    from selva_core.sampling import SamplerConfig, generate_latents

    clip_f, sync_f, text_f = inputs(pipe, batch, duration)
    config = SamplerConfig(num_steps=steps, cfg_strength=4.5, batch_cfg=batch_cfg)

    def once():
        t0 = time.perf_counter()
        lat = generate_latents(
            pipe.generator, clip_f, sync_f, text_f, list(range(batch)), config=config
        )
        t1 = time.perf_counter()
        pipe.decode_latents(lat, duration)
        return t1 - t0, time.perf_counter() - t1

    warm = SamplerConfig(num_steps=1, cfg_strength=4.5, batch_cfg=batch_cfg)
    lat = generate_latents(pipe.generator, clip_f, sync_f, text_f, list(range(batch)), config=warm)
    pipe.decode_latents(lat, duration)
    sampling_s, decode_s = once()
    total = sampling_s + decode_s
    return {
        "batch": batch,
        "cfg": "batched" if batch_cfg else "two-pass",
        "sampling_s": sampling_s,
        "decode_s": decode_s,
        "clips_per_s": batch / total,
        "ms_per_step_clip": 1000 * sampling_s / steps / batch,
        "rtf": total / (batch * duration),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small_16k")
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--variant-batch", type=int, default=4, help="batch of the CFG/adapter rows")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: all cores")
    p.add_argument("--json", default="bench_generation.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads or common.physical_cores())

    from selva_core.lora import LoRAConfig, apply_lora
    from selva_core.lora.apply import merge_lora, remove_lora

    info = {"machine": common.machine_info(), "args": vars(args), "rows": []}
    with common.LoadSampler() as la:
        t0 = time.perf_counter()
        pipe = build(args.size)
        info["build_s"] = time.perf_counter() - t0
        rows = info["rows"]
        for b in [int(x) for x in args.batches.split(",")]:
            rows.append(
                {"adapter": "none", **time_config(pipe, b, args.steps, args.duration, True)}
            )
            print(f"[batch {b}: {rows[-1]['clips_per_s']:.3f} clips/s]", file=sys.stderr)
            common.write_json(args.json, info)
        vb = args.variant_batch
        rows.append({"adapter": "none", **time_config(pipe, vb, args.steps, args.duration, False)})
        apply_lora(pipe.generator, LoRAConfig(rank=16, rslora=True))
        rows.append(
            {"adapter": "r16 unmerged", **time_config(pipe, vb, args.steps, args.duration, True)}
        )
        merge_lora(pipe.generator, keep_copy=False)
        rows.append(
            {"adapter": "r16 merged", **time_config(pipe, vb, args.steps, args.duration, True)}
        )
        remove_lora(pipe.generator)
        info["load_average"] = la.summary()
    common.write_json(args.json, info)
    la = info["load_average"]
    print(
        f"\nGeneration stage alone: {args.size}, {args.duration:g} s clips, {args.steps} Euler "
        f"steps, CFG 4.5, fp32 CPU, {torch.get_num_threads()} torch threads"
    )
    print(f"machine: {common.machine_line(info['machine'])}")
    print(
        f"load average during the run: min {la['min']:.1f}, mean {la['mean']:.1f}, "
        f"max {la['max']:.1f}\n"
    )
    print(
        common.table(
            rows,
            [
                ("batch", "batch"),
                ("cfg", "CFG"),
                ("adapter", "adapter"),
                ("sampling_s", "sampling s"),
                ("decode_s", "VAE+vocoder s"),
                ("clips_per_s", "clips/s"),
                ("ms_per_step_clip", "ms/step/clip"),
                ("rtf", "real-time factor"),
            ],
        )
    )
    base = {r["batch"]: r for r in rows if r["adapter"] == "none" and r["cfg"] == "batched"}
    two = next(r for r in rows if r["cfg"] == "two-pass")
    if vb in base:
        ref = base[vb]["clips_per_s"]
        print(
            f"\nat batch {vb}: batched / two-pass CFG {ref / two['clips_per_s']:.2f}x; "
            f"merged adapter / none {rows[-1]['clips_per_s'] / ref:.2f}x; "
            f"unmerged / none {rows[-2]['clips_per_s'] / ref:.2f}x"
        )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
