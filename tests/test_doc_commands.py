"""Every `selva-ray` command shown in the README and docs/ runs as written (the rules are in
docs/development.md, "Commands in the docs"): synopses and marked lines are only parsed, the
rest run in order against the demo's catalog, each on the private Ray cluster it starts, with
another Ray on the machine that none of them may join. Train's refused worker group and its
interrupts run there too, on the chain's features."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from golden_support import REPO_ROOT
from other_ray import TRAIN_LONG, OtherRay, interrupt, other_ray

from selva_ray.cli import build_parser
from selva_ray.demo import write_demo_catalog

ROOT = Path(REPO_ROOT)
# The pages in the order their commands run (a later page uses an earlier one's outputs).
PAGES = [
    "README.md",
    "docs/install.md",
    "docs/demo.md",
    "docs/jobs/extract.md",
    "docs/jobs/long-videos.md",
    "docs/jobs/train.md",
    "docs/jobs/generate.md",
    "docs/jobs/qa.md",
    "docs/cluster.md",
    "docs/schemas.md",
    "docs/tuning.md",
    "docs/benchmarks.md",
    "docs/development.md",
]
NEEDS = ("weights", "gpu", "cluster", "network")
MARKER = re.compile(r"#\s*(needs:\s*(\w+)|covered:\s*(\S+))\s*$")
PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9])[A-Z][A-Z0-9_]*(?![a-z0-9])")
FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(selva-ray [^`]+)`")
COVERED_BY_DEMO_TEST = "tests/test_demo.py"  # `selva-ray demo` (the README's first lines)


@dataclass
class Command:
    page: str
    line: int
    text: str  # without the `selva-ray` prefix and a trailing comment
    inline: bool
    marker: str | None  # "needs: weights", "covered: tests/x.py", or None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}: selva-ray {self.text}"

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def synopsis(self) -> bool:
        return bool(re.search(r"[\[\]|…]|\.\.\.", self.text) or PLACEHOLDER.search(self.text))

    @property
    def runs(self) -> bool:
        return not (self.synopsis or self.inline or self.marker)


def split_comment(line: str) -> tuple[str, str | None]:
    """The command and its trailing comment (a `#` outside quotes, after a space)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip(), line[i:]
    return line.rstrip(), None


def commands(page: str) -> list[Command]:
    text = (ROOT / page).read_text(encoding="utf-8")
    found = []
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        lines = block[1].splitlines()
        k = 0
        while k < len(lines):
            start, line = k, lines[k]
            while line.endswith("\\") and k + 1 < len(lines):
                k += 1
                line = line[:-1] + " " + lines[k].strip()
            k += 1
            if not line.startswith("selva-ray "):
                continue
            body, comment = split_comment(line[len("selva-ray ") :])
            match = MARKER.search(comment or "")
            marker = " ".join(match[1].split()) if match else None
            if body.split()[0] == "demo":
                marker = f"covered: {COVERED_BY_DEMO_TEST}"
            found.append(Command(page, first + start, body, False, marker))
    outside = FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
    for span in INLINE.finditer(outside):
        body = span[1][len("selva-ray ") :].strip()
        if len(body.split()) < 2:  # `selva-ray qa` names a command
            continue
        line = outside.count("\n", 0, span.start()) + 1
        marker = f"covered: {COVERED_BY_DEMO_TEST}" if body.split()[0] == "demo" else None
        found.append(Command(page, line, body, True, marker))
    return sorted(found, key=lambda c: c.line)


ALL = [c for page in PAGES for c in commands(page)]
RUNNABLE = [c for c in ALL if c.runs]


def test_every_page_is_listed():
    pages = {"README.md"} | {str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")}
    assert pages == set(PAGES), "add the page to PAGES in its place in the chain"


def test_the_commands_are_found_and_classified():
    """The extraction itself: known lines of each kind are where the rules put them."""
    texts = {c.text: c for c in ALL}
    demo = texts["demo --output selva-demo"]
    assert demo.marker == f"covered: {COVERED_BY_DEMO_TEST}" and not demo.runs
    weights = next(c for c in ALL if c.marker == "needs: weights" and c.text.startswith("weights"))
    assert weights.text == "weights verify --variant small_16k --weights-dir /mnt/weights"
    assert texts["report RUN_DIR"].synopsis
    continued = next(c for c in ALL if "--loudness -23" in c.text)
    assert continued.text.startswith("generate --input features/") and continued.marker
    assert "report dubbed" in texts and texts["report dubbed"].inline
    jobs = [c.argv[0] for c in RUNNABLE]
    for job in ("extract", "train", "generate", "generate-one", "qa", "report", "inspect"):
        assert job in jobs, f"no runnable `selva-ray {job}` line left in the docs"


@pytest.mark.parametrize("command", [c for c in ALL if not c.synopsis], ids=lambda c: c.where)
def test_every_command_parses(command):
    if command.marker and command.marker.startswith("needs:"):
        assert command.marker.split()[1] in NEEDS, f"{command.where}: unknown marker"
    if command.marker and command.marker.startswith("covered:"):
        assert (ROOT / command.marker.split()[1]).is_file(), command.where
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
        build_parser().parse_args(command.argv)
        raise SystemExit(0)
    message = err.getvalue()
    if "--config" in command.argv:  # its required flags come from the file
        assert "unrecognized" not in message and "invalid" not in message, message
    else:
        assert done.value.code == 0, f"{command.where}\n{message}"


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Another Ray on this machine, where a bare `ray.init()` would find it, for the whole
    chain: no command may join it."""
    with other_ray(tmp_path_factory.mktemp("other-ray") / "head.log", command_env()) as found:
        yield found


def command_env(other: OtherRay | None = None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env.pop("RAY_ADDRESS", None)
    if other is not None:
        env["RAY_TMPDIR"] = other.temp  # where the other Ray is registered
    return env


@pytest.fixture(scope="module")
def documented(other, tmp_path_factory) -> Path:
    """Each runnable command, as written, in the order the docs give them, in one folder that
    holds the demo's catalog as `videos/` (run once: the tests below read its outputs)."""
    folder = tmp_path_factory.mktemp("documented")
    write_demo_catalog(folder / "videos")
    env = command_env(other)
    for command in RUNNABLE:
        done = subprocess.run(
            [sys.executable, "-m", "selva_ray.cli", *command.argv],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{command.where}\n{done.stderr[-3000:]}"
    return folder


def test_the_documented_commands_run(documented, other):
    """Each command ran on the private Ray cluster a command starts when no cluster is named,
    exactly as a reader runs it on this machine, never on the other Ray registered where
    `ray.init()` looks: every job's plan fits its real cores (train's 2 workers and data
    reader too)."""
    cores = len(os.sched_getaffinity(0))
    for folder in ("feats", "dubbed", "qa-tiny", "qa-cpu"):
        record = json.loads((documented / folder / "_meta.json").read_text())["runs"][-1]
        assert record["ray"]["kind"] == "private", (folder, record["ray"])
        assert record["ray"]["address"] != other.address, (folder, record["ray"])
        plan = record["plan"]
        assert plan is None or plan["cluster"]["cpus"] == cores, (folder, plan)
    train = json.loads((documented / "runs/a/_meta.json").read_text())
    assert train["ray"]["kind"] == "private" and train["plan"]["workers"] == 2
    assert train["ray"]["address"] != other.address, train["ray"]
    assert 2 * train["plan"]["cpus_per_worker"] + train["plan"]["reader_cpus"] <= cores
    assert (documented / "runs/a/adapter.safetensors").is_file()
    assert len(list((documented / "dubbed/video").rglob("*.mp4"))) == 6  # named after sources
    assert (documented / "qa-tiny/report/index.html").is_file()
    assert (documented / "park.flac").is_file() and (documented / "park.dubbed.mp4").is_file()


def test_train_refuses_what_cannot_fit_and_ends_as_an_interrupt(documented, other, tmp_path):
    """On the documented chain's features, the other Ray still on the machine: train refuses
    a worker group that cannot fit before Ray Train starts, naming what fits, and ends as an
    interrupt on SIGINT and on SIGTERM (one line, exit 130, the lease released); --resume goes
    on from there. Raw stderr, so that nothing the CLI filters could hide Ray Train's noise."""
    env = {**command_env(other), "SELVA_RAW_STDERR": "1"}
    features = str(documented / "feats")
    done = subprocess.run(
        [sys.executable, "-m", "selva_ray.cli", "train", "--features", features,
         "--output", str(tmp_path / "train3"), "--workers", "3", "--cpus-per-worker", "1",
         "--steps", "2", "--batch-size", "3", "--offline"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --workers 3 x 1 CPU does not fit") and "at most" in last
    assert not (tmp_path / "train3").exists()
    for sig, extra in ((signal.SIGINT, []), (signal.SIGTERM, ["--resume"])):
        stopped = interrupt(
            [*TRAIN_LONG, "--features", features, "--output", str(tmp_path / "t"), *extra],
            env,
            sig,
        )
        assert stopped.returncode == 130, stopped.stderr[-3000:]
        last = stopped.stderr.strip().splitlines()[-1]
        assert last.startswith(f"interrupted ({sig.name}; rerun with --resume"), last
        assert "Traceback" not in stopped.stderr.split("Started training worker group")[-1]
        # Ray Train's PlacementGroupCleaner looked Ray up with address "auto": with the other
        # Ray on the host it failed (a traceback) or asked the wrong cluster
        for noise in ("Found multiple active Ray instances", "PlacementGroupCleaner"):
            assert noise not in stopped.stderr, stopped.stderr[-3000:]
        assert not list((tmp_path / "t" / "_lease").glob("*.json"))
        record = json.loads((tmp_path / "t" / "_meta.json").read_text())
        assert record["ray"]["kind"] == "private" and record["ray"]["address"] != other.address
