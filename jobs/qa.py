"""Entry point for `ray job submit -- python jobs/qa.py --input CATALOG --output DIR`.

Same options as `selva-ray qa`; inside a Ray job it connects to the job's cluster.

Which `python` runs it, and how it finds this checkout: see `_entry.py` beside it.
"""

import sys

from _entry import run_job

if __name__ == "__main__":
    sys.exit(run_job("qa"))
