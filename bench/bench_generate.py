"""Throughput of the generation job (issue #9) against a sequential loop and the generator
stage alone, at `tiny` and `small_16k` sizes, in one run.

    python bench/bench_generate.py [--sizes tiny,small_16k] [--clips 16] [--small-clips 4]
        [--duration 8] [--small-duration 8] [--steps 25] [--batch-size 8]
        [--generate-input features,catalog] [--small-catalog] [--json bench_generate.json]

The generate half of `bench_pipeline.py` (see its docstring for every definition): the loop
is `generate-one`'s work clip after clip with the models loaded once; "alone" is the job's
generator actor class in this process on the same features held in memory, with all cores
(`alone` without its model build, `alone+load` with it); the job runs from a features folder
holding those features (feature loader -> generator actor -> writers) and, at `tiny`, from the
catalog (decode -> encoders -> generator -> writers). `job / alone+load` compares both with
their model build, `job steady / alone` both without it. Targets on a 2-core box: the
features job >= 0.85 of the generator alone at `small_16k`; never slower than the loop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pipeline  # noqa: E402
import common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_pipeline.add_args(p)
    p.add_argument("--generate-input", default="features,catalog")
    p.add_argument("--small-catalog", action="store_true")
    p.add_argument("--json", default="bench_generate.json")
    args = p.parse_args()
    wanted = args.generate_input.split(",")

    def inputs_for(size: str) -> list[str]:
        if size != "tiny" and not args.small_catalog:
            return [i for i in wanted if i != "catalog"] or ["features"]
        return wanted

    info = bench_pipeline.run(args, ["generate"], inputs_for)
    bench_pipeline.report(info, "Generation job vs the generate-one loop vs the generator alone")
    common.write_json(args.json, info)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
