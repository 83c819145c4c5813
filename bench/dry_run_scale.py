"""How `--dry-run` scales with the catalog: manifests of 1e4, 1e5 and 1e6 rows (Parquet, CSV,
JSONL) whose rows point at a few real small videos with different `start`s, each dry-run in a
subprocess (`selva-ray <job> --dry-run`), timed, with the child's peak RSS
(`resource.getrusage(RUSAGE_CHILDREN)` of a fresh process per run). Prints a table and the
log-log slopes of time and memory against rows between the sizes (1.0: linear).

    PYTHONPATH=$PWD python3 bench/dry_run_scale.py --rows 1e4,1e5,1e6 --jobs extract,generate

Nothing is written outside `--workdir` (the manifests and the small videos); the dry runs
write nothing at all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS = ["a dog barking", "rain on a tin roof", "a car engine idling", "birds chirping"]
VIDEOS = 4  # distinct files the rows point at
VIDEO_SECONDS = 6.0


def make_videos(folder: Path) -> list[str]:
    """A few real small videos (PyAV, tests/video_factory.py), made once."""
    from video_factory import AudioSpec, write_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(VIDEOS):
        path = folder / f"clip_{k}.mp4"
        if not path.exists():
            write_video(
                path,
                duration=VIDEO_SECONDS,
                fps=25,
                size=(64, 48),
                audio=AudioSpec(sample_rate=16000, channels=1),
                seed=k,
            )
        paths.append(path.name)
    return paths


def write_manifest(folder: Path, rows: int, fmt: str, videos: list[str]) -> Path:
    """`rows` rows over `videos`, each with its own id, start and duration (Arrow columns,
    written in one go: the writer is not what is measured)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    path = folder / f"manifest_{rows}.{fmt}"
    if path.exists():
        return path
    k = np.arange(rows)
    table = pa.table(
        {
            "id": pa.array([f"clip{i:08d}" for i in range(rows)]),
            "video": pa.array(np.array(videos, dtype=object)[k % len(videos)]),
            "prompt": pa.array(np.array(PROMPTS, dtype=object)[(k // 7) % len(PROMPTS)]),
            "start": pa.array(((k // len(videos)) % 8) * 0.25),
            "duration": pa.array(np.where(k % 3 == 0, 2.0, np.where(k % 3 == 1, 4.0, 1.5))),
        }
    )
    tmp = path.with_suffix(".tmp")
    if fmt == "parquet":
        pq.write_table(table, tmp)
    elif fmt == "csv":
        pcsv.write_csv(table, tmp)
    else:
        with open(tmp, "w") as f:
            for batch in table.to_batches(65536):
                for item in batch.to_pylist():
                    f.write(json.dumps(item) + "\n")
    tmp.rename(path)
    return path


def run_once(job: str, manifest: Path, workdir: Path) -> dict:
    """One dry run in a fresh process: wall time, peak RSS of that child, exit status."""
    out = workdir / f"out-{job}-{manifest.stem}"
    if job == "train":
        raise SystemExit("train reads a features folder, not a catalog: not in this bench")
    argv = [
        sys.executable,
        "-m",
        "selva_ray.cli",
        job,
        "--input",
        str(manifest),
        "--output",
        str(out),
        "--variant",
        "tiny",
        "--device",
        "cpu",
        "--dry-run",
    ]
    if job == "qa":
        argv[8:10] = ["--desync-variant", "tiny"]  # qa measures tracks: no model variant
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import resource, subprocess, sys, time; t0 = time.perf_counter(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "w = time.perf_counter() - t0; "
        "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "import json; print(json.dumps({'rc': p.returncode, 'wall_s': w, 'rss_kb': u.ru_maxrss, "
        "'cpu_s': u.ru_utime + u.ru_stime, "
        "'tail': (p.stdout + p.stderr)[-600:]}))"
    )
    probe = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env
    )
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    if out.exists():
        result["rc"] = f"{result['rc']} (output folder created!)"
    return result


def slope(a: tuple[int, float], b: tuple[int, float]) -> float:
    return math.log(b[1] / a[1]) / math.log(b[0] / a[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1e4,1e5,1e6")
    p.add_argument("--formats", default="parquet,csv,jsonl")
    p.add_argument("--jobs", default="extract,generate,qa")
    p.add_argument("--workdir", default="/tmp/selva-dry-run-bench")
    args = p.parse_args()
    workdir = Path(args.workdir)
    videos = make_videos(workdir)
    sizes = [int(float(x)) for x in args.rows.split(",")]
    print(f"{'job':9} {'format':8} {'rows':>9} {'wall s':>8} {'CPU s':>7} {'peak RSS MiB':>13}  rc")
    results: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for fmt in args.formats.split(","):
        for rows in sizes:
            manifest = write_manifest(workdir, rows, fmt, videos)
            for job in args.jobs.split(","):
                r = run_once(job, manifest, workdir)
                mib = r["rss_kb"] / 1024
                print(
                    f"{job:9} {fmt:8} {rows:>9} {r['wall_s']:>8.1f} {r['cpu_s']:>7.1f} "
                    f"{mib:>13.0f}  {r['rc']}"
                )
                if r["rc"] != 0:
                    print("   ", r["tail"].replace("\n", "\n    "))
                results.setdefault((job, fmt), []).append((rows, r["cpu_s"], mib))
                sys.stdout.flush()
    print(
        "\nslopes (log-log, 1.0 = linear; the totals include the fixed start-up) and the "
        "marginal cost per row between sizes (flat = linear): CPU time / peak RSS"
    )
    for (job, fmt), pts in results.items():
        parts = []
        for a, b in zip(pts, pts[1:], strict=False):
            t = slope((a[0], a[1]), (b[0], b[1]))
            m = slope((a[0], a[2]), (b[0], b[2]))
            us = (b[1] - a[1]) / (b[0] - a[0]) * 1e6
            kb = (b[2] - a[2]) * 1024 / (b[0] - a[0])
            parts.append(
                f"{a[0]:.0e}->{b[0]:.0e}: {t:.2f} / {m:.2f} ({us:.1f} us, {kb:.2f} KiB per row)"
            )
        print(f"  {job:9} {fmt:8} " + "; ".join(parts))
    print(f"(machine: {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")


if __name__ == "__main__":
    main()
