"""Entry point for `ray job submit -- python jobs/generate.py --input ... --output ...`.

Same options as `selva-ray generate`; inside a Ray job it connects to the job's cluster.
Works from an uploaded working_dir too: the checkout beside this file is used.

Which `python` runs it, and how it finds this checkout: see `_entry.py` beside it.
"""

import sys

from _entry import run_job

if __name__ == "__main__":
    sys.exit(run_job("generate"))
