"""Entry point for `ray job submit -- python jobs/train.py --features ... --output ...`.

Same options as `selva-ray train`; inside a Ray job it connects to the job's cluster.
"""

import sys

from selva_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
