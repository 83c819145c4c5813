"""Entry point for `ray job submit -- python jobs/extract.py --input ... --output ...`.

Same options as `selva-ray extract`; inside a Ray job it connects to the job's cluster.
"""

import sys

from selva_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
