"""Write constraints.txt from this machine's installed closure of selva-ray[dev].

Run it after the suite passes with a changed dependency set (`python3 scripts/update_lock.py`),
then commit the lock with the change: every machine then installs the set the suite passed with.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selva_ray.environment import LOCK_NAME, lock_lines, repo_root  # noqa: E402

HEADER = """\
# The lock: every package that selva-ray[dev] needs, at the versions the suite passed with.
# Used by the README's install command, .ci/run and cluster/Dockerfile:
#   python3 -m pip install -e ".[dev]" -c constraints.txt
# Regenerate with `python3 scripts/update_lock.py` after the suite passes on a changed set;
# `selva-ray doctor` and tests/test_environment.py report any drift from it.
"""

if __name__ == "__main__":
    path = repo_root() / LOCK_NAME
    path.write_text(HEADER + "\n".join(lock_lines()) + "\n")
    print(f"wrote {path}")
