"""The README's output schemas name every column the code writes: the lists come from the
schema modules, so a column added there without its line in the README fails here."""

import re
from dataclasses import fields
from pathlib import Path

import pytest
from golden_support import REPO_ROOT

from selva_core.lora.adapter_file import AdapterMeta
from selva_core.variants import get_spec
from selva_ray.io.feature_schema import FeatureLayout
from selva_ray.io.results_schema import COLUMN_NAMES
from selva_ray.io.rows import ERROR_SCHEMA

README = Path(REPO_ROOT) / "README.md"


def section(title: str) -> str:
    """The text of `### title` inside `## Output schemas`."""
    text = README.read_text(encoding="utf-8")
    schemas = text.split("\n## Output schemas\n", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"\n### ", schemas)
    found = [p for p in parts if p.startswith(title)]
    assert found, f"README: no '### {title}' under '## Output schemas'"
    return found[0]


def named(text: str) -> set[str]:
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", text))


def feature_columns() -> list[str]:
    """Every column a features folder can hold: an MMAudio variant (CLIP frame features) with
    audio latents has them all."""
    spec = get_spec("mmaudio_tiny")
    layout = FeatureLayout.for_run(spec, max_duration=8.0, with_audio_latents=True)
    return layout.arrow_schema().names


def generate_columns() -> list[str]:
    """The generation writer's own schema, where it still has one (else it writes the shared
    results schema)."""
    from selva_ray.generate import stages

    schema = getattr(stages, "RESULT_SCHEMA", None)
    return list(schema.names) if schema is not None else []


TABLES = {
    "Features": feature_columns,
    "Results": lambda: COLUMN_NAMES + generate_columns(),
    "Errors": lambda: ERROR_SCHEMA.names,
    "Adapters": lambda: [f.name for f in fields(AdapterMeta)],
}


@pytest.mark.parametrize("title", list(TABLES))
def test_readme_names_every_column(title):
    columns = TABLES[title]()
    assert len(columns) >= 7
    missing = [c for c in columns if c not in named(section(title))]
    assert not missing, f"README '### {title}' does not name the columns {missing}"


def test_features_include_every_tensor_and_length_column():
    cols = feature_columns()
    for name in ("clip_f", "latent_mean", "latent_std", "sync_len", "clip_len", "latent_len"):
        assert name in cols


def test_readme_keeps_its_first_lines_and_points_at_the_benchmarks():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[3] == (
        'python3 -m pip install -e ".[dev]" -c constraints.txt   '
        "# install everything, as locked (Python 3.11)"
    )
    assert lines[4].startswith("selva-ray demo --output selva-demo ")
    assert lines[5].startswith("python3 -m pytest ")
    assert "docs/benchmarks.md" in README.read_text(encoding="utf-8").split("## Benchmarks")[1]
