"""How far bf16 tracks land from fp32 ones: a tiny catalog through the fp32 and the bf16 pipeline.

    python bench/bench_bf16_fidelity.py [--variant tiny] [--clips 4] [--steps 25] [--json PATH]

Each clip (a real 8 s video made here, its own prompt and seed) is generated twice, by the same
variant in fp32 and in bf16 (weights and inputs cast; the pipeline keeps its mel, sampler state
and derived tables in fp32). Per clip: the relative L2 of the bf16 waveform against the fp32
one (and of the TextSynch features), both tracks' integrated loudness (BS.1770, LUFS) and their
DeSync (seconds, scored by one fp32 DeSync model against the clip's frames, so only the tracks
differ). With the tiny variant's random weights the absolute loudness and DeSync mean nothing;
what is measured is how much bf16 moves them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup_paths()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def make_catalog(folder: Path, clips: int) -> list[tuple[Path, str, int]]:
    """(video, prompt, seed) per clip: 8 s real videos with a tone, different picture seeds."""
    from video_factory import AudioSpec, write_video

    rows = []
    for i in range(clips):
        path = write_video(
            folder / f"clip{i}.mp4",
            duration=8.0,
            fps=25,
            size=(160, 120),
            audio=AudioSpec(freq=220.0 * (i + 1)),
            seed=i,
        )
        rows.append((path, common.PROMPTS[i % len(common.PROMPTS)], 100 + i))
    return rows


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from selva_core.model.desync import desync_score, load_desync_model
    from selva_core.pipeline import Pipeline, PipelineConfig
    from selva_core.qa.metrics import integrated_loudness

    info = {"machine": common.machine_info(), "args": vars(args)}
    print(f"machine: {common.machine_line(info['machine'])}")
    scorer = load_desync_model(args.variant)  # fp32 for both sides' tracks
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        catalog = make_catalog(Path(tmp), args.clips)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            pipe = Pipeline(PipelineConfig(variant=args.variant, dtype=dtype))
            rate = pipe.sampling_rate
            rows = []
            for video, prompt, seed in catalog:
                t0 = time.perf_counter()
                clip = pipe.decode(video)
                feats = pipe.features_from_decoded([clip], [prompt])[0]
                wav = pipe.generate(feats, steps=args.steps, seed=seed)[0]
                seconds = time.perf_counter() - t0
                wav16 = wav if rate == 16000 else None
                if wav16 is None:
                    from selva_core.compat import torchaudio_functional

                    wav16 = torchaudio_functional().resample(wav, rate, 16000)
                rows.append(
                    {
                        "sync_f": feats.sync_f,
                        "wav": wav,
                        "lufs": integrated_loudness(wav, rate),
                        "desync_s": desync_score(scorer, clip.sync_frames, wav16),
                        "seconds": seconds,
                    }
                )
            results[name] = rows

    table = []
    print(f"\n{args.variant}, {args.clips} clips of 8 s, {args.steps} steps; bf16 against fp32")
    print(
        f"{'clip':>4s} {'wav rel L2':>10s} {'sync_f rel L2':>13s} {'LUFS fp32':>9s} "
        f"{'LUFS bf16':>9s} {'dLU':>6s} {'DeSync fp32':>11s} {'DeSync bf16':>11s}"
    )
    for i, (a, b) in enumerate(zip(results["fp32"], results["bf16"], strict=True)):
        row = {
            "clip": i,
            "wav_rel_l2": _rel(b["wav"], a["wav"]),
            "sync_f_rel_l2": _rel(b["sync_f"], a["sync_f"]),
            "lufs_fp32": a["lufs"],
            "lufs_bf16": b["lufs"],
            "delta_lu": b["lufs"] - a["lufs"],
            "desync_fp32": a["desync_s"],
            "desync_bf16": b["desync_s"],
            "seconds_fp32": a["seconds"],
            "seconds_bf16": b["seconds"],
        }
        table.append(row)
        print(
            f"{i:4d} {row['wav_rel_l2']:10.4f} {row['sync_f_rel_l2']:13.4f} "
            f"{row['lufs_fp32']:9.2f} {row['lufs_bf16']:9.2f} {row['delta_lu']:+6.2f} "
            f"{row['desync_fp32']:11.2f} {row['desync_bf16']:11.2f}"
        )
    n = len(table)
    summary = {
        "wav_rel_l2_mean": sum(r["wav_rel_l2"] for r in table) / n,
        "wav_rel_l2_max": max(r["wav_rel_l2"] for r in table),
        "abs_delta_lu_mean": sum(abs(r["delta_lu"]) for r in table) / n,
        "abs_delta_lu_max": max(abs(r["delta_lu"]) for r in table),
        "desync_fp32_mean": sum(r["desync_fp32"] for r in table) / n,
        "desync_bf16_mean": sum(r["desync_bf16"] for r in table) / n,
        "desync_windows_changed": sum(r["desync_fp32"] != r["desync_bf16"] for r in table),
    }
    print(
        f"mean wav rel L2 {summary['wav_rel_l2_mean']:.4f} (max {summary['wav_rel_l2_max']:.4f});"
        f" mean |dLU| {summary['abs_delta_lu_mean']:.3f} (max {summary['abs_delta_lu_max']:.3f});"
        f" DeSync mean {summary['desync_fp32_mean']:.3f} s fp32, "
        f"{summary['desync_bf16_mean']:.3f} s bf16 ({summary['desync_windows_changed']}/{n} "
        "clips changed)"
    )
    info.update(clips=table, summary=summary)
    common.write_json(args.json, info)


if __name__ == "__main__":
    main()
