"""Bad invocations of every command: exit status, one line on stderr naming the culprit, no
traceback, and no output folder claimed. Each runs the real CLI in a subprocess; none of them
may get as far as starting Ray or a model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from selva_ray.cli import build_parser

ENV = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", RAY_ADDRESS="")


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("front")
    (root / "videos").mkdir()
    (root / "videos" / "a.mp4").write_bytes(b"")  # the catalog never opens videos
    (root / "ok.csv").write_text("video,prompt\nvideos/a.mp4,a dog\n")
    (root / "empty.csv").write_bytes(b"")
    (root / "utf16.csv").write_bytes("video,prompt\nvideos/a.mp4,a dog\n".encode("utf-16"))
    (root / "noprompt.csv").write_text("video,caption\nvideos/a.mp4,a dog\n")
    (root / "empty_folder").mkdir()
    (root / "a_file").write_text("not a folder")
    bad_meta = root / "bad_meta"
    bad_meta.mkdir()
    (bad_meta / "_meta.json").write_text("{not json")
    bad_part = root / "bad_part"
    bad_part.mkdir()
    (bad_part / "part-x-0.parquet").write_bytes(b"PAR1 torn")
    (root / "weights").mkdir()
    return root


def extract(place: Path, *extra: str, output: str = "out", source: str = "ok.csv") -> list[str]:
    return [
        "extract",
        "--input",
        str(place / source),
        "--output",
        str(place / output),
        "--variant",
        "tiny",
        *extra,
    ]


# (name, argv builder, exit status, words stderr must contain)
CASES = [
    (
        "demo real variant without weights",
        lambda p: ["demo", "--variant", "small_16k", "--weights-dir", str(p / "weights")],
        2,
        ["small_16k", "weights download"],
    ),
    ("demo unknown variant", lambda p: ["demo", "--variant", "huge"], 2, ["--variant", "huge"]),
    ("demo output is a file", lambda p: ["demo", "--output", str(p / "a_file")], 2, ["a_file"]),
    (
        "shard size 0",
        lambda p: extract(p, "--shard-size", "0"),
        2,
        ["--shard-size", "between 1 and"],
    ),
    ("max duration 0", lambda p: extract(p, "--max-duration", "0"), 2, ["--max-duration"]),
    ("max duration -1", lambda p: extract(p, "--max-duration", "-1"), 2, ["--max-duration"]),
    ("max duration 1e9", lambda p: extract(p, "--max-duration", "1e9"), 2, ["--max-duration"]),
    ("max duration nan", lambda p: extract(p, "--max-duration", "nan"), 2, ["--max-duration"]),
    ("batch size 0", lambda p: extract(p, "--batch-size", "0"), 2, ["--batch-size"]),
    ("actors 0", lambda p: extract(p, "--actors", "0"), 2, ["--actors"]),
    ("unknown variant", lambda p: extract(p, "--variant", "huge"), 2, ["--variant", "huge"]),
    ("odd device", lambda p: extract(p, "--device", "tpu"), 2, ["--device", "tpu"]),
    ("missing gpu", lambda p: extract(p, "--device", "cuda:99"), 2, ["--device cuda"]),
    ("missing catalog", lambda p: extract(p, source="nope.csv"), 2, ["nope.csv", "not exist"]),
    ("empty catalog file", lambda p: extract(p, source="empty.csv"), 2, ["empty.csv", "empty"]),
    ("not utf-8", lambda p: extract(p, source="utf16.csv"), 2, ["utf16.csv", "UTF-8"]),
    ("no prompt column", lambda p: extract(p, source="noprompt.csv"), 2, ["'prompt' column"]),
    ("empty folder", lambda p: extract(p, source="empty_folder"), 2, ["no clips"]),
    ("output is a file", lambda p: extract(p, output="a_file"), 2, ["a_file", "is a file"]),
    ("output read-only", lambda p: extract(p, output="/proc/selva/out"), 2, ["not writable"]),
    ("corrupt meta", lambda p: extract(p, output="bad_meta"), 2, ["bad_meta/_meta.json"]),
    ("corrupt part", lambda p: extract(p, output="bad_part"), 2, ["part-x-0.parquet"]),
    (
        "real variant without weights",
        lambda p: extract(
            p, "--variant", "small_16k", "--offline", "--weights-dir", str(p / "weights")
        ),
        2,
        ["generator_small_16k", "textsynch", "vae_16k", "selva-ray weights download"],
    ),
    (
        "steps 0",
        lambda p: ["generate-one", "x.mp4", "--prompt", "a", "--steps", "0"],
        2,
        ["--steps"],
    ),
    ("cfg nan", lambda p: ["generate-one", "x.mp4", "--prompt", "a", "--cfg", "nan"], 2, ["--cfg"]),
    (
        "duration -1",
        lambda p: ["generate-one", "x.mp4", "--prompt", "a", "--duration", "-1"],
        2,
        ["--duration"],
    ),
    (
        "start -3",
        lambda p: ["generate-one", "x.mp4", "--prompt", "a", "--start", "-3"],
        2,
        ["--start"],
    ),
    (
        "huge seed",
        lambda p: ["generate-one", "x.mp4", "--prompt", "a", "--seed", str(2**70)],
        2,
        ["--seed"],
    ),
    (
        "missing video",
        lambda p: ["generate-one", str(p / "nope.mp4"), "--prompt", "a", "--variant", "tiny"],
        2,
        ["nope.mp4"],
    ),
    (
        "generate without weights",
        lambda p: [
            "generate-one",
            str(p / "videos" / "a.mp4"),
            "--prompt",
            "a",
            "--offline",
            "--weights-dir",
            str(p / "weights"),
        ],
        2,
        ["generator_small_16k", "selva-ray weights download"],
    ),
    ("weights unknown variant", lambda p: ["weights", "verify", "--variant", "huge"], 2, ["huge"]),
    ("weights unknown entry", lambda p: ["weights", "download", "--only", "nope"], 2, ["nope"]),
    ("weights nothing named", lambda p: ["weights", "verify"], 2, ["--variant"]),
]


@pytest.mark.parametrize("name,argv,status,words", CASES, ids=[c[0] for c in CASES])
def test_bad_invocation(place, name, argv, status, words):
    args = argv(place)
    before = {p for p in place.rglob("*")}
    out = subprocess.run(
        [sys.executable, "-m", "selva_ray.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=place,
        timeout=120,
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == status, out.stderr[-2000:]
    assert len(lines) == 1, out.stderr[-2000:]
    assert "error" in lines[0] and "Traceback" not in out.stderr
    for word in words:
        assert word in lines[0], lines[0]
    created = {p for p in place.rglob("*")} - before
    assert not created, f"a failed start left {created}"
    assert not (place / "out").exists() and not (place / "selva-demo").exists()


def test_weights_download_offline_is_quick_and_names_each_missing_file(place):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "selva_ray.cli",
            "weights",
            "download",
            "--variant",
            "small_16k",
            "--weights-dir",
            str(place / "weights"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1
    assert len(lines) >= 4 and all(line.startswith("MISSING") for line in lines), out.stderr
    assert any("generator_small_16k" in line for line in lines)
    assert "Traceback" not in out.stderr and "retry" not in out.stderr.lower()


def test_every_help_shows_defaults():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    seen = 0
    for name, command in sub.choices.items():
        helps = [command] + [
            p for a in command._actions if a.dest == "action" for p in a.choices.values()
        ]
        for p in helps:
            text = " ".join(p.format_help().split())
            for action in p._actions:
                if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                    shown = str(action.default)
                    assert f"default: {shown}" in text or "default" in (action.help or ""), (
                        name,
                        action.option_strings,
                    )
                    seen += 1
    assert seen >= 10


def test_help_builds_without_torch_or_ray():
    code = (
        "import sys; from selva_ray.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'ray', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert out.stdout.strip() == "[]", out.stderr
