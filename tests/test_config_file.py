"""Job settings from --config files: same keys as the flags, flags win, --print-config feeds
back, and a bad file is one clear line."""

import subprocess
import sys

import pytest

from selva_ray.cli import parse
from selva_ray.config_file import dump_settings, effective_settings


def keys(text: str) -> set[str]:
    """The top-level keys of a printed YAML config."""
    return {line.split(":", 1)[0] for line in text.splitlines() if line and line[0] != " "}


def test_yaml_config_supplies_required_flags_and_flags_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("input: cat/\noutput: out/\nmax-duration: 4\nbatch_size: 2\nvariant: tiny\n")
    args = parse(["extract", "--config", str(cfg), "--batch-size", "5"])
    assert (args.input, args.output, args.max_duration) == ("cat/", "out/", 4)
    assert args.batch_size == 5  # the flag wins over the file
    assert args.variant == "tiny" and args.shard_size == 64  # untouched defaults stay


def test_toml_config_and_print_config_round_trip(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('input = "a"\noutput = "b"\nwith-audio-latents = true\nshard-size = 3\n')
    args = parse(["extract", "--config", str(cfg)])
    assert args.with_audio_latents is True and args.shard_size == 3
    printed = tmp_path / "printed.yaml"
    printed.write_text(dump_settings(effective_settings(args)))
    again = parse(["extract", "--config", str(printed)])
    assert effective_settings(again) == effective_settings(args)


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        ("bogus: 1\n", ".yaml", "unknown key 'bogus'"),
        ("storage-dtype: int8\n", ".yaml", "storage-dtype must be one of"),
        ("- just\n- a list\n", ".yaml", "must hold a mapping"),
        ("input = [", ".toml", "is not valid"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path, text, suffix, expected):
    cfg = tmp_path / f"bad{suffix}"
    cfg.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "selva_ray.cli", "extract", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config file "), out.stderr
    assert str(cfg) in lines[0] and expected in lines[0]
    assert not (tmp_path / "out").exists()


def test_print_config_from_the_command_line(capsys):
    from selva_ray.cli import main

    assert main(["extract", "--input", "x", "--output", "y", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "input: x\n" in text and "max-duration: 8.0\n" in text and "run" not in keys(text)


def test_settings_are_keyed_by_flag_names_even_where_the_dest_differs(tmp_path):
    from selva_ray.config_file import job_settings

    args = parse(["qa", "--input", "a", "--output", "b", "--max-desync", "0.3"])
    settings = job_settings(args)
    assert settings["max-desync"] == 0.3 and "qa-max-desync" not in settings
    cfg = tmp_path / "qa.yaml"
    cfg.write_text(dump_settings({**settings, "max-desync": 0.2}))
    again = parse(["qa", "--config", str(cfg)])
    assert again.qa_max_abs_desync_s == 0.2 and job_settings(again)["max-desync"] == 0.2


def test_every_job_records_the_settings_print_config_prints(tmp_path):
    """The CLI hands each job its effective settings; what the job writes to _meta.json
    (config_record) feeds back through --config to the same --print-config output."""
    from selva_ray.commands.common import job_config
    from selva_ray.config_file import config_record, job_settings, recorded_config

    lines = {
        "extract": ["--input", "c", "--output", "o", "--variant", "tiny", "--batch-size", "3"],
        "generate": ["--input", "c", "--output", "o", "--adapter", "a.safetensors@0.5"],
        "train": ["--features", "f", "--output", "o", "--no-rslora", "--workers", "2"],
        "qa": ["--input", "c", "--output", "o", "--no-desync", "--max-silence", "0.9"],
    }
    for job, argv in lines.items():
        args = parse([job, *argv])
        config = job_config(args)
        meta = {"runs": [{"config": config_record(config)}]}
        if job == "train":
            meta = {"job": "train", "settings": config.to_dict(), "config": config_record(config)}
            assert "flags" not in meta["settings"]  # not part of the run's trajectory
        recorded = recorded_config(meta)
        assert recorded == job_settings(args)
        cfg = tmp_path / f"{job}.yaml"
        cfg.write_text(dump_settings(recorded))
        assert job_settings(parse([job, "--config", str(cfg)])) == recorded


def test_a_job_started_from_python_records_its_config_fields():
    from selva_ray.config_file import config_record
    from selva_ray.qa import QAConfig

    record = config_record(QAConfig(input="c", output="o"))
    assert record["input"] == "c" and record["thresholds"]["max_silence_ratio"] == 0.5
    assert "flags" not in record
