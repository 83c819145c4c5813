"""Time each stage of one 8 s clip at real small_16k sizes (random weights), CPU fp32 or bf16.

    python bench/bench_one_clip.py [--threads 2] [--chunk 1] [--official PATH]
                                   [--precision fp32|bf16] [--rounds 2] [--json PATH]

Stages run through the same `Pipeline` code as real inference. With `--official PATH` (a
checkout of jnwnlee/selva; it needs omegaconf and torchdiffeq importable) the official modules
are timed in the same run on the same inputs, each stage right after ours, and the ratio
column is official / ours; the total covers the stages both sides time. The machine line
names the CPU's ISA flags: the kernels behind both sides depend on them. Without `--official`,
the issue's reference figures for the official code on a 2-core CPU (TextSynch 57 s, sampling
12.4 s, BigVGAN 4.3 s, VAE 0.17 s; 74 s per clip) are shown, marked as from another run.

`--precision bf16` casts every module and input of ours to bf16 (the pipeline's own bf16 path:
the mel, sampler state and derived tables stay fp32) and the official modules as its demo does
(`.to(device, torch.bfloat16)`, then `update_seq_lengths`, which rebuilds its RoPE tables in
fp32); bf16 only pays off on CPUs with native bf16 (amx_bf16 / avx512_bf16 in the ISA line).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_memory import write_long_video  # noqa: E402

REFERENCE_S = {"textsynch": 57.0, "sampling": 12.4, "vocoder": 4.3, "vae_decode": 0.17}
PROMPT = "a dog barking while a car passes by"


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def real_size_components(dtype: torch.dtype = torch.float32):
    """small_16k components at published sizes with random weights (nothing downloaded), in
    `dtype` (CLIP through open_clip's own low-precision cast, LayerNorms in fp32, as load_clip)."""
    import open_clip
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    from selva_core import build
    from selva_core.audio import bigvgan, vae
    from selva_core.conditioning.clip import ClipEncoder
    from selva_core.conditioning.t5 import T5TextEncoder
    from selva_core.model.textsynch import TextSynchConfig, random_textsynch
    from selva_core.pipeline import Components

    t5_cfg = T5Config(  # flan-t5-base dimensions
        d_model=768,
        d_kv=64,
        d_ff=2048,
        num_layers=12,
        num_heads=12,
        feed_forward_proj="gated-gelu",
        vocab_size=32128,
        is_encoder_decoder=False,
    )
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    return Components(
        generator=build.random_generator("small_16k").to(dtype).eval(),
        sync_encoder=random_textsynch(TextSynchConfig.depth1()).to(dtype).eval(),
        clip=ClipEncoder(
            open_clip.create_model(
                "ViT-H-14-378-quickgelu", pretrained=None, precision=precision
            ).eval(),
            open_clip.get_tokenizer("ViT-H-14-378-quickgelu"),
        ),
        t5=T5TextEncoder(T5EncoderModel(t5_cfg).to(dtype).eval(), ByT5Tokenizer()),
        vae=vae.random_vae(vae.VAE_16K, 0, decoder_only=True).to(dtype).eval(),
        vocoder=bigvgan.random_vocoder(bigvgan.BIGVGAN_16K, 0).to(dtype),
        mel=build.mel_converter("small_16k"),
    )


def official_stages(repo: str, inputs: dict, dtype: torch.dtype = torch.float32) -> dict:
    """The official modules at the same sizes and inputs (random weights), built in this
    process and cast as its demo casts them (`.to(device, dtype)`, inputs in `dtype`):
    stage name -> a call that runs it once."""
    sys.path.insert(0, repo)
    import transformers.pytorch_utils as pu

    # The vendored AST imports helpers newer transformers dropped; the video path never uses it.
    pu.find_pruneable_heads_and_indices = getattr(pu, "find_pruneable_heads_and_indices", None)
    pu.prune_linear_layer = getattr(pu, "prune_linear_layer", None)
    from omegaconf import OmegaConf
    from selva.ext.autoencoder.vae import VAE_16k
    from selva.ext.bigvgan.models import BigVGANVocoder
    from selva.model.flow_matching import FlowMatching
    from selva.model.networks_generator import get_my_mmaudio
    from selva.model.networks_video_enc import get_my_textsynch

    ts = get_my_textsynch("depth1", num_sup_text_tokens=5).to(dtype).eval()
    t5_f = inputs["t5_f"].to(dtype)
    text5, mask5 = ts.prepend_sup_text_tokens(t5_f, inputs["t5_mask"])
    frames = inputs["frames"].to(dtype)
    net = get_my_mmaudio("small_16k").to(dtype).eval()
    net.update_seq_lengths(net._latent_seq_len, net._clip_seq_len, net._sync_seq_len)  # demo
    fm = FlowMatching(min_sigma=0, inference_mode="euler", num_steps=inputs["steps"])
    clip = net.get_empty_clip_sequence(1)
    sync = torch.randn(1, 192, 768, dtype=dtype)
    x0 = torch.randn_like(inputs["latents"]).to(dtype)  # the demo draws x0 in the model dtype
    text_f = inputs["text_f"].to(dtype)

    def sample():
        c = net.preprocess_conditions(clip, sync, text_f)
        e = net.get_empty_conditions(1, negative_text_features=text_f)
        return fm.to_data(lambda t, x: net.ode_wrapper(t, x, c, e, 4.5), x0)

    vae = VAE_16k().eval()
    vae.remove_weight_norm()
    vae = vae.to(dtype)
    z = inputs["latents"].transpose(1, 2).to(dtype)
    mel = vae.decode(z)
    voc = BigVGANVocoder(OmegaConf.load(f"{repo}/selva/ext/bigvgan/bigvgan_vocoder.yml")).eval()
    voc.remove_weight_norm()
    voc = voc.to(dtype)
    voc(mel)  # warm-up, as ours
    return {
        "textsynch": lambda: ts.encode_video_with_sync(frames, text5, mask5),
        "sampling": sample,
        "vae_decode": lambda: vae.decode(z),
        "vocoder": lambda: voc(mel),
    }


def our_stages(pipe, video: Path, steps: int, chunk: int) -> tuple[dict, dict]:
    """Run our chain once (warm-up, and the inputs of every stage), then return stage name ->
    a call that runs it once on those inputs, and the inputs."""
    from selva_core.audio.vae import sequence_to_latent
    from selva_core.pipeline import Features
    from selva_core.video.decode import normalize_sync_frames

    window_chunk = None if chunk == 0 else chunk
    clip = pipe.decode(video)
    t5_f, t5_mask = pipe.t5.encode([PROMPT])
    text_f = pipe.clip.encode_text([PROMPT])
    seq = pipe.sequence(clip.duration)
    frames = normalize_sync_frames(clip.sync_frames[: seq.num_sync_frames]).unsqueeze(0)
    sync_f = pipe.sync_encoder(frames, t5_f, t5_mask, window_chunk=window_chunk)
    feats = Features("small_16k", PROMPT, clip.duration, sync_f[0], text_f[0])
    latents = pipe.sample_latents([feats], steps=steps)
    z = sequence_to_latent(latents.to(pipe.config.dtype))  # as Pipeline.decode_latents
    mel = pipe.vae.decode(z)
    wav = pipe.vocoder(mel)  # the first call builds the conv kernels
    stages = {
        "decode": lambda: pipe.decode(video),
        "t5": lambda: pipe.t5.encode([PROMPT]),
        "clip_text": lambda: pipe.clip.encode_text([PROMPT]),
        "textsynch": lambda: pipe.sync_encoder(frames, t5_f, t5_mask, window_chunk=window_chunk),
        "sampling": lambda: pipe.sample_latents([feats], steps=steps),
        "vae_decode": lambda: pipe.vae.decode(z),
        "vocoder": lambda: pipe.vocoder(mel),
    }
    inputs = {"frames": frames, "t5_f": t5_f, "t5_mask": t5_mask, "text_f": text_f}
    inputs.update(latents=latents, wav=wav, duration=clip.duration, steps=steps)
    return stages, inputs


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.no_grad()  # as the pipeline runs (weights built outside inference_mode)
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=1, help="TextSynch windows per pass; 0=all")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--official", help="checkout of jnwnlee/selva to time in the same run")
    parser.add_argument(
        "--precision",
        choices=sorted(DTYPES),
        default="fp32",
        help="both sides' weights and inputs (bf16: the official side as its demo runs)",
    )
    parser.add_argument(
        "--official-fp32",
        action="store_true",
        help="with --precision bf16 and --official: time the official code in fp32 too",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="each round times every stage, ours then the official's right after it; each "
        "keeps its best round (a shared VM's speed drifts by 10 %% between minutes)",
    )
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import common

    from selva_core.pipeline import Pipeline, PipelineConfig

    info = {"machine": common.machine_info(), "args": vars(args)}
    print(f"machine: {common.machine_line(info['machine'])}")
    dtype = DTYPES[args.precision]
    t0 = time.perf_counter()
    pipe = Pipeline(
        PipelineConfig("small_16k", dtype=dtype), components=real_size_components(dtype)
    )
    print(f"built real-size random components in {time.perf_counter() - t0:.0f} s")

    with tempfile.TemporaryDirectory() as tmp, common.LoadSampler() as load:
        video = Path(tmp) / "clip.mp4"
        write_long_video(video, duration=10.0, width=640, height=360, fps=25)
        ours, inputs = our_stages(pipe, video, args.steps, args.chunk)
        official = official_stages(args.official, inputs, dtype) if args.official else {}
        # A bf16 run can also time the official code in fp32 (the second target).
        official32 = {}
        if args.official and args.official_fp32 and dtype != torch.float32:
            official32 = official_stages(args.official, inputs, torch.float32)
        sides = {"ours": ours, "official": official, "official_fp32": official32}
        best: dict[str, dict[str, float]] = {side: {} for side in sides}
        for r in range(args.rounds):
            for name in ours:
                for side, stages in sides.items():
                    if name in stages:
                        sec = seconds(stages[name])
                        best[side][name] = min(sec, best[side].get(name, sec))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    mine, theirs = best["ours"], best["official"]
    # The reference figures are the official code in fp32: no stand-in for a bf16 comparison.
    reference = theirs or (REFERENCE_S if args.precision == "fp32" else {})
    label = f"official {args.precision}" if theirs else "reference fp32, other run"
    columns = [(label, reference)]
    if best["official_fp32"]:
        columns.append(("official fp32", best["official_fp32"]))
    print(
        f"\none {inputs['duration']:.2f} s clip, small_16k sizes, {args.precision}, "
        f"{args.threads} threads, best of {args.rounds} round(s); "
        f"load average {load.summary()['mean']:.2f} mean"
    )
    print(
        f"{'stage':12s} {'ours (s)':>9s}" + "".join(f" {c:>26s} {'ratio':>7s}" for c, _ in columns)
    )
    for name, sec in mine.items():
        row = f"{name:12s} {sec:9.2f}"
        for _, ref_side in columns:
            ref = ref_side.get(name)
            row += f" {ref:26.2f} {ref / sec:6.2f}x" if ref else f" {'':26s} {'':7s}"
        print(row)
    ratios = {}
    for column, ref_side in columns:
        shared = [k for k in mine if k in ref_side]
        if not shared:
            continue
        ours_shared, ref_total = sum(mine[k] for k in shared), sum(ref_side[k] for k in shared)
        ratios[column] = ref_total / ours_shared
        print(
            f"total vs {column}: ours {ours_shared:.2f} s, theirs {ref_total:.2f} s, "
            f"{ratios[column]:.2f}x  (the stages both timed: {', '.join(shared)})"
        )
    print(f"all our stages, decode and text encoders included: {sum(mine.values()):.2f} s")
    print(f"audio out: {tuple(inputs['wav'].shape)}, latents {tuple(inputs['latents'].shape)}")
    info.update(
        precision=args.precision,
        ours_s=mine,
        official_s=theirs or None,
        official_fp32_s=best["official_fp32"] or None,
        reference_s=None if theirs or not reference else REFERENCE_S,
        ratios_total=ratios,
        load_average=load.summary(),
    )
    common.write_json(args.json, info)


if __name__ == "__main__":
    main()
