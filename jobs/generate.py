"""Entry point for `ray job submit -- python jobs/generate.py --input ... --output ...`.

Same options as `selva-ray generate`; inside a Ray job it connects to the job's cluster.
Works from an uploaded working_dir too: the checkout beside this file is used.

`python` is run on the head, found on the PATH `ray start` had: it must be an interpreter with
selva-ray installed (the cluster image's is); on a head of your own, give that interpreter's
full path, e.g. `"$(command -v python3)"` (README: "Which `python` runs the job").
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selva_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
