"""Pipeline efficiency of the extract and generate jobs: each Ray job against a sequential
single-process loop over the same clips, and against its slowest stage alone fed from memory.

    python bench/bench_pipeline.py [--jobs extract,generate] [--sizes tiny,small_16k]
        [--clips 16] [--small-clips 4] [--duration 8] [--small-duration 8] [--steps 25]
        [--batch-size 8] [--generate-input features,catalog] [--small-catalog]
        [--threads N] [--json bench_pipeline.json]

Measured in this one run, on the same clips (small real videos written here, `tiny` seeded
weights or `small_16k` published sizes with random weights):

- loop: one process doing the work clip after clip (decode, encoders, and for generate the
  sampler, vocoder and FLAC; for extract one Parquet file at the end), models loaded once
  beforehand. `loop` excludes that load, `loop+load` includes it.
- generate-one loop (tiny only; the generate job): `selva-ray generate-one` run once per
  clip, as a user without the job would: each call a new process that imports, builds the
  models and does one clip. This is the issue's comparison; `loop` is the stricter one.
- stage alone: each stage of the job on its own, in this process, on inputs held in memory
  (decode: `decode_clip`; encode: the encoders on decoded clips in batches; generate: the
  job's generator actor class on features in batches). The slowest one bounds the job.
  `alone` excludes the stage's model build, `alone+load` includes it.
- job: `run_extract` / `run_generate` on a local Ray cluster started beforehand (its start
  time is reported apart). `job` is the whole call (actor start-up, model build, all stages,
  commits); `job steady` runs from the moment the last model actor finished building its
  models to the end, the job's counterpart of `alone`.

This process and the stage-alone runs use --threads torch threads (default: all cores); the
job's model actors split the cores between the model actors that compute at once
(`selva_ray.runtime.cpu_threads`). Ratios: job/alone (pipeline efficiency, 1.0 = the job is as
fast as its slowest stage fed from memory) both wall-inclusive and steady-state; job/loop.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup_paths()
READY = Path(tempfile.mkdtemp(prefix="selva-bench-ready-"))
os.environ["SELVA_BENCH_READY_DIR"] = str(READY)  # before Ray starts: workers inherit it

import torch  # noqa: E402


def _clear_ready() -> None:
    for p in READY.iterdir():
        p.unlink()


def _steady(wall_s: float, t_end: float) -> float | None:
    marks = common.ready_times(READY)
    return (t_end - max(marks.values())) if marks else None


# ---- loops ----------------------------------------------------------------------------------


def run_loop(size: str, clips: list[Path], steps: int, out: Path, duration: float, gen: bool):
    """The single-process loop, models loaded once: per clip decode + encoders (extract's
    work; its Parquet file is written at the end) then, with `gen`, sampler + vocoder + FLAC.
    Returns seconds of each part, the load time and the features."""
    from selva_core.video.write import write_flac

    t0 = time.perf_counter()
    pipe = common.pipeline(size)
    load_s = time.perf_counter() - t0
    feats, t_extract, t_generate = [], 0.0, 0.0
    for path in clips:
        prompt = path.parent.name.replace("_", " ")
        t0 = time.perf_counter()
        f = pipe.extract_features(path, prompt, max_duration=duration)
        t1 = time.perf_counter()
        if gen:
            wav = pipe.generate(f, negative_prompt=None, seed=42, steps=steps)[0]
            write_flac(out / f"{path.stem}.flac", wav, pipe.sampling_rate)
        t_extract += t1 - t0
        t_generate += time.perf_counter() - t1
        feats.append(f)
    t0 = time.perf_counter()
    common.write_features(size, feats, out / "features", max_duration=duration)
    t_parquet = time.perf_counter() - t0
    del pipe
    gc.collect()
    loop = {"extract": t_extract + t_parquet, "generate": t_extract + t_generate}
    return {**loop, "load": load_s}, feats


def run_cli_loop(size: str, clips: list[Path], steps: int, out: Path, duration: float) -> float:
    """What a user without the job runs: `selva-ray generate-one` once per clip, each call a
    new process that imports, builds the models, decodes, encodes, samples and writes.
    Seconds for all clips."""
    import subprocess

    t0 = time.perf_counter()
    for path in clips:
        cmd = [sys.executable, "-m", "selva_ray.cli", "generate-one", str(path)]
        cmd += ["--prompt", path.parent.name.replace("_", " "), "--variant", size]
        cmd += ["--steps", str(steps), "--duration", str(duration), "--offline"]
        cmd += ["--output-dir", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def random_features(size: str, clips: list[Path], prompts: list[str], duration: float) -> list:
    """Features of the variant's shapes with random values (the generator's cost does not
    depend on them), for runs that skip the loop (and its encoders)."""
    from selva_core.pipeline import Features
    from selva_core.variants import get_spec

    spec = get_spec(size)
    seq = spec.sequence(duration)
    c = spec.generator_config
    g = torch.Generator().manual_seed(0)
    return [
        Features(
            variant=spec.name,
            prompt=prompt,
            duration=duration,
            sync_f=torch.randn(seq.sync_seq_len, c.sync_dim, generator=g),
            text_f=torch.randn(77, c.text_dim, generator=g),
            clip_f=torch.randn(seq.clip_seq_len, c.clip_dim, generator=g)
            if spec.uses_clip_frames
            else None,
            source=str(path),
        )
        for path, prompt in zip(clips, prompts, strict=True)
    ]


# ---- stages alone ---------------------------------------------------------------------------


def decode_alone(size: str, clips: list[Path], duration: float) -> tuple[float, list]:
    from selva_core.pipeline import decode_config_for
    from selva_core.variants import get_spec
    from selva_core.video.decode import decode_clip

    config = decode_config_for(get_spec(size), "official")
    t0 = time.perf_counter()
    decoded = [decode_clip(p, start=0.0, max_duration=duration, config=config) for p in clips]
    return time.perf_counter() - t0, decoded


def encode_alone(size: str, decoded: list, prompts: list[str], batch: int) -> dict:
    from selva_core.pipeline import Pipeline, PipelineConfig

    t0 = time.perf_counter()
    config = PipelineConfig(variant=size, generation=False)
    pipe = Pipeline(
        config, components=common.components_factory(size)("cpu", config.dtype, "encoder")
    )
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(0, len(decoded), batch):
        pipe.features_from_decoded(decoded[k : k + batch], prompts[k : k + batch])
    return {"alone_s": time.perf_counter() - t0, "build_s": build_s}


def generate_alone(size: str, feats: list, steps: int, batch: int) -> dict:
    """The job's generator actor class, in this process, on features from memory."""
    from selva_ray.generate.stages import AudioGenerator

    t0 = time.perf_counter()
    gen = AudioGenerator(
        variant=size,
        batch_size=batch,
        device="cpu",
        components_factory=common.components_factory(size),
    )
    build_s = time.perf_counter() - t0
    rows = common.generator_rows(feats, steps)
    t0 = time.perf_counter()
    for k in range(0, len(rows), batch):
        out = gen(common.as_batch(rows[k : k + batch]))
        assert all(s == "ok" for s in out["status"]), out["message"]
    return {"alone_s": time.perf_counter() - t0, "build_s": build_s}


# ---- jobs -----------------------------------------------------------------------------------


def run_extract_job(size: str, source: Path, out: Path, batch: int, duration: float) -> dict:
    from selva_ray.extract.job import ExtractConfig, run_extract

    _clear_ready()
    summary = run_extract(
        ExtractConfig(
            input=str(source),
            output=str(out),
            variant=size,
            max_duration=duration,
            batch_size=batch,
            shard_size=max(batch, 16),
            actor_memory_gb=1.0 if size == "tiny" else 6.0,
            progress=False,
            check_weights=False,
            components_factory=common.components_factory(size),
        )
    )
    t_end = time.time()
    assert summary.failed == 0, summary
    return {"job_s": summary.wall_s, "job_steady_s": _steady(summary.wall_s, t_end)}


def run_generate_job(
    size: str,
    source: Path,
    out: Path,
    steps: int,
    batch: int,
    dur: float,
    job_batch: int,
    precision: str | None = None,
):
    """The job with its own defaults for actors and batch size (`job_batch` 0), or
    `--batch-size job_batch`; `precision` None: the job's default (auto)."""
    from selva_ray.generate import GenerateConfig, run_generate

    _clear_ready()
    summary = run_generate(
        GenerateConfig(
            input=str(source),
            output=str(out),
            variant=size,
            max_duration=dur,
            steps=steps,
            precision=precision,
            batch_size=job_batch or None,
            shard_size=batch,
            actor_memory_gb=1.0 if size == "tiny" else 6.0,
            progress=False,
            components_factory=common.components_factory(size),
            check_weights=False,  # random weights at published sizes: no files
            desync=False,  # the generation pipeline's own speed (DeSync has its own actors)
        )
    )
    t_end = time.time()
    assert summary.failed == 0, summary.errors_by_stage
    return {
        "clips": summary.ok,
        "job_s": summary.wall_s,
        "job_steady_s": _steady(summary.wall_s, t_end),
        "batch_fill": summary.batch_fill,
        "job_batches": summary.batches,
    }


# ---- one size ---------------------------------------------------------------------------------


def bench(size: str, n: int, duration: float, args, jobs: list[str], inputs: list[str]):
    """Both jobs at one size share the clips, the loop (extract's part of it is timed apart)
    and the stage-alone runs."""
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"bench-{size}-") as tmp:
        tmp = Path(tmp)
        clips = common.write_clips(tmp / "catalog", n, duration)
        prompts = [p.parent.name.replace("_", " ") for p in clips]
        (tmp / "loop").mkdir()
        cli_loop_s = None
        if "generate" in jobs and size == "tiny":  # only tiny runs offline from the command line
            cli_loop_s = run_cli_loop(size, clips, args.steps, tmp / "cli-loop", duration)
        if size == "tiny" or not args.no_small_loop:
            gen = "generate" in jobs
            loop, feats = run_loop(size, clips, args.steps, tmp / "loop", duration, gen)
        else:  # no loop: the generator's inputs are random features of the right shapes
            loop, feats = (
                {"extract": None, "generate": None, "load": 0.0},
                random_features(size, clips, prompts, duration),
            )
        stages: dict[str, dict] = {}
        if "extract" in jobs or "catalog" in inputs:
            dec_s, decoded = decode_alone(size, clips, duration)
            stages["decode"] = {"alone_s": dec_s, "build_s": 0.0}
            stages["encode"] = encode_alone(size, decoded, prompts, args.batch_size)
            del decoded
        if "generate" in jobs:
            stages["generate"] = generate_alone(size, feats, args.steps, args.batch_size)
        gc.collect()
        runs = []
        if "extract" in jobs:
            got = run_extract_job(size, tmp / "catalog", tmp / "job-x", args.batch_size, duration)
            runs.append(("extract", "catalog", got))
        if "generate" in jobs and "features" in inputs:
            common.write_features(size, feats, tmp / "features", max_duration=duration)
            got = run_generate_job(
                size,
                tmp / "features",
                tmp / "job-f",
                args.steps,
                args.batch_size,
                duration,
                args.job_batch_size,
            )
            runs.append(("generate", "features", got))
        if "generate" in jobs and "catalog" in inputs:
            got = run_generate_job(
                size,
                tmp / "catalog",
                tmp / "job-c",
                args.steps,
                args.batch_size,
                duration,
                args.job_batch_size,
            )
            runs.append(("generate", "catalog", got))
        for job, kind, got in runs:
            if job == "extract":
                relevant = ["decode", "encode"]
            else:
                relevant = ["generate"] if kind == "features" else ["decode", "encode", "generate"]
            slowest = max(relevant, key=lambda k: stages[k]["alone_s"])
            alone = stages[slowest]
            row = {
                "job": job,
                "size": size,
                "input": kind,
                "clips": n,
                "duration_s": duration,
                "steps": args.steps if job == "generate" else None,
                "loop_s": loop[job],
                "loop_load_s": loop[job] + loop["load"] if loop[job] else None,
                "cli_loop_s": cli_loop_s if job == "generate" else None,
                "slowest": slowest,
                "alone_s": alone["alone_s"],
                "alone_load_s": alone["alone_s"] + alone["build_s"],
                "stages": stages,
                **got,
            }
            for key in (
                "loop_s",
                "loop_load_s",
                "cli_loop_s",
                "alone_s",
                "alone_load_s",
                "job_s",
                "job_steady_s",
            ):
                if row.get(key):
                    row[key[:-2] + "_cps"] = n / row[key]
            row["job_vs_alone"] = common.ratio(row["job_cps"], row["alone_load_cps"])
            row["steady_vs_alone"] = common.ratio(row.get("job_steady_cps"), row["alone_cps"])
            row["job_vs_loop"] = common.ratio(row["job_cps"], row.get("loop_cps"))
            row["job_vs_loop_load"] = common.ratio(row["job_cps"], row.get("loop_load_cps"))
            row["job_vs_cli_loop"] = common.ratio(row["job_cps"], row.get("cli_loop_cps"))
            rows.append(row)
    return rows


COLUMNS = [
    ("job", "job"),
    ("size", "size"),
    ("input", "input"),
    ("clips", "clips"),
    ("loop_cps", "loop clips/s"),
    ("slowest", "slowest stage"),
    ("alone_cps", "alone clips/s"),
    ("alone_load_cps", "alone+load clips/s"),
    ("job_cps", "job clips/s"),
    ("job_steady_cps", "job steady clips/s"),
    ("job_batches", "job batches"),
    ("job_vs_alone", "job / alone+load"),
    ("steady_vs_alone", "job steady / alone"),
    ("job_vs_loop", "job / loop"),
    ("job_vs_loop_load", "job / loop+load"),
    ("cli_loop_cps", "generate-one loop clips/s"),
    ("job_vs_cli_loop", "job / generate-one loop"),
]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="tiny,small_16k")
    p.add_argument("--clips", type=int, default=16, help="clips at tiny size")
    p.add_argument("--small-clips", type=int, default=4, help="clips at small_16k size")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per clip (tiny)")
    p.add_argument("--small-duration", type=float, default=8.0, help="seconds per clip")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=8, help="the loop's and stages' batch")
    p.add_argument(
        "--job-batch-size",
        type=int,
        default=0,
        help="the generate job's --batch-size; 0: the job's default (on CPUs, batches cut so "
        "that every generator actor gets two)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads here; 0: all cores")
    p.add_argument("--cpus", type=int, default=0, help="Ray logical CPUs; 0: Ray's default")
    p.add_argument(
        "--no-small-loop",
        action="store_true",
        help="skip the loop at small_16k (its real-size encoders take minutes per clip); "
        "the generator then gets random features of the right shapes",
    )


def run(args, jobs: list[str], inputs_for) -> dict:
    import ray

    torch.set_num_threads(args.threads or common.physical_cores())
    info = {"machine": common.machine_info(), "args": vars(args), "rows": []}
    t0 = time.perf_counter()
    common.start_ray(args.cpus or None)
    info["ray_start_s"] = time.perf_counter() - t0
    try:
        with common.LoadSampler() as load:
            for size in args.sizes.split(","):
                tiny = size == "tiny"
                n = args.clips if tiny else args.small_clips
                dur = args.duration if tiny else args.small_duration
                t0 = time.perf_counter()
                info["rows"] += bench(size, n, dur, args, jobs, inputs_for(size))
                print(f"[{size}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
                info["load_average"] = load.summary()
                common.write_json(args.json, info)  # partial results survive
            info["load_average"] = load.summary()
    finally:
        ray.shutdown()
    return info


def report(info: dict, title: str) -> None:
    m = info["machine"]
    la = info["load_average"]
    print(f"\n{title}")
    print(f"machine: {common.machine_line(m)}")
    print(
        f"torch threads here: {torch.get_num_threads()}; Ray start {info['ray_start_s']:.1f} s "
        f"(not in the job figures); load average during the run: min {la['min']:.1f}, "
        f"mean {la['mean']:.1f}, max {la['max']:.1f}\n"
    )
    print(common.table(info["rows"], COLUMNS))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p)
    p.add_argument("--jobs", default="extract,generate")
    p.add_argument(
        "--generate-input",
        default="features,catalog",
        help="generate job inputs: features (extract folder), catalog (decode + encoders)",
    )
    p.add_argument(
        "--small-catalog",
        action="store_true",
        help="also the catalog-input generate job at small_16k (real-size encoders: slow)",
    )
    p.add_argument("--json", default="bench_pipeline.json")
    args = p.parse_args()
    wanted = args.generate_input.split(",")

    def inputs_for(size: str) -> list[str]:
        if size != "tiny" and not args.small_catalog:
            return [i for i in wanted if i != "catalog"] or ["features"]
        return wanted

    info = run(args, args.jobs.split(","), inputs_for)
    report(info, "Pipeline efficiency: Ray jobs vs a single-process loop vs the slowest stage")
    common.write_json(args.json, info)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
