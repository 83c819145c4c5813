"""One declaration per setting: every field of every job's config is a flag, a config-file
key and an entry of the recorded settings, and the three agree; a config file's values are
parsed by the flag's own rule."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import yaml

from selva_ray.cli import parse
from selva_ray.commands.common import job_config
from selva_ray.config_file import job_settings
from selva_ray.extract.config import ExtractConfig
from selva_ray.generate.config import GenerateConfig
from selva_ray.qa.config import QAConfig
from selva_ray.settings import APPEND, BOTH, NEGATED, SWITCH, field_default, flag_of, options
from selva_ray.train.config import TrainConfig

JOBS = {
    "extract": (ExtractConfig, ["--input", "in", "--output", "out"]),
    "generate": (GenerateConfig, ["--input", "in", "--output", "out"]),
    "qa": (QAConfig, ["--input", "in", "--output", "out"]),
    "train": (TrainConfig, ["--features", "f", "--output", "out"]),
}
# texts tried, in order, for a setting with a value: the first its parser takes that is not
# the default is used
CANDIDATES = ["3", "2", "0.5", "7", "-20", "tiny", "cpu", "clip", "some words", "x.safetensors"]


def example(f, o) -> tuple[list[str], object]:
    """(argv for one non-default value of the setting, the config field's expected value)."""
    flag = flag_of(f, o)
    default = field_default(f)
    if o.kind == SWITCH:
        return [flag], True
    if o.kind == NEGATED:
        return [flag], False
    if o.kind == BOTH:
        return [flag.replace("--", "--no-", 1)], False
    if o.kind == APPEND:
        texts = ["x.safetensors@0.5", "y.safetensors"] if f.name == "adapters" else ["/a", "/b"]
        argv = [a for t in texts for a in (flag, t)]
        return argv, o.convert(texts) if o.convert else texts
    texts = [str(c) for c in o.choices] if o.choices else CANDIDATES
    for text in texts:
        try:
            value = o.type(text) if o.type else text
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        if o.choices and value not in o.choices:
            continue
        field_value = o.convert(value) if o.convert else value
        if field_value != default and value != o.cli_default:
            return [flag, text], field_value
    raise AssertionError(f"no example value for {flag}")


def config_of(job: str, argv: list[str]):
    return job_config(parse([job, *argv]))


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_setting_round_trips_flag_config_key_and_record(job, tmp_path):
    cls, required = JOBS[job]
    settings = options(cls)
    assert len(settings) >= 10
    for f, o in settings:
        if o.required:
            continue
        argv, expected = example(f, o)
        config = config_of(job, [*required, *argv])
        got = getattr(config, f.name)
        if f.name == "targets":  # TrainConfig splits the comma-separated text
            expected = tuple(expected.split(","))
        assert got == expected, (flag_of(f, o), got, expected)
        # the recorded settings (what `_meta.json` holds and --print-config prints) ...
        recorded = config.flags
        assert flag_of(f, o).removeprefix("--") in recorded, flag_of(f, o)
        # ... read back as a config file give the same config
        file = tmp_path / f"{job}-{f.name}.yaml"
        file.write_text(yaml.safe_dump(recorded))
        again = config_of(job, ["--config", str(file)])
        assert getattr(again, f.name) == got, flag_of(f, o)
        assert again.flags == recorded


def test_a_config_file_switch_means_what_it_says(tmp_path):
    file = tmp_path / "c.json"
    file.write_text('{"input": "x", "output": "y", "mux": "false", "no-desync": "no"}')
    config = config_of("generate", ["--config", str(file)])
    assert config.mux is False and config.desync is True
    assert config.flags["mux"] is False and config.flags["no-desync"] is False
    file.write_text('{"input": "x", "output": "y", "desync": false, "no-progress": true}')
    config = config_of("generate", ["--config", str(file)])
    assert config.desync is False and config.progress is False


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('"mux": "maybe"', "mux: expected true or false, got 'maybe'"),
        ('"steps": "abc"', "steps: an integer is required, got 'abc'"),
        ('"cfg": "x"', "cfg: a number is required, got 'x'"),
        ('"steps": 0', "steps: must be between 1 and"),
        ('"seed": true', "seed: expected a value, got True"),
    ],
)
def test_a_wrong_type_in_a_config_file_is_one_line_naming_key_and_file(tmp_path, body, expected):
    file = tmp_path / "bad.json"
    file.write_text('{"input": "x", "output": "y", ' + body + "}")
    out = subprocess.run(
        [sys.executable, "-m", "selva_ray.cli", "generate", "--config", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(file) in lines[0] and expected in lines[0], out.stderr


def test_shared_defaults_are_defined_once():
    from selva_core.defaults import DEFAULT_CFG, DEFAULT_SEED, DEFAULT_STEPS
    from selva_core.sampling import SamplerConfig

    assert (
        SamplerConfig().num_steps == DEFAULT_STEPS and SamplerConfig().cfg_strength == DEFAULT_CFG
    )
    for cls in (GenerateConfig, TrainConfig):
        fields = {f.name: field_default(f) for f, _ in options(cls)}
        assert fields["seed"] == DEFAULT_SEED
    gen = {f.name: field_default(f) for f, _ in options(GenerateConfig)}
    assert (gen["cfg"], gen["steps"]) == (DEFAULT_CFG, DEFAULT_STEPS)
    assert job_settings(parse(["generate", "--input", "a", "--output", "b"]))["steps"] == 25


def test_generate_output_settings_come_from_the_declarations_and_keep_their_hash():
    """The folder's recorded settings (what a rerun must match) are the settings declared
    `output`, keyed as their flags, plus what the run derives; the keys and values are those
    folders written before the declarations hold, so their hashes are unchanged."""
    from types import SimpleNamespace

    from selva_ray.generate.config import effective_peak, output_settings, settings_digest

    config = GenerateConfig(
        input="a", output="b", variant="tiny", prompt="p", negative_prompt="n", seed=7,
        cfg=3.0, steps=9, audio_format="wav", bits=16, loudness=-20.0, mux=True,
        mix_original=-6.0, window=6.0, overlap=0.5, join="crossfade", mask_strength=0.5,
        mask_paths=("sync",),
    )  # fmt: skip
    spec = SimpleNamespace(name="tiny", sampling_rate=16000)
    adapter = SimpleNamespace(describe=lambda: {"name": "a", "strength": 1.0, "sha256": "x"})
    by_hand = {  # the record as it was written field by field
        "variant": "tiny", "precision": "fp32", "max_duration": 8.0, "frame_rule": "official",
        "prompt": "p", "negative_prompt": "n", "seed": 7, "cfg": 3.0, "steps": 9,
        "format": "wav", "bits": 16, "sample_rate": 16000, "loudness": -20.0,
        "peak": effective_peak(config), "mux": True, "mix_original": -6.0,
        "adapters": [adapter.describe()], "window": 6.0, "overlap": 0.5, "join": "crossfade",
        "mask_strength": 0.5, "mask_paths": ["sync"],
    }  # fmt: skip
    got = output_settings(config, spec, [adapter], "fp32")
    assert got == by_hand
    assert settings_digest(got) == settings_digest(by_hand)
