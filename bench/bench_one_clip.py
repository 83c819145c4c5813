"""Time each stage of one 8 s clip at real small_16k sizes (random weights), CPU fp32.

    python bench/bench_one_clip.py [--threads 2] [--chunks 1,4,0] [--official PATH]

Stages run through the same `Pipeline` code as real inference. With `--official PATH` (a
checkout of jnwnlee/selva; it needs omegaconf and torchdiffeq importable) the official modules
are timed in the same run on the same inputs and the ratio column is official / ours,
measured here. Without it, the issue's reference figures for the official code on a 2-core
CPU (TextSynch 57 s, sampling 12.4 s, BigVGAN 4.3 s, VAE 0.17 s; 74 s per clip) are shown,
marked as taken from another run.
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


def real_size_components():
    """small_16k components at published sizes with random weights (nothing downloaded)."""
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
    return Components(
        generator=build.random_generator("small_16k").eval(),
        sync_encoder=random_textsynch(TextSynchConfig.depth1()).eval(),
        clip=ClipEncoder(
            open_clip.create_model("ViT-H-14-378-quickgelu", pretrained=None).eval(),
            open_clip.get_tokenizer("ViT-H-14-378-quickgelu"),
        ),
        t5=T5TextEncoder(T5EncoderModel(t5_cfg).eval(), ByT5Tokenizer()),
        vae=vae.random_vae(vae.VAE_16K, 0, decoder_only=True).eval(),
        vocoder=bigvgan.random_vocoder(bigvgan.BIGVGAN_16K, 0),
        mel=build.mel_converter("small_16k"),
    )


def timed(fn, repeat: int = 1):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


@torch.inference_mode()
def time_official(repo: str, frames, t5_f, t5_mask, text_f, latents) -> dict[str, float]:
    """The official modules at the same sizes, same inputs, random weights, in this process."""
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

    out = {}
    ts = get_my_textsynch("depth1", num_sup_text_tokens=5).eval()
    text5, mask5 = ts.prepend_sup_text_tokens(t5_f, t5_mask)
    _, out["textsynch"] = timed(lambda: ts.encode_video_with_sync(frames, text5, mask5))
    net = get_my_mmaudio("small_16k").eval()
    fm = FlowMatching(min_sigma=0, inference_mode="euler", num_steps=25)
    clip = net.get_empty_clip_sequence(1)
    sync = torch.randn(1, 192, 768)
    x0 = torch.randn_like(latents)

    def sample():
        c = net.preprocess_conditions(clip, sync, text_f)
        e = net.get_empty_conditions(1, negative_text_features=text_f)
        return fm.to_data(lambda t, x: net.ode_wrapper(t, x, c, e, 4.5), x0)

    _, out["sampling"] = timed(sample)
    vae = VAE_16k().eval()
    vae.remove_weight_norm()
    z = latents.transpose(1, 2)
    vae.decode(z)
    mel, out["vae_decode"] = timed(lambda: vae.decode(z), 2)
    cfg = OmegaConf.load(f"{repo}/selva/ext/bigvgan/bigvgan_vocoder.yml")
    voc = BigVGANVocoder(cfg).eval()
    voc.remove_weight_norm()
    voc(mel)
    _, out["vocoder"] = timed(lambda: voc(mel))
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunks", default="1,4,0", help="TextSynch window chunks to try; 0=all")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--official", help="checkout of jnwnlee/selva to time in the same run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from selva_core.pipeline import Pipeline, PipelineConfig
    from selva_core.video.decode import normalize_sync_frames

    t0 = time.perf_counter()
    pipe = Pipeline(PipelineConfig("small_16k"), components=real_size_components())
    print(f"built real-size random components in {time.perf_counter() - t0:.0f} s")

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.mp4"
        write_long_video(video, duration=10.0, width=640, height=360, fps=25)
        pipe.decode(video)  # warm-up
        clip, t_decode = timed(lambda: pipe.decode(video), repeat=2)

    rows = {"decode": t_decode}
    (t5_f, t5_mask), rows["t5"] = timed(lambda: pipe.t5.encode([PROMPT]), repeat=2)
    text_f, rows["clip_text"] = timed(lambda: pipe.clip.encode_text([PROMPT]), repeat=2)
    seq = pipe.sequence(clip.duration)
    frames = normalize_sync_frames(clip.sync_frames[: seq.num_sync_frames]).unsqueeze(0)
    chunk_times = {}
    for chunk in (int(c) for c in args.chunks.split(",")):
        window_chunk = None if chunk == 0 else chunk
        sync_f, chunk_times[chunk] = timed(
            lambda wc=window_chunk: pipe.sync_encoder(frames, t5_f, t5_mask, window_chunk=wc)
        )
    best_chunk = min(chunk_times, key=chunk_times.get)
    rows["textsynch"] = chunk_times[best_chunk]

    from selva_core.pipeline import Features

    feats = Features("small_16k", PROMPT, clip.duration, sync_f[0], text_f[0])
    latents, rows["sampling"] = timed(lambda: pipe.sample_latents([feats], steps=args.steps))
    from selva_core.audio.vae import sequence_to_latent

    mel, rows["vae_decode"] = timed(lambda: pipe.vae.decode(sequence_to_latent(latents)), 2)
    pipe.vocoder(mel)  # warm-up: the first call builds the conv kernels
    wav, rows["vocoder"] = timed(lambda: pipe.vocoder(mel))

    official = (
        time_official(args.official, frames, t5_f, t5_mask, text_f, latents)
        if args.official
        else {}
    )
    reference = official or REFERENCE_S
    label = "official, this run" if official else "reference, other run"
    total = sum(rows.values())
    print(f"\none {clip.duration:.2f} s clip, small_16k sizes, fp32, {args.threads} threads")
    print(f"{'stage':12s} {'ours (s)':>9s} {label:>22s} {'ratio':>7s}")
    for name, sec in rows.items():
        ref = reference.get(name)
        ratio = f"{ref / sec:6.2f}x" if ref else ""
        ref_s = f"{ref:.2f}" if ref else ""
        print(f"{name:12s} {sec:9.2f} {ref_s:>22s} {ratio:>7s}")
    ref_total = sum(reference.values())
    print(
        f"{'total':12s} {total:9.2f} {ref_total:22.2f} {ref_total / total:6.2f}x"
        "  (reference total covers the timed stages only)"
    )
    print(
        "TextSynch by window chunk (0 = all windows at once), this run: "
        + ", ".join(f"{c}: {s:.1f} s" for c, s in chunk_times.items())
        + f"; chunk {best_chunk} is {max(chunk_times.values()) / rows['textsynch']:.2f}x "
        "faster than the slowest"
    )
    print(f"audio out: {tuple(wav.shape)}, latents {tuple(latents.shape)}")


if __name__ == "__main__":
    main()
