"""Entry point for `ray job submit -- python jobs/qa.py --input CATALOG --output DIR`.

Same options as `selva-ray qa`; inside a Ray job it connects to the job's cluster.
"""

import sys

from selva_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["qa", *sys.argv[1:]]))
