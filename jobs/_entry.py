"""What every `jobs/<job>.py` entry point does: run `selva-ray <job>` with the script's arguments.

The checkout beside this folder goes first on `sys.path`, so a job submitted with an uploaded
working_dir runs this code even where another selva-ray is installed. `ray job submit` runs
`python jobs/<job>.py`, and Python puts the script's own folder on `sys.path`: that is how the
job files find this module.

`python` is run on the head, found on the PATH `ray start` had: it must be an interpreter with
selva-ray installed (the cluster image's is); on a head of your own, give that interpreter's
full path, e.g. `"$(command -v python3)"` (README: "Which `python` runs the job").
"""

import sys
from pathlib import Path


def run_job(job: str) -> int:
    """`selva-ray <job> ARGS...` with this process's arguments; its exit status."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from selva_ray.cli import main

    return main([job, *sys.argv[1:]])
