"""Catalog reading: folders with prompts.txt, manifests in three formats, ids, bad rows."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selva_ray.io.catalog import CatalogError, clip_id, parse_prompts_file, read_catalog


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # the catalog never opens videos; decoding comes later
    return path


def test_folder_prompts_nearest_file_wins_and_folder_name_is_the_fallback(tmp_path):
    touch(tmp_path / "dog_barking" / "a.mp4")
    touch(tmp_path / "dog_barking" / "b.MOV")
    touch(tmp_path / "dog_barking" / "night" / "c.mkv")
    touch(tmp_path / "rain-storm" / "d.webm")
    touch(tmp_path / "notes.txt")
    (tmp_path / "prompts.txt").write_text(
        "# root prompts\ndog_barking/a.mp4: a dog barks twice\nd: thunder and rain\n\n"
    )
    (tmp_path / "dog_barking" / "night" / "prompts.txt").write_text("c.mkv: a dog howls: far\n")
    records, problems = read_catalog(str(tmp_path))
    prompts = {r.source.rsplit("/", 1)[-1]: r.prompt for r in records}
    assert prompts == {
        "a.mp4": "a dog barks twice",
        "b.MOV": "dog barking",
        "c.mkv": "a dog howls: far",  # split on the first colon only
        "d.webm": "thunder and rain",  # keyed by stem
    }
    assert not problems
    assert all(r.source.startswith(str(tmp_path)) for r in records)


def test_ids_are_stable_and_depend_on_source_start_duration():
    assert clip_id("/v/a.mp4", 0.0, None) == clip_id("/v/a.mp4", 0, None)
    assert clip_id("/v/a.mp4", 0.0, None) != clip_id("/v/a.mp4", 1.0, None)
    assert clip_id("/v/a.mp4", 0.0, None) != clip_id("/v/a.mp4", 0.0, 4.0)
    assert len(clip_id("/v/a.mp4", 0.0, None)) == 16


def test_csv_manifest_resolves_relative_paths_and_keeps_string_ids(tmp_path):
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "clips.csv"
    manifest.write_text(
        "id,video,prompt,negative_prompt,start,duration,seed\n"
        "007,../videos/a.mp4,dog,,1.5,4,3\n"
        ",/abs/b.mp4,rain,music,,,\n"
    )
    records, problems = read_catalog(str(manifest))
    assert not problems
    a, b = records
    assert a.id == "007" and a.source == str(tmp_path / "videos" / "a.mp4")
    assert (a.start, a.duration, a.seed, a.negative_prompt) == (1.5, 4.0, 3, None)
    assert b.id == clip_id("/abs/b.mp4", 0.0, None) and b.negative_prompt == "music"
    again, _ = read_catalog(str(manifest))
    assert [r.id for r in again] == [r.id for r in records]


def test_jsonl_and_parquet_manifests_and_file_uris(tmp_path):
    rows = [
        {"video": "x.mp4", "prompt": "a", "start": None},  # from_pylist types from row 0
        {"video": "y.mp4", "prompt": "b", "start": 2.0},
    ]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    from_jsonl, _ = read_catalog(str(jsonl))
    from_parquet, _ = read_catalog(f"file://{parquet}")
    assert [r.to_row() for r in from_jsonl] == [r.to_row() for r in from_parquet]
    assert from_jsonl[1].start == 2.0 and from_jsonl[0].source == str(tmp_path / "x.mp4")


def test_bad_rows_become_catalog_problems_naming_the_row(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"video": "a.mp4", "prompt": "ok", "id": "a"},
                {"video": "b.mp4", "prompt": "dup", "id": "a"},
                {"video": "c.mp4", "prompt": "x", "start": -1},
                {"video": "d.mp4", "prompt": "x", "duration": 12},
                {"video": "e.mp4", "prompt": "x", "start": "soon"},
                {"prompt": "no video"},
            ]
        )
    )
    records, problems = read_catalog(str(manifest), max_duration=8.0)
    assert [r.id for r in records] == ["a"]
    by_row = {p.row: p for p in problems}
    assert "duplicate id 'a'" in by_row[1].message and by_row[1].id == "a@row1"
    assert "start must be >= 0" in by_row[2].message
    assert "duration must be in (0, 8.0]" in by_row[3].message
    assert "soon" in by_row[4].message
    assert by_row[5].id == "row-5" and "no 'video'" in by_row[5].message


def test_unusable_catalogs_raise(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(str(tmp_path / "missing"))
    bad = tmp_path / "m.csv"
    bad.write_text("path,prompt\na.mp4,x\n")
    with pytest.raises(CatalogError, match="no 'video' column"):
        read_catalog(str(bad))
    bad.write_text("video,prompt,speed\na.mp4,x,2\n")
    with pytest.raises(CatalogError, match="unknown columns \\['speed'\\]"):
        read_catalog(str(bad))
    odd = tmp_path / "list.txt"
    odd.write_text("a.mp4\n")
    with pytest.raises(CatalogError, match="neither a folder nor a manifest"):
        read_catalog(str(odd))


def test_prompts_file_parsing():
    text = "# comment\n\na.mp4: first: second\nno colon here\n b.mp4 :  spaced  \n"
    assert parse_prompts_file(text) == {"a.mp4": "first: second", "b.mp4": "spaced"}
