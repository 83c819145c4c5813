"""The README and docs/ against the code: the output schemas (docs/schemas.md) name every
column the code writes (the lists come from the schema modules, so a column added there
without its line fails here), the job guides' flag tables are what the config classes
declare, every relative link lands on a page and heading that exist, and the README keeps the
first lines CI runs."""

import importlib.util
import re
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from golden_support import REPO_ROOT

from selva_core.lora.adapter_file import AdapterMeta
from selva_core.variants import get_spec
from selva_ray.io.feature_schema import FeatureLayout
from selva_ray.io.results_schema import COLUMN_NAMES
from selva_ray.io.rows import ERROR_SCHEMA

ROOT = Path(REPO_ROOT)
README = ROOT / "README.md"
SCHEMAS = ROOT / "docs" / "schemas.md"
GENERATE_GUIDE = ROOT / "docs" / "jobs" / "generate.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def section(title: str) -> str:
    """The text of `## title` in docs/schemas.md."""
    parts = re.split(r"\n## ", SCHEMAS.read_text(encoding="utf-8"))
    found = [p for p in parts if p.startswith(title)]
    assert found, f"docs/schemas.md: no '## {title}'"
    return found[0]


def named(text: str) -> set[str]:
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", text))


def feature_columns() -> list[str]:
    """Every column a features folder can hold: an MMAudio variant (CLIP frame features) with
    audio latents has them all."""
    spec = get_spec("mmaudio_tiny")
    layout = FeatureLayout.for_run(spec, max_duration=8.0, with_audio_latents=True)
    return layout.arrow_schema().names


def written_result_columns() -> list[str]:
    """The result columns the generate and qa writers stage their rows in (the staging schema
    of `selva_ray.stages.results`, less the fields that say where a row goes and how it went),
    which is what lands in `results/part-*.parquet`."""
    from selva_ray.stages.results import STAGE_SCHEMA, STATUS_FIELDS

    status = {f.name for f in STATUS_FIELDS}
    return [name for name in STAGE_SCHEMA.names if name not in status]


TABLES = {
    "Features": feature_columns,
    "Results": written_result_columns,
    "Errors": lambda: ERROR_SCHEMA.names,
    "Adapters": lambda: [f.name for f in fields(AdapterMeta)],
}


@pytest.mark.parametrize("title", list(TABLES))
def test_schemas_page_names_every_column(title):
    columns = TABLES[title]()
    assert len(columns) >= 7
    missing = [c for c in columns if c not in named(section(title))]
    assert not missing, f"docs/schemas.md '## {title}' does not name the columns {missing}"


def test_the_writers_stage_exactly_the_results_schema():
    """What the Results check compares is the shared schema, every column of it."""
    assert written_result_columns() == COLUMN_NAMES


def test_generate_guide_names_every_results_column():
    text = GENERATE_GUIDE.read_text(encoding="utf-8")
    table = text.split("\nResults columns", 1)[1].split("\n**", 1)[0]
    missing = [c for c in COLUMN_NAMES if c not in named(table)]
    assert not missing, f"docs/jobs/generate.md's results columns lack {missing}"


def test_features_include_every_tensor_and_length_column():
    cols = feature_columns()
    for name in ("clip_f", "latent_mean", "latent_std", "sync_len", "clip_len", "latent_len"):
        assert name in cols


def load_flag_tables():
    spec = importlib.util.spec_from_file_location("flag_tables", ROOT / "scripts/flag_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["flag_tables"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_flag_tables_are_made_from_the_config_classes():
    flag_tables = load_flag_tables()
    assert flag_tables.stale() == [], "run: python3 scripts/flag_tables.py --write"
    generate = GENERATE_GUIDE.read_text(encoding="utf-8")
    assert "| `--adapter` |" in generate and "| `--max-desync` |" in generate
    assert "| `--steps` | `25` |" in generate


def test_a_stale_flag_table_is_found(tmp_path):
    """The check fails on a table that lost a row (so the test above can fail)."""
    flag_tables = load_flag_tables()
    for page in {job.page for job in flag_tables.JOBS.values()}:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        text = (ROOT / page).read_text(encoding="utf-8")
        if page.endswith("extract.md"):
            text = re.sub(r"\| `--shard-size` \|[^\n]*\n", "", text)
        (tmp_path / page).write_text(text, encoding="utf-8")
    assert flag_tables.stale(tmp_path) == ["docs/jobs/extract.md: flag table out of date"]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_land(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to missing {target}"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: no heading for {target}"


def test_readme_keeps_its_first_lines_and_points_at_the_docs():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[3] == (
        'python3 -m pip install -e ".[dev]" -c constraints.txt   '
        "# install everything, as locked (Python 3.11)"
    )
    assert lines[4].startswith("selva-ray demo --output selva-demo ")
    assert lines[5].startswith("python3 -m pytest ")
    first_screen = "\n".join(lines[:45])
    for page in ("install", "jobs/extract", "schemas", "benchmarks", "development"):
        page = f"docs/{page}.md"
        assert f"]({page}" in first_screen, page
    chain = first_screen.split("```text\n", 1)[1].split("```", 1)[0]
    assert len(chain.splitlines()) == 5 and "──extract──▶" in chain


def test_no_placeholder_rows_left():
    for page in PAGES:
        assert "| see docs/benchmarks.md |" not in page.read_text(encoding="utf-8"), page
