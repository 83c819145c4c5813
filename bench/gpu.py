"""GPU throughput of the generation and extraction stages, per GPU, next to MMAudio's
published figures. CUDA only; needs nothing but the installed package (random weights at
published sizes, nothing downloaded).

    python bench/gpu.py [--sizes small_16k,large_44k] [--stages generate,extract]
        [--batches 1,2,4,8,16,32,64] [--modes eager,compile,cudagraphs] [--steps 25]
        [--duration 8] [--precision bf16] [--repeat 3] [--json bench_gpu.json]

- generate: the Euler sampler (--steps, CFG 4.5 as one batched forward) + VAE decoder +
  vocoder for a batch of --duration s clips;
- extract: the feature encoders on a batch of decoded clips (CLIP text, flan-T5, TextSynch on
  the sync frames; `features_from_decoded`, as the extract job's actors run it);
- modes: eager; `compile` = the generator's (resp. sync encoder's) forward under
  `torch.compile` (inductor, no CUDA graphs); `cudagraphs` = the same with
  mode="reduce-overhead" (inductor CUDA graphs). Each (mode, batch) is warmed up first,
  then timed --repeat times (median), synchronised.
A batch that runs out of GPU memory is reported as OOM and larger batches of that
configuration are skipped. Published MMAudio (8 s clip, 25 steps, one GPU): S-16k 1.23 s,
L-44k 1.96 s per clip.

On a machine without CUDA it prints one line and exits with status 2 (`--device cpu` runs
the same code on the CPU, for a smoke check of this script only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

PUBLISHED_S_PER_CLIP = {"small_16k": 1.23, "large_44k": 1.96}  # MMAudio, 8 s, 25 steps


def components(size: str, role: str, device: str, dtype):
    """Published-size modules with random weights (tiny: the seeded tiny variant)."""
    from selva_core import build
    from selva_core.pipeline import Components, PipelineConfig, load_components
    from selva_core.variants import get_spec

    spec = get_spec(size)
    if spec.is_tiny:
        parts = load_components(
            PipelineConfig(variant=size, dtype=dtype, device=device, generation=role == "generate")
        )
        return parts
    if role == "generate":
        from selva_core.audio import bigvgan, vae

        sixteen = spec.mode == "16k"
        parts = Components(
            generator=build.random_generator(spec).eval(),
            sync_encoder=None,
            clip=None,
            t5=None,
            vae=vae.random_vae(vae.VAE_16K if sixteen else vae.VAE_44K, 0, decoder_only=True),
            vocoder=bigvgan.random_vocoder(
                bigvgan.BIGVGAN_16K if sixteen else bigvgan.BIGVGAN_V2_44K, 0
            ),
            mel=None,
        )
    else:
        import open_clip
        from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

        from selva_core.conditioning.clip import ClipEncoder
        from selva_core.conditioning.t5 import T5TextEncoder
        from selva_core.model.textsynch import TextSynchConfig, random_textsynch

        t5 = T5Config(  # flan-t5-base
            d_model=768,
            d_kv=64,
            d_ff=2048,
            num_layers=12,
            num_heads=12,
            feed_forward_proj="gated-gelu",
            vocab_size=32128,
            is_encoder_decoder=False,
        )
        parts = Components(
            generator=None,
            sync_encoder=random_textsynch(TextSynchConfig.depth1()).eval(),
            clip=ClipEncoder(
                open_clip.create_model("ViT-H-14-378-quickgelu", pretrained=None).eval(),
                open_clip.get_tokenizer("ViT-H-14-378-quickgelu"),
            ),
            t5=T5TextEncoder(T5EncoderModel(t5).eval(), ByT5Tokenizer())
            if spec.uses_text_sync
            else None,
            vae=None,
            vocoder=None,
            mel=build.mel_converter(spec, device),
        )
    for name in ("generator", "sync_encoder", "clip", "t5", "vae", "vocoder"):
        m = getattr(parts, name)
        if m is not None:
            setattr(parts, name, m.to(device=device, dtype=dtype).eval())
    return parts


def make_pipeline(size: str, stage: str, device: str, dtype):
    from selva_core.pipeline import Pipeline, PipelineConfig

    config = PipelineConfig(
        variant=size, dtype=dtype, device=device, generation=stage == "generate"
    )
    return Pipeline(config, components=components(size, stage, device, dtype))


def compile_mode(pipe, stage: str, mode: str) -> None:
    import torch

    if mode == "eager":
        return
    kind = "reduce-overhead" if mode == "cudagraphs" else "default"
    if stage == "generate":
        gen = pipe.generator
        gen.predict_flow = torch.compile(gen.predict_flow, mode=kind, dynamic=False)
    else:
        enc = pipe.sync_encoder
        enc.forward = torch.compile(enc.forward, mode=kind, dynamic=False)


def runner(pipe, stage: str, batch: int, steps: int, duration: float, device: str):
    """A closure running one batch of the stage."""
    import torch

    from selva_core.pipeline import ClipInput
    from selva_core.sampling import SamplerConfig, generate_latents

    seq = pipe.sequence(duration)
    g = torch.Generator().manual_seed(0)
    if stage == "generate":
        gen = pipe.generator
        gen.set_sequence(seq)
        c = gen.config
        sync_f = torch.randn(batch, seq.sync_seq_len, c.sync_dim, generator=g).to(device)
        text_f = torch.randn(batch, 77, c.text_dim, generator=g).to(device)
        if pipe.spec.uses_clip_frames:
            clip_f = torch.randn(batch, seq.clip_seq_len, c.clip_dim, generator=g).to(device)
        else:
            clip_f = gen.empty_clip_feat.unsqueeze(0).expand(batch, seq.clip_seq_len, -1)
        sync_f, text_f, clip_f = (t.to(pipe.config.dtype) for t in (sync_f, text_f, clip_f))
        config = SamplerConfig(num_steps=steps, cfg_strength=4.5)

        def run():
            lat = generate_latents(gen, clip_f, sync_f, text_f, list(range(batch)), config=config)
            pipe.decode_latents(lat, duration)

        return run
    clips = [
        ClipInput(
            path="bench",
            start=0.0,
            duration=duration,
            sync_frames=torch.randint(
                0, 255, (seq.num_sync_frames, 3, 224, 224), dtype=torch.uint8
            ),
            clip_frames=torch.randint(0, 255, (seq.clip_seq_len, 3, 384, 384), dtype=torch.uint8)
            if pipe.spec.uses_clip_frames
            else torch.zeros(0, 3, 384, 384, dtype=torch.uint8),
        )
        for _ in range(batch)
    ]
    prompts = ["a dog barking while a car passes by"] * batch

    def run():
        pipe.features_from_decoded(clips, prompts)

    return run


def measure(run, repeat: int, device: str) -> float:
    import torch

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()  # warm-up (compiles, captures graphs)
    run()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="small_16k,large_44k")
    p.add_argument("--stages", default="generate,extract")
    p.add_argument("--batches", default="1,2,4,8,16,32,64")
    p.add_argument("--modes", default="eager,compile,cudagraphs")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--json", default="bench_gpu.json")
    args = p.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here (torch.cuda.is_available() is False)")
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    device = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    info = {
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.machine()})",
        "gpus": torch.cuda.device_count() if device == "cuda" else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "args": vars(args),
        "rows": [],
    }
    print(f"device: {info['gpu']}; torch {info['torch']} (CUDA {info['cuda']}); {args.precision}")
    for size in args.sizes.split(","):
        for stage in args.stages.split(","):
            for mode in args.modes.split(","):
                torch._dynamo.reset()
                pipe = make_pipeline(size, stage, device, dtype)
                compile_mode(pipe, stage, mode)
                for b in (int(x) for x in args.batches.split(",")):
                    row = {"size": size, "stage": stage, "mode": mode, "batch": b}
                    try:
                        with torch.no_grad():
                            s = measure(
                                runner(pipe, stage, b, args.steps, args.duration, device),
                                args.repeat,
                                device,
                            )
                    except torch.OutOfMemoryError:
                        row["status"] = "OOM"
                        info["rows"].append(row)
                        torch.cuda.empty_cache()
                        print(f"{size} {stage} {mode} batch {b}: OOM", flush=True)
                        break
                    row.update(status="ok", batch_s=s, clips_per_s=b / s, s_per_clip=s / b)
                    if device == "cuda":
                        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                        torch.cuda.reset_peak_memory_stats()
                    pub = PUBLISHED_S_PER_CLIP.get(size) if stage == "generate" else None
                    if pub and args.steps == 25 and args.duration == 8:
                        row["published_s_per_clip"] = pub
                        row["vs_published"] = pub / row["s_per_clip"]
                    info["rows"].append(row)
                    print(json.dumps(row), flush=True)
                del pipe
                if device == "cuda":
                    torch.cuda.empty_cache()
            tmp = f".{args.json}.tmp"
            with open(tmp, "w") as fh:
                json.dump(info, fh, indent=1)
            os.replace(tmp, args.json)
    print(
        f"\nper GPU ({info['gpu']}), {args.precision}, {args.duration:g} s clips, "
        f"{args.steps} steps (generate)\n"
    )
    print(
        "| size | stage | mode | batch | clips/s | s per clip | published s per clip | "
        "published / ours | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in info["rows"]:
        head = f"| {r['size']} | {r['stage']} | {r['mode']} | {r['batch']} | "
        if r["status"] != "ok":
            print(head + "OOM | | | | |")
            continue
        pub = r.get("published_s_per_clip")
        print(
            head
            + f"{r['clips_per_s']:.2f} | {r['s_per_clip']:.3f} | "
            + (f"{pub} | {r['vs_published']:.2f}x | " if pub else "- | - | ")
            + (f"{r['peak_mem_gib']:.1f} |" if "peak_mem_gib" in r else "- |")
        )
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
