"""The generate job at `small_16k` sizes in fp32 and in bf16, in one run: clips per hour and
the peak RSS of a generator actor in each precision (issue #25).

    python bench/bench_job_precision.py [--clips 4] [--duration 8] [--steps 25]
        [--precisions fp32,bf16] [--json bench_job_precision.json]

Both runs read the same features folder (random values of the variant's shapes: the
generator's cost does not depend on them) with published-size random weights, DeSync off (the
generation pipeline's own speed), on one local Ray cluster of this machine's cores, each with
the job's own defaults for actors and batch size. `clips/h` counts the whole job call (actor
start-up and model build included); `steady clips/h` runs from the moment the last generator
actor finished building its models. The actor's peak RSS is VmHWM of the processes Ray titled
after the generator stage (`common.RssMonitor`, polled every 0.5 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pipeline  # noqa: E402  (sets the ready-marks folder before Ray starts)
import common  # noqa: E402

SIZE = "small_16k"


def run_job(
    features: Path, out: Path, precision: str, steps: int, duration: float, seen: set[int]
) -> dict:
    """One job run; `seen`: worker pids of earlier runs (left out, they may not have exited)."""
    with common.RssMonitor() as rss:
        got = bench_pipeline.run_generate_job(
            SIZE, features, out, steps, 8, duration, 0, precision=precision
        )
    actors = {
        pid: kib / 1024
        for pid, kib in rss.workers.items()
        if pid not in seen and "AudioGenerator" in rss.titles.get(pid, "")
    }
    seen.update(rss.workers)
    steady = got["job_steady_s"]
    return {
        "precision": precision,
        "clips": got["clips"],
        "job_s": got["job_s"],
        "clips_per_h": 3600 * got["clips"] / got["job_s"],
        "steady_clips_per_h": 3600 * got["clips"] / steady if steady else None,
        "actors": len(actors),
        "actor_peak_rss_mib": max(actors.values()) if actors else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per clip")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--json", default="bench_job_precision.json")
    args = p.parse_args()

    info = common.machine_info()
    print(common.machine_line(info), flush=True)
    common.start_ray()
    rows, seen = [], set()
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        tmp = Path(tmp)
        clips = common.write_clips(tmp / "catalog", args.clips, args.duration)
        prompts = [c.parent.name.replace("_", " ") for c in clips]
        feats = bench_pipeline.random_features(SIZE, clips, prompts, args.duration)
        common.write_features(SIZE, feats, tmp / "features", max_duration=args.duration)
        for precision in args.precisions.split(","):
            out = tmp / f"job-{precision}"
            row = run_job(tmp / "features", out, precision, args.steps, args.duration, seen)
            rows.append(row)
            print(row, flush=True)
    columns = [
        ("precision", "precision"),
        ("clips", "clips"),
        ("job_s", "job s"),
        ("clips_per_h", "clips/h"),
        ("steady_clips_per_h", "steady clips/h"),
        ("actors", "generator actors"),
        ("actor_peak_rss_mib", "actor peak RSS MiB"),
    ]
    print(common.table(rows, columns, digits=1))
    by = {r["precision"]: r for r in rows}
    if "fp32" in by and "bf16" in by:
        whole = common.ratio(by["bf16"]["clips_per_h"], by["fp32"]["clips_per_h"])
        steady = common.ratio(by["bf16"]["steady_clips_per_h"], by["fp32"]["steady_clips_per_h"])
        print(f"bf16 / fp32 clips per hour: {common.fmt(whole)} (steady {common.fmt(steady)})")
    common.write_json(args.json, {"machine": info, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
