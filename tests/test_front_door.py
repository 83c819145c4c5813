"""Bad invocations of every command: exit status, one line on stderr naming the culprit, no
traceback, and no output folder claimed. Each runs the real CLI in a subprocess; none of them
may get as far as starting Ray or a model."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selva_ray.cli import build_parser

# No GPU for these commands (so `--use-gpu` / `--device cuda` are refused on any machine).
ENV = dict(
    os.environ,
    HF_HUB_OFFLINE="1",
    RAY_AUTH_MODE="disabled",
    RAY_ADDRESS="",
    CUDA_VISIBLE_DEVICES="",
)
BIG_SEED = str(2**70)


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
    for folder in ("bad_results/results", "bad_errors/errors"):
        (root / folder).mkdir(parents=True)
        (root / folder / "part-x-0.parquet").write_bytes(b"PAR1 torn")
    (root / "bad.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"not json")
    (root / "plain.safetensors").write_bytes(b"\x02" + b"\x00" * 7 + b"{}")
    # features folders as `extract` leaves them (only what the drivers read before Ray)
    for name, latents, clips in (
        ("feats", True, True),
        ("nolatents", False, True),
        ("noclips", True, False),
    ):
        folder = root / name
        folder.mkdir()
        settings = {"variant": "small_16k", "with_audio_latents": latents, "latent_len": 250}
        meta = {"settings": settings, "settings_hash": "x", "tensors": {}}
        (folder / "_meta.json").write_text(json.dumps(meta))
        if clips:
            pq.write_table(pa.table({"id": ["a", "b"]}), folder / "part-000.parquet")
    bad_run = root / "bad_run"
    bad_run.mkdir()
    (bad_run / "_meta.json").write_text("{torn")
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


def generate(place: Path, *extra: str, output: str = "out", source: str = "ok.csv") -> list[str]:
    return [
        "generate",
        "--input",
        str(place / source),
        "--output",
        str(place / output),
        "--variant",
        "tiny",
        *extra,
    ]


def qa(place: Path, *extra: str, output: str = "out", source: str = "ok.csv") -> list[str]:
    return ["qa", "--input", str(place / source), "--output", str(place / output), *extra]


def train(place: Path, *extra: str, output: str = "out", features: str = "feats") -> list[str]:
    return ["train", "--features", str(place / features), "--output", str(place / output), *extra]


def offline(place: Path) -> tuple[str, ...]:
    return ("--offline", "--weights-dir", str(place / "weights"))


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
        # extraction loads the encoders only (no generator, VAE without --with-audio-latents)
        ["textsynch", "clip_dfn5b", "flan_t5_base", "selva-ray weights download"],
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
    # generate
    ("gen steps 0", lambda p: generate(p, "--steps", "0"), 2, ["--steps"]),
    ("gen cfg nan", lambda p: generate(p, "--cfg", "nan"), 2, ["--cfg"]),
    ("gen huge seed", lambda p: generate(p, "--seed", BIG_SEED), 2, ["--seed"]),
    ("gen negative seed", lambda p: generate(p, "--seed", "-1"), 2, ["--seed"]),
    ("gen max duration 0", lambda p: generate(p, "--max-duration", "0"), 2, ["--max-duration"]),
    ("gen max duration 1e9", lambda p: generate(p, "--max-duration", "1e9"), 2, ["--max-duration"]),
    ("gen batch size 0", lambda p: generate(p, "--batch-size", "0"), 2, ["--batch-size"]),
    ("gen actors 0", lambda p: generate(p, "--actors", "0"), 2, ["--actors"]),
    ("gen encoder actors 0", lambda p: generate(p, "--encoder-actors", "0"), 2, ["--encoder-"]),
    ("gen shard size 0", lambda p: generate(p, "--shard-size", "0"), 2, ["--shard-size"]),
    ("gen gpus per actor 0", lambda p: generate(p, "--gpus-per-actor", "0"), 2, ["--gpus-per"]),
    ("gen loudness +3", lambda p: generate(p, "--loudness", "3"), 2, ["--loudness"]),
    ("gen peak nan", lambda p: generate(p, "--peak", "nan"), 2, ["--peak"]),
    ("gen mix without mux", lambda p: generate(p, "--mix-original", "-6"), 2, ["--mux"]),
    ("gen unknown variant", lambda p: generate(p, "--variant", "huge"), 2, ["--variant", "huge"]),
    ("gen missing gpu", lambda p: generate(p, "--device", "cuda"), 2, ["--device cuda"]),
    ("gen missing catalog", lambda p: generate(p, source="nope.csv"), 2, ["nope.csv", "not exist"]),
    ("gen empty catalog", lambda p: generate(p, source="empty.csv"), 2, ["empty.csv", "empty"]),
    ("gen empty folder", lambda p: generate(p, source="empty_folder"), 2, ["no clips"]),
    ("gen not utf-8", lambda p: generate(p, source="utf16.csv"), 2, ["utf16.csv", "UTF-8"]),
    (
        "gen no prompt column",
        lambda p: generate(p, source="noprompt.csv"),
        2,
        ["noprompt.csv", "'prompt' column", "--prompt"],
    ),
    ("gen output is a file", lambda p: generate(p, output="a_file"), 2, ["a_file", "is a file"]),
    ("gen output read-only", lambda p: generate(p, output="/proc/selva/out"), 2, ["not writable"]),
    ("gen corrupt meta", lambda p: generate(p, output="bad_meta"), 2, ["bad_meta/_meta.json"]),
    (
        "gen corrupt result part",
        lambda p: generate(p, output="bad_results"),
        2,
        ["bad_results/results/part-x-0.parquet"],
    ),
    (
        "gen corrupt error part",
        lambda p: generate(p, output="bad_errors"),
        2,
        ["bad_errors/errors/part-x-0.parquet"],
    ),
    (
        "gen adapter missing",
        lambda p: generate(p, "--adapter", f"{p / 'nope.safetensors'}@0.5"),
        2,
        ["--adapter", "nope.safetensors", "does not exist"],
    ),
    (
        "gen adapter not safetensors",
        lambda p: generate(p, "--adapter", str(p / "bad.safetensors")),
        2,
        ["bad.safetensors", "not a safetensors file"],
    ),
    (
        "gen adapter without metadata",
        lambda p: generate(p, "--adapter", str(p / "plain.safetensors")),
        2,
        ["plain.safetensors", "selva_lora"],
    ),
    ("gen adapter odd type", lambda p: generate(p, "--adapter", str(p / "ok.csv")), 2, [".csv"]),
    (
        "gen real variant without weights",
        lambda p: generate(p, "--variant", "small_16k", *offline(p)),
        2,
        ["generator_small_16k", "textsynch", "clip_dfn5b", "selva-ray weights download"],
    ),
    (
        "gen features of another variant",
        lambda p: generate(p, source="feats"),
        2,
        ["'small_16k'", "--variant small_16k"],
    ),
    (
        "gen features without weights",
        lambda p: generate(p, "--variant", "small_16k", *offline(p), source="feats"),
        2,
        ["generator_small_16k", "vae_16k", "bigvgan_16k", "--only"],
    ),
    # qa
    ("qa max duration 0", lambda p: qa(p, "--max-duration", "0"), 2, ["--max-duration"]),
    ("qa max duration -1", lambda p: qa(p, "--max-duration", "-1"), 2, ["--max-duration"]),
    ("qa max duration 1e9", lambda p: qa(p, "--max-duration", "1e9"), 2, ["--max-duration"]),
    ("qa batch size 0", lambda p: qa(p, "--desync-batch-size", "0"), 2, ["--desync-batch"]),
    ("qa actors 0", lambda p: qa(p, "--actors", "0"), 2, ["--actors"]),
    ("qa shard size 0", lambda p: qa(p, "--shard-size", "0"), 2, ["--shard-size"]),
    ("qa silence share 2", lambda p: qa(p, "--max-silence", "2"), 2, ["--max-silence"]),
    ("qa target lufs nan", lambda p: qa(p, "--target-lufs", "nan"), 2, ["--target-lufs"]),
    ("qa unknown desync model", lambda p: qa(p, "--desync-variant", "x"), 2, ["--desync-variant"]),
    ("qa odd device", lambda p: qa(p, "--device", "tpu"), 2, ["--device", "tpu"]),
    ("qa missing gpu", lambda p: qa(p, "--device", "cuda"), 2, ["--device cuda"]),
    ("qa missing catalog", lambda p: qa(p, source="nope.csv"), 2, ["nope.csv", "not exist"]),
    ("qa empty catalog", lambda p: qa(p, source="empty.csv"), 2, ["empty.csv", "empty"]),
    ("qa empty folder", lambda p: qa(p, source="empty_folder"), 2, ["no clips"]),
    ("qa not utf-8", lambda p: qa(p, source="utf16.csv"), 2, ["utf16.csv", "UTF-8"]),
    ("qa output is a file", lambda p: qa(p, output="a_file"), 2, ["a_file", "is a file"]),
    ("qa output read-only", lambda p: qa(p, output="/proc/selva/out"), 2, ["not writable"]),
    ("qa corrupt meta", lambda p: qa(p, output="bad_meta"), 2, ["bad_meta/_meta.json"]),
    (
        "qa corrupt result part",
        lambda p: qa(p, output="bad_results"),
        2,
        ["bad_results/results/part-x-0.parquet"],
    ),
    (
        "qa without desync weights",
        lambda p: qa(p, *offline(p)),
        2,
        ["synchformer", "selva-ray weights download --only synchformer"],
    ),
    (
        "qa thresholds file missing",
        lambda p: qa(p, "--no-desync", "--qa-thresholds", str(p / "nope.yaml")),
        2,
        ["nope.yaml"],
    ),
    # train
    ("train steps 0", lambda p: train(p, "--steps", "0"), 2, ["--steps"]),
    ("train batch size 0", lambda p: train(p, "--batch-size", "0"), 2, ["--batch-size"]),
    ("train workers 0", lambda p: train(p, "--workers", "0"), 2, ["--workers"]),
    ("train lr 0", lambda p: train(p, "--lr", "0"), 2, ["--lr"]),
    ("train lr nan", lambda p: train(p, "--lr", "nan"), 2, ["--lr"]),
    ("train rank 0", lambda p: train(p, "--rank", "0"), 2, ["--rank"]),
    ("train alpha -1", lambda p: train(p, "--alpha", "-1"), 2, ["--alpha"]),
    ("train huge seed", lambda p: train(p, "--seed", BIG_SEED), 2, ["--seed"]),
    ("train dropout 2", lambda p: train(p, "--cfg-dropout", "2"), 2, ["--cfg-dropout"]),
    ("train val fraction 1", lambda p: train(p, "--val-fraction", "1"), 2, ["--val-fraction"]),
    ("train unknown variant", lambda p: train(p, "--variant", "huge"), 2, ["--variant", "huge"]),
    (
        "train features missing",
        lambda p: train(p, features="nope"),
        2,
        ["nope", "does not exist", "selva-ray extract"],
    ),
    ("train features is a file", lambda p: train(p, features="a_file"), 2, ["a_file", "a file"]),
    (
        "train not a features folder",
        lambda p: train(p, features="empty_folder"),
        2,
        ["empty_folder", "_meta.json", "selva-ray extract"],
    ),
    (
        "train features without latents",
        lambda p: train(p, features="nolatents"),
        2,
        # a folder extract takes: not the one holding features without latents
        ["nolatents", "--with-audio-latents", "nolatents-latents --variant"],
    ),
    ("train features without clips", lambda p: train(p, features="noclips"), 2, ["no clips"]),
    ("train output is a file", lambda p: train(p, output="a_file"), 2, ["a_file", "is a file"]),
    ("train output read-only", lambda p: train(p, output="/proc/selva/o"), 2, ["not writable"]),
    ("train corrupt run meta", lambda p: train(p, output="bad_run"), 2, ["bad_run/_meta.json"]),
    ("train missing gpu", lambda p: train(p, "--use-gpu"), 2, ["--use-gpu", "no usable GPU"]),
    (
        "train real variant without weights",
        lambda p: train(p, *offline(p)),
        2,
        ["generator_small_16k", "vae_16k", "bigvgan_16k", "selva-ray weights download"],
    ),
    # report, inspect
    ("report missing", lambda p: ["report", str(p / "nope")], 2, ["nope", "does not exist"]),
    ("report on a file", lambda p: ["report", str(p / "a_file")], 2, ["a_file", "a file"]),
    (
        "report max clips -1",
        lambda p: ["report", str(p / "bad_meta"), "--max-clips", "-1"],
        2,
        ["--max-clips"],
    ),
    (
        "report corrupt error part",
        lambda p: ["report", str(p / "bad_errors")],
        2,
        ["bad_errors/errors/part-x-0.parquet"],
    ),
    ("inspect missing", lambda p: ["inspect", str(p / "nope")], 2, ["nope", "does not exist"]),
    (
        "inspect worst -1",
        lambda p: ["inspect", str(p / "bad_meta"), "--worst", "-1"],
        2,
        ["--worst"],
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
    assert "Traceback" not in out.stdout


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


# Without --offline and without network: the driver tries the hub once (a refused port
# here), names every missing file at once and stops before Ray or the output folder.
NO_HUB = dict(ENV, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:1")
ENCODERS = ["textsynch", "clip_dfn5b", "flan_t5_base"]
DECODERS = ["generator_small_16k", "vae_16k", "bigvgan_16k"]
UNREACHABLE = [
    (
        "generate",
        lambda p: generate(p, "--variant", "small_16k", "--weights-dir", str(p / "weights")),
        [*ENCODERS, *DECODERS, "synchformer", "--no-desync skips it", "missing 7 weight"],
        [],
    ),
    (
        "generate no desync",
        lambda p: generate(
            p, "--variant", "small_16k", "--no-desync", "--weights-dir", str(p / "weights")
        ),
        [*ENCODERS, *DECODERS, "missing 6 weight", "--variant small_16k"],
        ["synchformer"],
    ),
    (
        "generate from features",
        lambda p: generate(
            p, "--variant", "small_16k", "--weights-dir", str(p / "weights"), source="feats"
        ),
        [*DECODERS, "synchformer", "--only generator_small_16k", "--only synchformer"],
        ENCODERS,
    ),
    (
        "extract",
        lambda p: extract(
            p, "--variant", "small_16k", "--with-audio-latents", "--weights-dir", str(p / "weights")
        ),
        [*ENCODERS, "vae_16k"],
        ["generator_small_16k", "bigvgan_16k", "synchformer"],
    ),
    (
        "qa",
        lambda p: qa(p, "--weights-dir", str(p / "weights")),
        ["synchformer", "selva-ray weights download --only synchformer"],
        [],
    ),
    ("train", lambda p: train(p, "--weights-dir", str(p / "weights")), DECODERS, ENCODERS),
]


@pytest.mark.parametrize("name,argv,named,unnamed", UNREACHABLE, ids=[c[0] for c in UNREACHABLE])
def test_unreachable_hub_names_every_missing_file_before_ray(
    place, tmp_path, name, argv, named, unnamed
):
    before = {p for p in place.rglob("*")}
    ray_tmp = tmp_path / "ray"  # where a Ray started by the command would make its session
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "selva_ray.cli", *argv(place)],
        capture_output=True,
        text=True,
        env=dict(NO_HUB, RAY_TMPDIR=str(ray_tmp)),
        cwd=place,
        timeout=120,
    )
    took = time.monotonic() - t0
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    line = lines[0]
    assert "http://127.0.0.1:1" in line and "cannot be reached" in line, line
    assert "selva-ray weights download" in line and str(place / "weights") in line, line
    for word in named:
        assert word in line, (word, line)
    for word in unnamed:
        assert word not in line, (word, line)
    assert "Started a local Ray instance" not in out.stdout + out.stderr
    assert not ray_tmp.exists(), "Ray was started"
    # the failure it replaces started Ray and failed in the actors after 49-64 s; the bound
    # leaves room for a loaded test machine (a quiet one answers in a few seconds)
    assert took < 45, f"took {took:.1f} s"
    created = {p for p in place.rglob("*")} - before
    assert not created, f"a failed start left {created}"  # nothing claimed, nothing downloaded


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


def test_a_prompt_flag_stands_in_for_a_missing_prompt_column(place):
    from selva_ray.io.catalog import MissingColumnError
    from selva_ray.validate import UsageError, read_input_catalog

    manifest = str(place / "noprompt.csv")
    records, problems = read_input_catalog(
        manifest, max_duration=8.0, allow_roots=None, default_prompt="rain", prompt_flag="--prompt"
    )
    assert [r.prompt for r in records] == ["rain"] and problems == []
    with pytest.raises(UsageError, match="noprompt.csv has no 'prompt' column.*--prompt TEXT"):
        read_input_catalog(manifest, max_duration=8.0, allow_roots=None, prompt_flag="--prompt")
    with pytest.raises(MissingColumnError) as refused:  # a job without such a flag names none
        read_input_catalog(manifest, max_duration=8.0, allow_roots=None)
    assert refused.value.column == "prompt" and "--prompt" not in str(refused.value)
