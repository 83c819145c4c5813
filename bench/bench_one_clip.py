"""Time each stage of one 8 s clip at real small_16k sizes (random weights), CPU fp32.

    python bench/bench_one_clip.py [--threads 2] [--chunks 1,4,0] [--official PATH]
                                   [--rounds N] [--json PATH]

Stages run through the same `Pipeline` code as real inference. With `--official PATH` (a
checkout of jnwnlee/selva; it needs omegaconf and torchdiffeq importable) the official modules
are timed in the same run on the same inputs and the ratio column is official / ours,
measured here; the total covers the stages both sides time. The machine line names the CPU's
ISA flags: the kernels behind both sides depend on them. Without `--official`, the issue's
reference figures for the official code on a 2-core CPU (TextSynch 57 s, sampling 12.4 s,
BigVGAN 4.3 s, VAE 0.17 s; 74 s per clip) are shown, marked as taken from another run.
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


def time_ours(pipe, video: Path, steps: int, chunks: list[int]) -> tuple[dict, dict, dict]:
    """Our stages on one clip; returns (seconds per stage, TextSynch seconds per chunk, the
    tensors the official run needs)."""
    from selva_core.audio.vae import sequence_to_latent
    from selva_core.pipeline import Features
    from selva_core.video.decode import normalize_sync_frames

    pipe.decode(video)  # warm-up
    clip, t_decode = timed(lambda: pipe.decode(video), repeat=2)
    rows = {"decode": t_decode}
    (t5_f, t5_mask), rows["t5"] = timed(lambda: pipe.t5.encode([PROMPT]), repeat=2)
    text_f, rows["clip_text"] = timed(lambda: pipe.clip.encode_text([PROMPT]), repeat=2)
    seq = pipe.sequence(clip.duration)
    frames = normalize_sync_frames(clip.sync_frames[: seq.num_sync_frames]).unsqueeze(0)
    chunk_times = {}
    for chunk in chunks:
        window_chunk = None if chunk == 0 else chunk
        sync_f, chunk_times[chunk] = timed(
            lambda wc=window_chunk: pipe.sync_encoder(frames, t5_f, t5_mask, window_chunk=wc)
        )
    rows["textsynch"] = min(chunk_times.values())
    feats = Features("small_16k", PROMPT, clip.duration, sync_f[0], text_f[0])
    latents, rows["sampling"] = timed(lambda: pipe.sample_latents([feats], steps=steps))
    mel, rows["vae_decode"] = timed(lambda: pipe.vae.decode(sequence_to_latent(latents)), 2)
    pipe.vocoder(mel)  # warm-up: the first call builds the conv kernels
    wav, rows["vocoder"] = timed(lambda: pipe.vocoder(mel))
    inputs = {"frames": frames, "t5_f": t5_f, "t5_mask": t5_mask, "text_f": text_f}
    inputs.update(latents=latents, wav=wav, duration=clip.duration)
    return rows, chunk_times, inputs


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunks", default="1", help="TextSynch window chunks to try; 0=all")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--official", help="checkout of jnwnlee/selva to time in the same run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time ours then the official this many times; each stage keeps its best time "
        "(a shared VM's speed drifts by 10 %% between minutes)",
    )
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import common

    from selva_core.pipeline import Pipeline, PipelineConfig

    info = {"machine": common.machine_info(), "args": vars(args)}
    print(f"machine: {common.machine_line(info['machine'])}")
    t0 = time.perf_counter()
    pipe = Pipeline(PipelineConfig("small_16k"), components=real_size_components())
    print(f"built real-size random components in {time.perf_counter() - t0:.0f} s")
    chunks = [int(c) for c in args.chunks.split(",")]

    ours: dict[str, float] = {}
    official: dict[str, float] = {}
    chunk_times: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp, common.LoadSampler() as load:
        video = Path(tmp) / "clip.mp4"
        write_long_video(video, duration=10.0, width=640, height=360, fps=25)
        for _ in range(args.rounds):
            rows, chunk_round, inputs = time_ours(pipe, video, args.steps, chunks)
            ours = {k: min(v, ours.get(k, v)) for k, v in rows.items()}
            chunk_times = {k: min(v, chunk_times.get(k, v)) for k, v in chunk_round.items()}
            if args.official:
                names = ("frames", "t5_f", "t5_mask", "text_f", "latents")
                got = time_official(args.official, *(inputs[n] for n in names))
                official = {k: min(v, official.get(k, v)) for k, v in got.items()}
    reference = official or REFERENCE_S
    label = "official, this run" if official else "reference, other run"
    print(
        f"\none {inputs['duration']:.2f} s clip, small_16k sizes, fp32, {args.threads} threads, "
        f"best of {args.rounds} round(s); load average {load.summary()['mean']:.2f} mean"
    )
    print(f"{'stage':12s} {'ours (s)':>9s} {label:>22s} {'ratio':>7s}")
    for name, sec in ours.items():
        ref = reference.get(name)
        ratio = f"{ref / sec:6.2f}x" if ref else ""
        ref_s = f"{ref:.2f}" if ref else ""
        print(f"{name:12s} {sec:9.2f} {ref_s:>22s} {ratio:>7s}")
    shared = [k for k in ours if k in reference]
    ours_shared, ref_total = sum(ours[k] for k in shared), sum(reference[k] for k in shared)
    print(
        f"{'total':12s} {ours_shared:9.2f} {ref_total:22.2f} {ref_total / ours_shared:6.2f}x"
        f"  (the stages both timed: {', '.join(shared)})"
    )
    print(f"all our stages, decode and text encoders included: {sum(ours.values()):.2f} s")
    if len(chunk_times) > 1:
        print(
            "TextSynch by window chunk (0 = all windows at once), this run: "
            + ", ".join(f"{c}: {s:.1f} s" for c, s in chunk_times.items())
        )
    print(f"audio out: {tuple(inputs['wav'].shape)}, latents {tuple(inputs['latents'].shape)}")
    info.update(
        ours_s=ours,
        official_s=official or None,
        reference_s=None if official else REFERENCE_S,
        textsynch_by_chunk_s=chunk_times,
        total_shared_stages=shared,
        ratio_total=ref_total / ours_shared,
        load_average=load.summary(),
    )
    common.write_json(args.json, info)


if __name__ == "__main__":
    main()
