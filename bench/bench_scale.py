"""Scaling of the extract and generate jobs with catalog size: wall time and peak RSS of the
driver and of the Ray workers at 16, 64 and 256 `tiny` clips.

    python bench/bench_scale.py [--counts 16,64,256] [--jobs extract,generate]
        [--duration 2] [--steps 10] [--batch-size 8] [--cpus 0] [--json bench_scale.json]

Each job and count runs on a fresh local Ray cluster (its start is not counted), over the
same kind of clips (small real videos of --duration s, written once for the largest count);
generate reads the catalog (decode -> encoders -> generator -> writers). Peak RSS is the
high-water mark (VmHWM) of the driver (reset before each run) and of every Ray worker
process of that cluster, polled every 0.5 s. Time should grow linearly with the clips and
memory stay flat: the table gives the least-squares slopes (seconds per clip, MiB per clip)
and the ratio of the largest to the smallest count's peak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup_paths()


def reset_own_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := current RSS
    except OSError:
        pass


def run_one(job: str, catalog: Path, out: Path, args) -> float:
    if job == "extract":
        from selva_ray.extract.job import ExtractConfig, run_extract

        summary = run_extract(
            ExtractConfig(
                input=str(catalog),
                output=str(out),
                variant="tiny",
                max_duration=args.duration,
                batch_size=args.batch_size,
                actor_memory_gb=1.0,
                progress=False,
                check_weights=False,
            )
        )
    else:
        from selva_ray.generate import GenerateConfig, run_generate

        summary = run_generate(
            GenerateConfig(
                input=str(catalog),
                output=str(out),
                variant="tiny",
                max_duration=args.duration,
                steps=args.steps,
                batch_size=args.batch_size,
                actor_memory_gb=1.0,
                progress=False,
                desync=False,  # as before per-clip QA: the scale of generation itself
            )
        )
    assert summary.failed == 0, summary
    return summary.wall_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="16,64,256")
    p.add_argument("--jobs", default="extract,generate")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per clip")
    p.add_argument("--steps", type=int, default=10, help="generate: Euler steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cpus", type=int, default=0, help="Ray logical CPUs; 0: Ray's default")
    p.add_argument("--json", default="bench_scale.json")
    args = p.parse_args()

    import ray

    counts = sorted(int(c) for c in args.counts.split(","))
    info = {"machine": common.machine_info(), "args": vars(args), "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, common.LoadSampler() as la:
        tmp = Path(tmp)
        clips = common.write_clips(tmp / "all", counts[-1], args.duration)
        for job in args.jobs.split(","):
            for n in counts:
                catalog = tmp / f"catalog-{n}"
                for path in clips[:n]:  # the first n clips, linked into their prompt folders
                    link = catalog / path.parent.name / path.name
                    link.parent.mkdir(parents=True, exist_ok=True)
                    if not link.is_symlink():  # made for the previous job already
                        link.symlink_to(path)
                common.start_ray(args.cpus or None)
                try:
                    reset_own_peak()
                    with common.RssMonitor() as rss:
                        wall = run_one(job, catalog, tmp / f"out-{job}-{n}", args)
                finally:
                    ray.shutdown()
                row = {"job": job, "clips": n, "wall_s": wall, "clips_per_s": n / wall}
                row.update(rss.summary())
                info["rows"].append(row)
                print(f"[{job} {n}: {wall:.1f} s]", file=sys.stderr)
                info["load_average"] = la.summary()
                common.write_json(args.json, info)
        info["load_average"] = la.summary()
    slopes = []
    for job in args.jobs.split(","):
        rows = [r for r in info["rows"] if r["job"] == job]
        xs = [float(r["clips"]) for r in rows]
        first, last = rows[0], rows[-1]
        walls = [r["wall_s"] for r in rows]
        per_clip = common.slope(xs, walls)
        slopes.append(
            {
                "job": job,
                "s_per_clip": per_clip,
                "fixed_s": sum(walls) / len(walls) - per_clip * sum(xs) / len(xs),
                "driver_mib_per_clip": common.slope(xs, [r["driver_peak_mib"] for r in rows]),
                "worker_mib_per_clip": common.slope(xs, [r["worker_peak_mib"] for r in rows]),
                "driver_peak_ratio": last["driver_peak_mib"] / first["driver_peak_mib"],
                "worker_peak_ratio": last["worker_peak_mib"] / first["worker_peak_mib"],
            }
        )
    info["slopes"] = slopes
    common.write_json(args.json, info)
    la = info["load_average"]
    print("\nScaling with catalog size (tiny clips, catalog input, fresh local Ray per run)")
    print(f"machine: {common.machine_line(info['machine'])}")
    print(
        f"load average during the run: min {la['min']:.1f}, mean {la['mean']:.1f}, "
        f"max {la['max']:.1f}\n"
    )
    print(
        common.table(
            info["rows"],
            [
                ("job", "job"),
                ("clips", "clips"),
                ("wall_s", "wall s"),
                ("clips_per_s", "clips/s"),
                ("driver_peak_mib", "driver peak MiB"),
                ("worker_peak_mib", "largest worker peak MiB"),
                ("workers_seen", "workers"),
                ("workers_peak_sum_mib", "sum of worker peaks MiB"),
            ],
        )
    )
    print()
    print(
        common.table(
            slopes,
            [
                ("job", "job"),
                ("s_per_clip", "s per clip (slope)"),
                ("fixed_s", "fixed s (intercept)"),
                ("driver_mib_per_clip", "driver MiB per clip"),
                ("worker_mib_per_clip", "worker MiB per clip"),
                ("driver_peak_ratio", f"driver peak {counts[-1]}/{counts[0]}"),
                ("worker_peak_ratio", f"worker peak {counts[-1]}/{counts[0]}"),
            ],
        )
    )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
