"""Wall time of `selva-ray --help` and of every command's `--help`, in fresh interpreters.

    python bench/bench_cli.py [--runs 7] [--checkout PATH]

Prints the median over runs, next to a bare `python -c pass` as the floor. With --checkout it
times another copy of the code too (e.g. a worktree of an older commit) for a before/after.
The target is under 1 s: the parser must not import torch or Ray.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def median_wall(args: list[str], runs: int, pythonpath: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            args, env=env, cwd=pythonpath, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--checkout", type=Path, help="another copy of the code to time as well")
    args = p.parse_args()
    py = sys.executable
    sys.path.insert(0, str(ROOT))
    from selva_ray.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    cases = {
        "python -c pass (floor)": [py, "-c", "pass"],
        "selva-ray --help": [py, "-m", "selva_ray.cli", "--help"],
    }
    for name in sub.choices:  # every command, so a new one is timed too
        cases[f"selva-ray {name} --help"] = [py, "-m", "selva_ray.cli", name, "--help"]
    trees = {"this tree": ROOT} | ({"--checkout": args.checkout} if args.checkout else {})
    print(f"{'command':34s} " + " ".join(f"{name:>12s}" for name in trees))
    for label, cmd in cases.items():
        walls = [median_wall(cmd, args.runs, tree) for tree in trees.values()]
        print(f"{label:34s} " + " ".join(f"{w:11.2f}s" for w in walls))


if __name__ == "__main__":
    main()
