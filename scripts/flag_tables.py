"""The flag tables of the job guides (`docs/jobs/*.md`), made from the jobs' config classes.

Each job declares its flags once, in its config dataclass (`selva_ray.settings.opt`); the
guides show them in a table between marker comments:

    <!-- flags:generate -->
    | flag | default | meaning |
    ...
    <!-- /flags -->

`python3 scripts/flag_tables.py` checks that every table is what the code declares (exit 1
naming the stale pages); `--write` rewrites them. `tests/test_readme.py` runs the check, so a
flag added, renamed or re-documented in a config class without rerunning this fails the suite.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

BEGIN = "<!-- flags:{job} -->"
END = "<!-- /flags -->"
BLOCK = re.compile(r"<!-- flags:([a-z-]+) -->\n(.*?)<!-- /flags -->", re.S)


@dataclass(frozen=True)
class Job:
    page: str  # relative to the repository root
    config: str  # module:class of the config dataclass
    thresholds: bool = False  # the job also takes the QA threshold flags


JOBS = {
    "extract": Job("docs/jobs/extract.md", "selva_ray.extract.config:ExtractConfig"),
    "train": Job("docs/jobs/train.md", "selva_ray.train.config:TrainConfig"),
    "generate": Job("docs/jobs/generate.md", "selva_ray.generate.config:GenerateConfig", True),
    "generate-one": Job("docs/jobs/generate.md", "selva_ray.commands.generate_one:OneClipSettings"),
    "qa": Job("docs/jobs/qa.md", "selva_ray.qa.config:QAConfig", True),
}


def rows(job: str) -> list[tuple[str, str, str]]:
    """(flag, default, help) of every flag of `job`, in the order `--help` lists them."""
    import importlib

    from selva_ray.settings import flag_table
    from selva_ray.shared_settings import add_threshold_args

    module, name = JOBS[job].config.split(":")
    out = flag_table(getattr(importlib.import_module(module), name))
    if JOBS[job].thresholds:  # as the job's parser declares them (none has a default)
        parser = argparse.ArgumentParser(add_help=False)
        add_threshold_args(parser)
        out += [(a.option_strings[0], "", a.help) for a in parser._actions]
    return out


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def table(job: str) -> str:
    """The Markdown table of `job`'s flags (ends with a newline)."""
    lines = ["| flag | default | meaning |", "|---|---|---|"]
    for flag, default, help_ in rows(job):
        shown = f"`{cell(default)}`" if default else ""
        lines.append(f"| `{flag}` | {shown} | {cell(help_)} |")
    return "\n".join(lines) + "\n"


def rendered(text: str) -> str:
    """`text` with every flag table between its markers made from the code."""
    return BLOCK.sub(lambda m: f"{BEGIN.format(job=m[1])}\n{table(m[1])}{END}", text)


def stale(root: Path = ROOT) -> list[str]:
    """Problems: a job without its table, an unknown job, a table that is out of date."""
    problems = []
    pages = sorted({job.page for job in JOBS.values()})
    for page in pages:
        text = (root / page).read_text(encoding="utf-8")
        found = BLOCK.findall(text)
        for job in [m for m, _ in found if m not in JOBS]:
            problems.append(f"{page}: no job '{job}' (known: {', '.join(JOBS)})")
        for job in [j for j, spec in JOBS.items() if spec.page == page]:
            if job not in [m for m, _ in found]:
                problems.append(f"{page}: no flag table for '{job}' ({BEGIN.format(job=job)})")
        if rendered(text) != text:
            problems.append(f"{page}: flag table out of date")
    return problems


def write(root: Path = ROOT) -> list[str]:
    """Rewrite the tables in place; the pages changed."""
    changed = []
    for page in sorted({job.page for job in JOBS.values()}):
        path = root / page
        text = path.read_text(encoding="utf-8")
        new = rendered(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the tables")
    args = parser.parse_args(argv)
    if args.write:
        for page in write():
            print(f"rewrote {page}")
    problems = stale()
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("run: python3 scripts/flag_tables.py --write", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
