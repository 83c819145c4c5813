"""A bad-input corpus, generated here, through the real readers and one real extract job.

Videos: broken containers and codecs, odd sizes and rates, rotation, 10-bit, interlaced, VFR,
audio-only, empty, truncated. Manifests of every format with bad values, bad bytes and wrong
types. A broken feature Parquet folder. Corrupt adapter files. Each must give an error row or a
one-line message naming the item; nothing may crash a job, and no good clip may be lost.

Documented acceptances: 10-bit, interlaced, VFR, rotated, 1x1, odd sizes, 1 fps and 240 fps
videos decode and produce feature rows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from video_factory import (
    AudioSpec,
    write_audio_only,
    write_empty_file,
    write_text_file,
    write_truncated,
    write_undecodable_video,
    write_video,
)

from selva_ray.cli import main as cli_main
from selva_ray.extract import ExtractConfig, run_extract
from selva_ray.io.catalog import CatalogError, read_catalog
from selva_ray.io.feature_schema import read_features, read_tensor
from selva_ray.io.output_dir import CorruptOutputError, SettingsMismatchError
from selva_ray.validate import UsageError

MAX_DURATION = 2.0
PORTRAIT = (48, 64)  # (width, height) as shown

# name -> writer(path); the good clips and the oddities that must decode and give rows
GOOD = {
    "good_a.mp4": lambda p: write_video(p, duration=1.5, size=(64, 48), audio=AudioSpec()),
    "good_b.mkv": lambda p: write_video(p, duration=1.0, size=(64, 48)),
    "good_c.webm": lambda p: write_video(p, duration=1.0, size=(64, 48), codec="libvpx-vp9"),
    "upright.mp4": lambda p: write_video(p, duration=1.0, size=PORTRAIT),
}
ACCEPTED = {
    "rotated.mp4": lambda p: write_video(p, duration=1.0, size=PORTRAIT, rotation=-90),
    "sideways.mp4": lambda p: write_video(  # rotated.mp4's frames, no display matrix
        p, duration=1.0, size=PORTRAIT, rotation=-90, display_matrix=False
    ),
    "ten_bit.mp4": lambda p: write_video(p, duration=1.0, size=(64, 48), pix_fmt="yuv420p10le"),
    "interlaced.mp4": lambda p: write_video(
        p, duration=1.0, size=(64, 48), codec_options={"x264-params": "interlaced=1:tff=1"}
    ),
    "vfr.mkv": lambda p: write_video(
        p, frame_times=[0.0, 0.03, 0.1, 0.11, 0.3, 0.5, 0.52, 0.9, 1.2], size=(64, 48)
    ),
    "one_by_one.mkv": lambda p: write_video(p, duration=1.0, size=(1, 1), pix_fmt="yuv444p"),
    "odd_size.mp4": lambda p: write_video(p, duration=1.0, size=(33, 17), pix_fmt="yuv444p"),
    "fps1.mp4": lambda p: write_video(p, fps=1, num_frames=3, size=(64, 48)),
    "fps240.mp4": lambda p: write_video(p, fps=240, duration=1.0, size=(64, 48)),
}


def _scrambled(path: Path) -> None:
    data = bytearray(write_video(path, duration=2.0, size=(64, 48), faststart=True).read_bytes())
    mid = len(data) // 2
    data[mid : mid + 2000] = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _header_only(path: Path) -> None:
    path.write_bytes(write_video(path, duration=1.0, size=(64, 48)).read_bytes()[:40])


def _truncated(path: Path, faststart: bool) -> None:
    whole = path.with_name("whole-" + path.name)
    write_video(whole, duration=2.0, size=(64, 48), faststart=faststart)
    write_truncated(whole, path, 0.5)
    whole.unlink()


# name -> (writer, error type of its decode error row)
BAD = {
    "text.mp4": (write_text_file, "NotAVideoError"),
    "random.mkv": (
        lambda p: p.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8)),
        "NotAVideoError",
    ),
    "zero.mp4": (write_empty_file, "EmptyVideoError"),
    "header_only.mp4": (_header_only, "CorruptVideoError"),
    "cut_index.mp4": (lambda p: _truncated(p, False), "CorruptVideoError"),
    "cut_data.mp4": (lambda p: _truncated(p, True), "CorruptVideoError"),
    "zero_packets.mkv": (write_undecodable_video, "EmptyVideoError"),
    "audio_only.mp4": (lambda p: write_audio_only(p, AudioSpec(), 1.0), "NoVideoStreamError"),
    "too_wide.mp4": (
        lambda p: write_video(p, size=(8200, 16), num_frames=2),
        "UnsupportedResolutionError",
    ),
    "folder.mp4": (lambda p: p.mkdir(), "NotAVideoError"),
    "missing.mp4": (lambda p: None, "VideoNotFoundError"),
}
# damaged H.264 payload: FFmpeg may conceal it (a row) or fail (an error row); never both/none
EITHER = {"scrambled.mp4": _scrambled}

# manifest rows whose id must never become a file name
UNSAFE_IDS = {
    "slash": "../../escaped/clip",
    "dotdot": "..",
    "nul": "clip\x00name",
    "long": "x" * 300,
}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, object_store_memory=400 * 1024 * 1024, include_dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for name, write in {**GOOD, **ACCEPTED, **EITHER}.items():
        write(root / name)
    for name, (write, _) in BAD.items():
        write(root / name)
    return root


def _config(manifest: Path, output: Path, **kw) -> ExtractConfig:
    return ExtractConfig(
        input=str(manifest),
        output=str(output),
        variant="tiny",
        max_duration=MAX_DURATION,
        shard_size=8,
        batch_size=4,
        progress=False,
        window=0.0,  # one row per video: the 3 s clips are longer than MAX_DURATION
        **kw,
    )


@pytest.fixture(scope="module")
def job(cluster, corpus, tmp_path_factory):
    """ONE extract run over every video of the corpus plus manifest rows with unsafe ids."""
    work = tmp_path_factory.mktemp("job")
    manifest = corpus / "catalog.jsonl"
    names = [*GOOD, *ACCEPTED, *EITHER, *BAD]
    # one prompt for all: SelVA's sync features depend on it, the comparisons must not
    lines = [json.dumps({"video": n, "prompt": "a short clip", "id": n}) for n in names]
    for i, cid in enumerate(UNSAFE_IDS.values()):
        lines.append(json.dumps({"video": "good_a.mp4", "prompt": "p", "id": cid, "seed": i}))
    lines.append(json.dumps({"video": "good_b.mkv", "prompt": 7, "id": "number_prompt"}))
    lines.append(json.dumps({"video": "good_b.mkv", "prompt": "p", "id": "huge", "seed": 2**64}))
    manifest.write_text("\n".join(lines) + "\n")
    output = work / "out"
    before = sorted(str(p) for p in work.parent.rglob("*"))
    summary = run_extract(_config(manifest, output))
    after = sorted(str(p) for p in work.parent.rglob("*"))
    return output, summary, set(after) - set(before)


def _errors(output: Path) -> dict[str, dict]:
    rows = pq.read_table(output / "errors").to_pylist()
    assert len({r["id"] for r in rows}) == len(rows), "one error row per clip"
    return {r["id"]: r for r in rows}


# ---- one extract job over the whole video corpus ---------------------------------------------


def test_every_good_clip_has_its_row_and_every_bad_one_an_error_row(job, corpus):
    output, summary, _ = job
    features = read_features(str(output))
    ids = features["id"].to_pylist()
    assert len(ids) == len(set(ids)), "no clip twice"
    errors = _errors(output)
    for name in (*GOOD, *ACCEPTED):
        assert name in ids, f"{name} lost: {errors.get(name)}"
    for name, (_, error_type) in BAD.items():
        row = errors[name]
        assert (row["stage"], row["error_type"]) == ("decode", error_type), row
        assert name in row["message"] and "\n" not in row["message"], row["message"]
        assert row["source"] == str(corpus / name)
    for name in EITHER:
        assert (name in ids) != (name in errors), f"{name}: exactly one outcome"
    assert set(ids) | set(errors) >= {*GOOD, *ACCEPTED, *BAD, *EITHER}
    # unsafe ids and bad values: catalog error rows naming row, column and value
    catalog_rows = [r for r in errors.values() if r["stage"] == "catalog"]
    assert len(catalog_rows) == len(UNSAFE_IDS) + 2
    messages = " | ".join(r["message"] for r in catalog_rows)
    assert "column 'prompt': must be text, got 7" in messages
    assert "column 'seed'" in messages and str(2**64) in messages
    assert all("\n" not in r["message"] and r["message"].startswith("row ") for r in catalog_rows)
    n_good = len(GOOD) + len(ACCEPTED) + sum(n in ids for n in EITHER)
    assert summary.ok == n_good and len(ids) == n_good
    assert (
        summary.failed
        == len(errors)
        == len(BAD) + len(catalog_rows) + (len(EITHER) - sum(n in ids for n in EITHER))
    )
    assert summary.exit_code(fail_on_error=False) == 0


def test_accepted_oddities_have_sensible_rows(job):
    output, _, _ = job
    rows = {
        r["id"]: r
        for r in read_features(
            str(output), columns=["id", "rotation", "duration", "sync_len", "fps"]
        ).to_pylist()
    }
    for name in (*GOOD, *ACCEPTED):
        assert rows[name]["sync_len"] > 0 and rows[name]["duration"] > 0, rows[name]
        assert rows[name]["rotation"] == (-90 if name == "rotated.mp4" else 0), name
    assert rows["fps240.mp4"]["fps"] == pytest.approx(240)
    assert rows["fps1.mp4"]["duration"] == pytest.approx(2.0)  # frames at 0, 1, 2 s


def test_unsafe_ids_never_become_files_outside_the_output(job):
    output, _, created = job
    assert created, "the run wrote its folder"
    outside = [p for p in created if not (p + "/").startswith(str(output.parent) + "/")]
    assert not outside, outside
    errors = _errors(output)
    for key, cid in UNSAFE_IDS.items():
        assert cid not in errors, key
    for path in output.rglob("*"):
        assert path.resolve().is_relative_to(output.resolve())
        assert "escaped" not in str(path) and "\x00" not in str(path) and "x" * 129 not in str(path)
    unsafe_rows = [r for r in errors.values() if "column 'id'" in r["message"]]
    assert len(unsafe_rows) == len(UNSAFE_IDS)
    assert all(r["id"].startswith("row-") for r in unsafe_rows)
    assert not (output.parent.parent / "escaped").exists()


def test_rotated_clip_features_match_the_upright_clip(job):
    """Through the whole job, the rotated phone clip encodes like the same picture filmed
    upright, and not like its stored (sideways) frames."""
    output, _, _ = job
    table = read_features(str(output))
    ids = table["id"].to_pylist()

    def sync(name):
        row = table.slice(ids.index(name), 1)
        return read_tensor(row, "sync_f")[0][: row["sync_len"][0].as_py()]

    upright, rotated, sideways = sync("upright.mp4"), sync("rotated.mp4"), sync("sideways.mp4")
    assert upright.shape == rotated.shape == sideways.shape
    near = (rotated - upright).norm() / upright.norm()
    far = (sideways - upright).norm() / upright.norm()
    print(f"sync_f vs upright: rotated {float(near):.3g}, sideways {float(far):.3g}")
    assert near < 0.25 * far, (float(near), float(far))


def test_ignore_rotation_reaches_the_decoder_and_the_folder_settings(job, corpus, capsys):
    from selva_ray.extract.stages import decode_batch

    output, _, _ = job
    batch = {
        "id": np.array(["r"]),
        "source": np.array([str(corpus / "rotated.mp4")]),
        "start": np.array([0.0]),
        "duration": np.array([1.0]),
    }
    kw = {"variant": "tiny", "max_duration": MAX_DURATION, "frame_rule": "official"}
    shown = decode_batch(dict(batch), audio_rate=None, **kw)
    stored = decode_batch(dict(batch), audio_rate=None, ignore_rotation=True, **kw)
    assert shown["status"] == stored["status"] == ["ok"]
    assert (shown["rotation"], stored["rotation"]) == ([-90], [0])
    upright = torch.from_numpy(shown["sync_frames"][0])
    turned = torch.from_numpy(stored["sync_frames"][0])
    err = (torch.rot90(upright, 1, dims=(2, 3)).float() - turned.float()).abs().mean()
    assert err < 1.0 and (upright.float() - turned.float()).abs().mean() > 20
    # the flag is a setting of the folder: a run with it is refused on a folder made without
    manifest = corpus / "catalog.jsonl"
    with pytest.raises(SettingsMismatchError, match="ignore_rotation"):
        run_extract(_config(manifest, output, ignore_rotation=True))
    code = cli_main(
        ["extract", "--input", str(manifest), "--output", str(output), "--variant", "tiny"]
        + ["--max-duration", str(MAX_DURATION), "--ignore-rotation", "--no-progress"]
    )
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err_lines) == 1 and "'ignore_rotation': (False, True)" in err_lines[0]


# ---- a broken feature folder fed to the readers ------------------------------------------------


def test_broken_feature_parquet_is_named_in_one_line(job, tmp_path, capsys):
    output, _, _ = job
    parts = sorted(output.glob("part-*.parquet"))
    assert len(parts) >= 2
    cases = {
        "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        "zero_bytes": lambda p: p.write_bytes(b""),
        "garbage": lambda p: p.write_bytes(b"PAR1" + np.random.default_rng(4).bytes(300) + b"PAR1"),
        "no_id_column": lambda p: pq.write_table(pa.table({"x": [1]}), p),
    }
    for case, damage in cases.items():
        copy = tmp_path / case
        shutil.copytree(output, copy)
        victim = copy / parts[1].name
        damage(victim)
        with pytest.raises(CorruptOutputError) as info:  # a consumer reading the features
            read_features(str(copy))
        message = str(info.value)
        assert victim.name in message and "\n" not in message, (case, message)
        # the extract rerun path: refused before anything starts, naming the part file
        manifest = tmp_path / f"{case}.csv"
        manifest.write_text("video,prompt\nnowhere.mp4,x\n")
        listing = sorted(p.name for p in copy.rglob("*"))
        with pytest.raises(UsageError, match=victim.name):
            run_extract(_config(manifest, copy))
        code = cli_main(
            ["extract", "--input", str(manifest), "--output", str(copy), "--variant", "tiny"]
            + ["--max-duration", str(MAX_DURATION), "--window", "0", "--no-progress"]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and victim.name in err[0], (case, err)
        assert sorted(p.name for p in copy.rglob("*")) == listing, "nothing written"


def test_feature_files_without_the_later_columns_read_as_defaults(job, tmp_path):
    output, _, _ = job
    copy = tmp_path / "legacy"
    shutil.copytree(output, copy)
    part = sorted(copy.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    pq.write_table(table.drop_columns(["rotation", "input_hash"]), part)
    merged = read_features(str(copy))
    legacy_ids = set(table["id"].to_pylist())
    for row in merged.select(["id", "rotation", "input_hash"]).to_pylist():
        if row["id"] in legacy_ids:
            assert row["rotation"] == 0 and row["input_hash"] is None
    only = read_features(str(copy), columns=["id", "rotation"])
    assert only.column_names == ["id", "rotation"] and only.num_rows == merged.num_rows


# ---- broken manifests of every format ------------------------------------------------------


def _good_row(corpus: Path) -> dict:
    return {"video": str(corpus / "good_a.mp4"), "prompt": "fine", "id": "fine"}


BAD_VALUES = [  # (id, column, value, words the message must hold)
    ("seed_big", "seed", 2**64, "column 'seed'"),
    ("seed_neg", "seed", -1, "column 'seed'"),
    ("seed_text", "seed", "abc", "column 'seed'"),
    ("start_nan", "start", float("nan"), "column 'start'"),
    ("dur_neg", "duration", -2.0, "column 'duration'"),
    ("dur_long", "duration", 1e9, "column 'duration'"),
    ("neg_prompt_num", "negative_prompt", 5, "column 'negative_prompt'"),
    ("prompt_list", "prompt", ["a", "b"], "column 'prompt'"),
    ("video_num", "video", 12, "column 'video'"),
]


def _bad_value_rows(corpus: Path) -> list[dict]:
    rows = [_good_row(corpus)]
    for cid, column, value, _ in BAD_VALUES:
        row = {**_good_row(corpus), "id": cid}
        row[column] = value
        rows.append(row)
    return rows


def _check_problems(records, problems, expect_ids: set[str], where: str, ok=("fine",)) -> None:
    assert [r.id for r in records] == list(ok), where
    assert len(problems) == len(expect_ids), (where, [p.message for p in problems])
    by_id = {p.id: p for p in problems}
    for cid, _, _, words in BAD_VALUES:
        if cid not in expect_ids:
            continue
        assert cid in by_id, (where, cid, [p.message for p in problems])
        msg = by_id[cid].message
        assert words in msg and "\n" not in msg and msg.startswith("row "), (where, msg)


def test_bad_values_in_every_manifest_format_are_row_errors(corpus, tmp_path):
    rows = _bad_value_rows(corpus)
    # json.dumps writes NaN as the bare word NaN, which Python's reader accepts: it must be
    # refused as a value, not slip through
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "m.json").write_text(json.dumps(rows))
    all_ids = {b[0] for b in BAD_VALUES}
    for name, expect in (("m.jsonl", all_ids), ("m.json", all_ids)):
        records, problems = read_catalog(str(tmp_path / name), max_duration=8.0, allow_roots=["/"])
        _check_problems(records, problems, expect, name)
    # CSV: every value is text; the typed ones must still be checked
    header = ["video", "prompt", "id", "negative_prompt", "seed", "start", "duration"]
    lines = [",".join(header)]
    for r in rows:
        cells = ["" if r.get(h) is None else str(r.get(h)) for h in header]
        lines.append(",".join(f'"{c}"' for c in cells))
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    records, problems = read_catalog(str(tmp_path / "m.csv"), max_duration=8.0, allow_roots=["/"])
    text_ok = ["neg_prompt_num", "prompt_list", "video_num"]  # fine as text in a CSV
    _check_problems(records, problems, all_ids - set(text_ok), "m.csv", ("fine", *text_ok))
    # Parquet: typed columns of the wrong type, one column per file
    pq.write_table(
        pa.table(
            {
                "video": [str(corpus / "good_a.mp4")] * 2,
                "prompt": ["fine", "x"],
                "id": ["fine", "seed_big"],
                "seed": pa.array([1, 2**64 - 1], pa.uint64()),
            }
        ),
        tmp_path / "seed.parquet",
    )
    records, problems = read_catalog(
        str(tmp_path / "seed.parquet"), max_duration=8.0, allow_roots=["/"]
    )
    _check_problems(records, problems, {"seed_big"}, "seed.parquet")
    pq.write_table(
        pa.table(
            {
                "video": [str(corpus / "good_a.mp4")] * 2,
                "prompt": ["fine", "x"],
                "id": ["fine", "prompt_list"],
                "negative_prompt": pa.array([None, 3.5], pa.float64()),
            }
        ),
        tmp_path / "types.parquet",
    )
    records, problems = read_catalog(
        str(tmp_path / "types.parquet"), max_duration=8.0, allow_roots=["/"]
    )
    assert [r.id for r in records] == ["fine"]
    assert "column 'negative_prompt'" in problems[0].message


def test_bad_bytes_and_broken_lines_are_row_errors_or_one_line_refusals(corpus, tmp_path):
    good = f"{corpus / 'good_a.mp4'},fine,fine\n"
    (tmp_path / "bytes.csv").write_bytes(
        b"video,prompt,id\n" + good.encode() + b"x.mp4,caf\xe9 \xff,bad\n" + b"a,b,c,d,e\n"
    )
    records, problems = read_catalog(
        str(tmp_path / "bytes.csv"), max_duration=8.0, allow_roots=["/"]
    )
    assert [r.id for r in records] == ["fine"] and len(problems) == 2
    assert all("line" in p.message and "\n" not in p.message for p in problems)
    (tmp_path / "broken.jsonl").write_text(
        json.dumps(_good_row(corpus)) + '\n{"video": "a.mp4", "prompt": \n[1, 2]\n"text"\n'
    )
    records, problems = read_catalog(
        str(tmp_path / "broken.jsonl"), max_duration=8.0, allow_roots=["/"]
    )
    assert [r.id for r in records] == ["fine"] and len(problems) == 3
    assert all("\n" not in p.message for p in problems)
    # unreadable as a whole: one line naming the file (exit 2 from the command)
    whole = {
        "binary.csv": b"\x00\x01\x02\xff\xfe" * 50,
        "utf16.jsonl": json.dumps(_good_row(corpus)).encode("utf-16"),
        "not_array.json": b'{"video": "a.mp4", "prompt": "x"}',
        "truncated.json": json.dumps([_good_row(corpus)] * 3).encode()[:-20],
        "garbage.parquet": b"PAR1" + bytes(100),
        "empty.csv": b"",
        "no_prompt.csv": b"video\nx.mp4\n",
    }
    for name, data in whole.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CatalogError) as info:
            read_catalog(str(tmp_path / name), max_duration=8.0, allow_roots=["/"])
        assert name in str(info.value) and "\n" not in str(info.value), (name, str(info.value))


def test_unreadable_manifest_is_one_line_exit_2_without_starting_ray(tmp_path, capsys):
    manifest = tmp_path / "binary.jsonl"
    manifest.write_bytes(b"\xff\xfe\x00garbage" * 20)
    code = cli_main(
        ["extract", "--input", str(manifest), "--output", str(tmp_path / "out")]
        + ["--variant", "tiny", "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "binary.jsonl" in err[0], err
    assert not (tmp_path / "out").exists()


# ---- corrupt adapter files ---------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_corrupt_adapters_are_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    from selva_core.lora.adapter_file import (
        AdapterFormatError,
        AdapterMeta,
        read_adapter,
    )
    from selva_core.weights import CorruptWeightsError, UntrustedCheckpointError

    meta = AdapterMeta(
        rank=2,
        alpha=2.0,
        rslora=False,
        scale=1.0,
        init="standard",
        trained_rank=2,
        targets=("attn.qkv",),
    )
    tensors = {"blk.lora_A": torch.zeros(2, 8), "blk.lora_B": torch.zeros(8, 2)}
    good = tmp_path / "good.safetensors"
    save_file(tensors, str(good), metadata={"selva_lora": meta.to_json()})
    assert read_adapter(good).meta.rank == 2
    data = good.read_bytes()
    bad_meta = json.loads(meta.to_json())

    def st(name: str, metadata: dict | None, tens=tensors) -> Path:
        path = tmp_path / name
        save_file(tens, str(path), metadata=metadata)
        return path

    marker = tmp_path / "pwned"
    pickled = tmp_path / "evil.pt"
    torch.save({"state_dict": {"blk.lora_A": torch.zeros(2, 8)}, "x": _Payload(marker)}, pickled)
    cases = {
        "truncated": (tmp_path / "cut.safetensors", AdapterFormatError),
        "empty": (tmp_path / "empty.safetensors", AdapterFormatError),
        "no_metadata": (st("plain.safetensors", None), AdapterFormatError),
        "not_json": (st("notjson.safetensors", {"selva_lora": "{rank: 2"}), AdapterFormatError),
        "future": (
            st(
                "future.safetensors", {"selva_lora": json.dumps({**bad_meta, "format_version": 99})}
            ),
            AdapterFormatError,
        ),
        "scale": (
            st("scale.safetensors", {"selva_lora": json.dumps({**bad_meta, "scale": 5.0})}),
            AdapterFormatError,
        ),
        "missing_field": (
            st("field.safetensors", {"selva_lora": json.dumps({"format_version": 1})}),
            AdapterFormatError,
        ),
        "rank": (
            st(
                "rank.safetensors",
                {"selva_lora": json.dumps({**bad_meta, "rank": 4, "alpha": 4.0})},
            ),
            AdapterFormatError,
        ),
        "unpaired": (
            st(
                "unpaired.safetensors",
                {"selva_lora": meta.to_json()},
                {"blk.lora_A": torch.zeros(2, 8)},
            ),
            AdapterFormatError,
        ),
        "pickle": (pickled, UntrustedCheckpointError),
        "garbage_pt": (tmp_path / "garbage.pt", CorruptWeightsError),
        "html_pt": (tmp_path / "page.pth", CorruptWeightsError),
    }
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(3).bytes(200))
    (tmp_path / "page.pth").write_text("<html><body>404 not found</body></html>")
    for case, (path, error) in cases.items():
        with pytest.raises(error) as info:
            read_adapter(path)
        message = str(info.value)
        assert path.name in message, (case, message)
        assert len(message.splitlines()) == 1, (case, message)
    assert not marker.exists(), "the pickled payload ran"
    # random bytes of many sizes: always one typed error naming the file, never another type
    for seed in range(12):
        path = tmp_path / f"random{seed}.pt"
        path.write_bytes(np.random.default_rng(seed).bytes(16 << (seed % 6)))
        with pytest.raises(CorruptWeightsError, match=path.name):
            read_adapter(path)


def test_generate_and_qa_writers_never_fail_a_block_for_one_row(tmp_path):
    """A row whose value does not fit the results table (a seed beyond int64) becomes an error
    row at stage "write" (its track deleted: no file without a row); the other row of the
    block is staged and reported ok. The writer stages called as Ray Data calls them."""
    from selva_ray.generate.stages import clip_samples, write_outputs
    from selva_ray.io.output_dir import OutputDir
    from selva_ray.qa.stages import write_batch as qa_write_batch

    rate, duration = 16000, 0.5
    rows = [
        {"id": "good", "seed": 5},
        {"id": "huge_seed", "seed": 2**64},  # passed no catalog check: must not sink "good"
    ]
    batch = {
        key: np.array([value(r) for r in rows], dtype=object)
        for key, value in {
            "id": lambda r: r["id"],
            "seed": lambda r: r["seed"],
            "shard": lambda r: "s0",
            "source": lambda r: f"/videos/{r['id']}.mp4",
            "row": lambda r: 1,
            "prompt": lambda r: "a hum",
            "negative_prompt": lambda r: None,
            "cfg": lambda r: 4.5,
            "steps": lambda r: 2,
            "start": lambda r: 0.0,
            "duration": lambda r: duration,
            "audio": lambda r: np.full(clip_samples(duration, rate), 0.1, np.float32),
            "batch_clips": lambda r: 2,
            "worker": lambda r: "host:1",
            "status": lambda r: "ok",
            "stage": lambda r: "",
            "error_type": lambda r: "",
            "message": lambda r: "",
        }.items()
    }
    gen = tmp_path / "gen"
    report = write_outputs(
        batch,
        output=str(gen),
        settings_hash="h",
        variant="tiny",
        sample_rate=rate,
        audio_format="wav",
        bits=16,
        loudness=None,
        peak=None,
        mux=False,
        mix_original=None,
        adapters=[],
    )
    assert report["status"].to_pylist() == ["ok", "error"]
    assert report["stage"].to_pylist() == ["", "write"]
    commit = OutputDir(str(gen), kind="results").commit("s0")
    assert (commit.ok, commit.failed) == (1, 1)
    assert pq.read_table(gen / "results")["id"].to_pylist() == ["good"]
    error = pq.read_table(gen / "errors").to_pylist()[0]
    assert error["id"] == "huge_seed" and error["stage"] == "write"
    assert sorted(p.name for p in (gen / "audio").iterdir()) == ["good.wav"]

    qa = tmp_path / "qa"
    table = pa.table(
        {
            "shard": ["s0", "s0"],
            "id": ["good", "huge_seed"],
            "seed": pa.array([5, 2**64 - 1], pa.uint64()),
            "duration": [1.0, 1.0],
            "status": ["ok", "ok"],
            "stage": ["", ""],
            "error_type": ["", ""],
            "message": ["", ""],
            "qa_flags": [["silence"], []],
        }
    )
    out = qa_write_batch(table, output=str(qa), settings_hash="h")
    assert out["status"].to_pylist() == ["ok", "error"]
    assert out["flags"].to_pylist() == ["silence", ""]
    commit = OutputDir(str(qa), kind="results").commit("s0")
    assert (commit.ok, commit.failed) == (1, 1)
    assert pq.read_table(qa / "results")["id"].to_pylist() == ["good"]
    assert pq.read_table(qa / "errors")["id"].to_pylist() == ["huge_seed"]
