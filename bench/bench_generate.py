"""Throughput of the generation job against a sequential loop and the generator stage alone.

    python bench/bench_generate.py [--sizes tiny,small_16k] [--clips 16] [--small-clips 16]
        [--duration 8] [--steps 25] [--batch-size 8] [--threads 1] [--json bench_generate.json]

For each size, over the same N clips (videos of --duration s written here, one prompt each),
measured in this one run on this machine (torch uses --threads threads in this process; each
model actor of the job gets one logical CPU, i.e. one thread):

- loop:            what `generate-one` does, clip after clip (decode, features, sampling,
                   vocoder, FLAC), with the models loaded once beforehand (load time excluded,
                   which favours the loop; the command itself reloads them on every call);
- generator alone: the job's generator actor class called in this process on the same
                   features held in memory, in batches of --batch-size (sampling + VAE +
                   vocoder only: the upper bound of the job's generator stage);
- job (features):  `run_generate` on a local Ray cluster from a features folder holding the
                   same features (feature loader -> generator actor -> writers), wall clock
                   including actor start-up;
- job (catalog):   `run_generate` from the catalog (decode -> encoders -> generator -> writers).

`small_16k` runs at published sizes with random weights (nothing downloaded): the same
components as bench_one_clip.py. Prints a table of clips/s and ratios, writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

PROMPTS = ["a dog barking", "rain on a tin roof", "a car engine idling", "birds chirping"]


def small_components(device: str, dtype: torch.dtype, role: str = "all"):
    """small_16k sizes, random weights; the generator role builds only what it runs."""
    from selva_core import build
    from selva_core.audio import bigvgan, vae
    from selva_core.pipeline import Components

    if role == "generator":
        parts = Components(
            generator=build.random_generator("small_16k").eval(),
            sync_encoder=None,
            clip=None,
            t5=None,
            vae=vae.random_vae(vae.VAE_16K, 0, decoder_only=True).eval(),
            vocoder=bigvgan.random_vocoder(bigvgan.BIGVGAN_16K, 0),
            mel=None,
        )
    else:
        from bench_one_clip import real_size_components

        parts = real_size_components()
        if role == "encoder":
            parts.generator = parts.vae = parts.vocoder = None
    for name in ("generator", "sync_encoder", "clip", "t5", "vae", "vocoder"):
        module = getattr(parts, name)
        if module is not None:
            setattr(parts, name, module.to(device=device, dtype=dtype).eval())
    return parts


def write_clips(folder: Path, n: int, duration: float) -> list[Path]:
    from video_factory import write_video

    paths = []
    for i in range(n):
        sub = folder / PROMPTS[i % len(PROMPTS)].replace(" ", "_")
        sub.mkdir(parents=True, exist_ok=True)
        paths.append(
            write_video(sub / f"clip{i:02d}.mp4", duration=duration, fps=25, size=(96, 64))
        )
    return paths


def pipeline(size: str):
    from selva_core.pipeline import Pipeline, PipelineConfig

    config = PipelineConfig(variant=size)
    if size == "tiny":
        return Pipeline(config)
    return Pipeline(config, components=small_components("cpu", torch.float32))


def run_loop(pipe, clips: list[Path], steps: int, out: Path) -> tuple[float, list]:
    """generate-one's work per clip, models already loaded."""
    from selva_core.video.write import write_flac

    feats = []
    t0 = time.perf_counter()
    for path in clips:
        f = pipe.extract_features(path, path.parent.name.replace("_", " "), max_duration=8.0)
        wav = pipe.generate(f, negative_prompt=None, seed=42, steps=steps)[0]
        write_flac(out / f"{path.stem}.flac", wav, pipe.sampling_rate)
        feats.append(f)
    return time.perf_counter() - t0, feats


def run_generator_alone(size: str, feats: list, steps: int, batch_size: int) -> float:
    """The job's generator actor class, in this process, on features from memory."""
    from selva_ray.generate.stages import AudioGenerator

    factory = small_components if size != "tiny" else None
    gen = AudioGenerator(
        variant=size, batch_size=batch_size, device="cpu", components_factory=factory
    )
    rows = [
        {
            "id": str(i),
            "shard": "s",
            "row": i,
            "source": f.source,
            "prompt": f.prompt,
            "negative_prompt": None,
            "seed": 42,
            "start": 0.0,
            "cfg": 4.5,
            "steps": steps,
            "duration": f.duration,
            "status": "ok",
            "stage": "",
            "error_type": "",
            "message": "",
            "decode_s": float("nan"),
            "features_s": float("nan"),
            "sync_f": f.sync_f.numpy(),
            "sync_len": f.sync_f.shape[0],
            "text_f": f.text_f.numpy(),
        }
        for i, f in enumerate(feats)
    ]
    t0 = time.perf_counter()
    for k in range(0, len(rows), batch_size):
        chunk = rows[k : k + batch_size]
        batch = {
            key: np.stack([r[key] for r in chunk])
            if isinstance(chunk[0][key], np.ndarray)
            else np.array([r[key] for r in chunk], dtype=object)
            for key in chunk[0]
        }
        out = gen(batch)
        assert all(s == "ok" for s in out["status"]), out["message"]
    return time.perf_counter() - t0


def write_features(size: str, feats: list, folder: Path) -> None:
    """The loop's features as an `extract` folder (float32), for the features-input job."""
    from selva_core.pipeline import fit_length
    from selva_core.variants import get_spec
    from selva_ray.extract.stages import feature_table
    from selva_ray.io.feature_schema import FeatureLayout, to_storage
    from selva_ray.io.output_dir import OutputDir

    layout = FeatureLayout.for_run(get_spec(size), max_duration=8.0, storage_dtype="float32")
    shapes = layout.tensor_shapes()

    batch = {
        "id": [f"clip{i:02d}" for i in range(len(feats))],
        "source": [f.source for f in feats],
        "prompt": [f.prompt for f in feats],
        "negative_prompt": [None] * len(feats),
        "seed": [42] * len(feats),
        "start": [0.0] * len(feats),
        "duration": [f.duration for f in feats],
        "fps": [25.0] * len(feats),
        "has_audio": [False] * len(feats),
        "padded": [False] * len(feats),
        "prompt_truncated": [False] * len(feats),
        "encoder_checksum": ["bench"] * len(feats),
        "sync_len": [f.sync_f.shape[0] for f in feats],
        "sync_f": [to_storage(fit_length(f.sync_f, shapes["sync_f"][0]), "float32") for f in feats],
        "text_f": [to_storage(f.text_f, "float32") for f in feats],
    }
    table = feature_table(batch, list(range(len(feats))), layout)
    out = OutputDir(str(folder))
    out.claim(layout.describe())
    out.stage("bench", "features", table)
    out.commit("bench")


def run_job(size: str, source: Path, out: Path, steps: int, batch_size: int, catalog: bool):
    from selva_ray.generate import GenerateConfig, run_generate

    factory = small_components if size != "tiny" else None
    summary = run_generate(
        GenerateConfig(
            input=str(source),
            output=str(out),
            variant=size,
            steps=steps,
            batch_size=batch_size,
            shard_size=batch_size,
            cpus_per_actor=1.0,
            actor_memory_gb=1.0 if size == "tiny" else 6.0,
            progress=False,
            components_factory=factory,
        )
    )
    assert summary.failed == 0, summary.errors_by_stage
    return summary


def bench_size(
    size: str, n: int, duration: float, steps: int, batch_size: int, catalog_job: bool
) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-gen-{size}-") as tmp:
        tmp = Path(tmp)
        clips = write_clips(tmp / "catalog", n, duration)
        pipe = pipeline(size)
        (tmp / "loop").mkdir()
        loop_s, feats = run_loop(pipe, clips, steps, tmp / "loop")
        del pipe
        gc.collect()
        alone_s = run_generator_alone(size, feats, steps, batch_size)
        write_features(size, feats, tmp / "features")
        job = run_job(size, tmp / "features", tmp / "job-f", steps, batch_size, False)
        row = {
            "size": size,
            "clips": n,
            "duration_s": duration,
            "steps": steps,
            "batch_size": batch_size,
            "loop_clips_per_s": n / loop_s,
            "generator_alone_clips_per_s": n / alone_s,
            "job_features_clips_per_s": n / job.wall_s,
            "job_features_batch_fill": job.batch_fill,
        }
        if catalog_job:
            cat = run_job(size, tmp / "catalog", tmp / "job-c", steps, batch_size, True)
            row["job_catalog_clips_per_s"] = n / cat.wall_s
            row["job_catalog_batch_fill"] = cat.batch_fill
        return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,small_16k")
    p.add_argument("--clips", type=int, default=16, help="clips at tiny size")
    p.add_argument("--small-clips", type=int, default=16, help="clips at small_16k size")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per clip")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--no-small-catalog",
        action="store_true",
        help="skip the catalog-input job at small_16k (real-size encoders are slow on CPU)",
    )
    p.add_argument("--json", default="bench_generate.json")
    args = p.parse_args()

    import ray

    # Ray workers import this file's helpers (bench_one_clip) and the package from here.
    root = HERE.parent
    paths = [str(root), str(HERE), str(root / "tests"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    torch.set_num_threads(args.threads)
    ray.init(num_cpus=4, object_store_memory=1 << 30, include_dashboard=False)
    rows = []
    try:
        for size in args.sizes.split(","):
            n = args.clips if size == "tiny" else args.small_clips
            catalog_job = size == "tiny" or not args.no_small_catalog
            t0 = time.perf_counter()
            rows.append(
                bench_size(size, n, args.duration, args.steps, args.batch_size, catalog_job)
            )
            print(f"[{size}: {time.perf_counter() - t0:.0f} s] {rows[-1]}", file=sys.stderr)
            info = {"rows": rows, "threads": args.threads, "cores": os.cpu_count()}
            Path(args.json).write_text(json.dumps(info, indent=1))  # partial results survive
    finally:
        ray.shutdown()
    header = (
        "| size | clips | loop clips/s | generator alone clips/s | job (features) clips/s | "
        "job/generator alone | job/loop | job (catalog) clips/s | job (catalog)/loop |"
    )
    print(header)
    print("|---" * 9 + "|")
    for r in rows:
        cat = r.get("job_catalog_clips_per_s")
        print(
            f"| {r['size']} | {r['clips']} | {r['loop_clips_per_s']:.3f} | "
            f"{r['generator_alone_clips_per_s']:.3f} | {r['job_features_clips_per_s']:.3f} | "
            f"{r['job_features_clips_per_s'] / r['generator_alone_clips_per_s']:.2f} | "
            f"{r['job_features_clips_per_s'] / r['loop_clips_per_s']:.2f} | "
            + (f"{cat:.3f} | {cat / r['loop_clips_per_s']:.2f} |" if cat else "- | - |")
        )
    info = {"rows": rows, "threads": args.threads, "cores": os.cpu_count()}
    Path(args.json).write_text(json.dumps(info, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
