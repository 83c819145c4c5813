"""Entry point for `ray job submit -- python jobs/generate.py --input ... --output ...`.

Same options as `selva-ray generate`; inside a Ray job it connects to the job's cluster.
"""

import sys

from selva_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
