"""Catalog reading: folders with prompts.txt, manifests in three formats, ids, bad rows."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selva_ray.io.catalog import CatalogError, clip_id, parse_prompts_file, read_catalog
from selva_ray.io.names import file_stem


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
    refused, problems = read_catalog(str(manifest))  # default root: the manifest's folder
    assert not refused and [p.row for p in problems] == [0, 1]
    assert all("outside the allowed roots" in p.message for p in problems)
    roots = [str(tmp_path), "/abs"]
    records, problems = read_catalog(str(manifest), allow_roots=roots)
    assert not problems
    a, b = records
    assert a.id == "007" and a.source == str(tmp_path / "videos" / "a.mp4")
    assert (a.start, a.duration, a.seed, a.negative_prompt) == (1.5, 4.0, 3, None)
    assert b.id == clip_id("/abs/b.mp4", 0.0, None) and b.negative_prompt == "music"
    again, _ = read_catalog(str(manifest), allow_roots=roots)
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
    assert "row 2 (line 3), column 'start': must be >= 0" in by_row[2].message
    assert "column 'duration': must be in (0, 8.0]" in by_row[3].message
    assert "column 'start'" in by_row[4].message and "soon" in by_row[4].message
    assert by_row[5].id == "row-5" and "no 'video'" in by_row[5].message


def test_unusable_catalogs_raise(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(str(tmp_path / "missing"))
    bad = tmp_path / "m.csv"
    bad.write_text("path,prompt\na.mp4,x\n")
    with pytest.raises(CatalogError, match="no 'video' column"):
        read_catalog(str(bad))
    bad.write_text("video,speed\na.mp4,2\n")
    with pytest.raises(CatalogError, match="no 'prompt' column"):
        read_catalog(str(bad))
    odd = tmp_path / "list.txt"
    odd.write_text("a.mp4\n")
    with pytest.raises(CatalogError, match="neither a folder nor a manifest"):
        read_catalog(str(odd))


def test_prompts_file_parsing():
    text = "# comment\n\na.mp4: first: second\nno colon here\n b.mp4 :  spaced  \n"
    assert parse_prompts_file(text) == {"a.mp4": "first: second", "b.mp4": "spaced"}


# ---- reliability: every value typed at read time, bad rows never cost the catalog -------------


def test_values_are_validated_and_typed_naming_row_column_and_value(tmp_path):
    rows = [
        {"video": "a.mp4", "prompt": "ok", "id": "a", "seed": 7, "cfg": 3.5, "steps": 10},
        {"video": "b.mp4", "prompt": "x", "id": "b", "seed": 2**70},
        {"video": "c.mp4", "prompt": "x", "id": "c", "negative_prompt": 5},
        {"video": "d.mp4", "prompt": "x", "id": "d", "cfg": "nan"},
        {"video": "e.mp4", "prompt": "x", "id": "e", "steps": 0},
        {"video": "f.mp4", "prompt": 12, "id": "f"},
        {"video": "g.mp4", "prompt": "x", "id": "g", "seed": 1.5},
        {"video": "h.mp4", "prompt": "x", "id": ["h"]},
        {"video": "i.mp4", "prompt": "x", "id": 9, "seed": "11"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    records, problems = read_catalog(str(manifest))
    assert [(r.id, r.seed, r.cfg, r.steps) for r in records] == [
        ("a", 7, 3.5, 10),
        ("9", 11, None, None),
    ]
    by_id = {p.id: p.message for p in problems}
    assert "row 1 (line 2), column 'seed'" in by_id["b"] and str(2**70) in by_id["b"]
    assert "column 'negative_prompt'" in by_id["c"] and "5" in by_id["c"]
    assert "column 'cfg'" in by_id["d"]
    assert "column 'steps'" in by_id["e"]
    assert "column 'prompt'" in by_id["f"]
    assert "column 'seed'" in by_id["g"]
    assert "column 'id'" in by_id["row-7"]


def test_csv_bad_byte_and_wrong_field_count_are_row_errors_with_line_numbers(tmp_path, caplog):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(
        b"video,prompt,notes\n"
        b"a.mp4,dog,fine\n"
        b"b.mp4,caf\xe9,latin-1\n"
        b"c.mp4,rain\n"
        b'"d.mp4","quoted, with comma",x\n'
    )
    with caplog.at_level("WARNING"):
        records, problems = read_catalog(str(manifest))
    assert [r.prompt for r in records] == ["dog", "quoted, with comma"]
    by_row = {p.row: p.message for p in problems}
    assert "line 3" in by_row[1] and "UTF-8" in by_row[1]
    assert "line 4" in by_row[2] and "2 fields" in by_row[2]
    warnings = [r.getMessage() for r in caplog.records if "unknown columns" in r.getMessage()]
    assert len(warnings) == 1 and "notes" in warnings[0]


def test_json_array_manifest_is_parsed_as_json(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(
        json.dumps(
            [
                {"video": "a.mp4", "prompt": "dog"},
                {"video": "b.mp4", "prompt": "rain", "start": 1},
                "not an object",
            ],
            indent=2,
        )
    )
    records, problems = read_catalog(str(manifest))
    assert [r.prompt for r in records] == ["dog", "rain"] and records[1].start == 1.0
    assert [p.row for p in problems] == [2] and "not a JSON object" in problems[0].message
    (tmp_path / "o.json").write_text('{"video": "a.mp4", "prompt": "dog"}')
    with pytest.raises(CatalogError, match="JSON array"):
        read_catalog(str(tmp_path / "o.json"))


def test_unsafe_ids_are_refused(tmp_path):
    ids = ["../../etc/x", "a/b", "nul\x00byte", "..", ".hidden", "x" * 200, "fine id-1"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            json.dumps({"video": f"{i}.mp4", "prompt": "x", "id": v}) for i, v in enumerate(ids)
        )
    )
    records, problems = read_catalog(str(manifest))
    assert [r.id for r in records] == ["fine id-1"]
    assert len(problems) == 6 and all("column 'id'" in p.message for p in problems)
    # problem ids are safe names too (the row number), never the unsafe value
    assert all(p.id.startswith("row-") for p in problems)


def test_allow_roots_limit_where_manifest_rows_point(tmp_path):
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "c.csv"
    manifest.write_text(
        "video,prompt\n"
        "in/a.mp4,inside\n"
        "../out/b.mp4,sibling\n"
        "/etc/passwd.mp4,absolute\n"
        "s3://bucket/c.mp4,remote\n"
    )
    records, problems = read_catalog(str(manifest))
    assert [r.prompt for r in records] == ["inside", "remote"]  # URIs: their own buckets
    assert sorted(p.row for p in problems) == [1, 2]
    records, problems = read_catalog(str(manifest), allow_roots=[str(tmp_path)])
    assert [r.prompt for r in records] == ["inside", "sibling"]  # explicit roots only
    assert {p.row for p in problems} == {2, 3}


def test_symlink_loops_are_followed_once_and_reported(tmp_path):
    touch(tmp_path / "dogs" / "a.mp4")
    touch(tmp_path / "dogs" / "sub" / "b.mp4")
    (tmp_path / "dogs" / "sub" / "loop").symlink_to("..")
    (tmp_path / "dogs" / "self").symlink_to(".")
    (tmp_path / "alias").symlink_to("dogs/sub")  # a second way into a listed folder
    records, problems = read_catalog(str(tmp_path))
    assert sorted(r.source.rsplit("/", 1)[-1] for r in records) == ["a.mp4", "b.mp4"]
    loops = [p for p in problems if "symlink loop" in p.message]
    assert len(loops) == 2 and not any(p.clip for p in loops)
    assert {p.source.rsplit("/", 1)[-1] for p in loops} == {"loop", "self"}


def test_prompt_lines_without_colon_or_match_are_reported(tmp_path):
    touch(tmp_path / "dogs" / "a.mp4")
    (tmp_path / "prompts.txt").write_text(
        "# comment\ndogs/a.mp4: a dog\nmissing.mp4: nothing here\njust words\n"
    )
    records, problems = read_catalog(str(tmp_path))
    assert [r.prompt for r in records] == ["a dog"]
    messages = sorted(p.message for p in problems)
    assert len(messages) == 2 and not any(p.clip for p in problems)
    assert any("line 3" in m and "missing.mp4" in m and "matches no video" in m for m in messages)
    assert any("line 4" in m and "no colon" in m for m in messages)


def test_empty_and_binary_catalogs_are_refused(tmp_path):
    from selva_ray.io.catalog import check_not_empty

    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(CatalogError, match="empty"):
        read_catalog(str(tmp_path / "e.jsonl"))
    (tmp_path / "b.csv").write_bytes(b"\x00\x01\x02video")
    with pytest.raises(CatalogError, match="not UTF-8"):
        read_catalog(str(tmp_path / "b.csv"))
    (tmp_path / "folder").mkdir()
    records, problems = read_catalog(str(tmp_path / "folder"))
    with pytest.raises(CatalogError, match="has no clips"):
        check_not_empty(str(tmp_path / "folder"), records, problems)


def test_input_hash_follows_what_the_row_says():
    from selva_ray.io.catalog import ClipRecord

    base = ClipRecord("a", "/v/a.mp4", "dog")
    assert base.input_hash() == ClipRecord("a", "/v/a.mp4", "dog", row=5).input_hash()
    for changed in (
        ClipRecord("a", "/v/a.mp4", "cat"),
        ClipRecord("a", "/v/a.mp4", "dog", negative_prompt="music"),
        ClipRecord("a", "/v/a.mp4", "dog", seed=1),
        ClipRecord("a", "/v/a.mp4", "dog", start=1.0),
    ):
        assert changed.input_hash() != base.input_hash()


# ---- prompts: NFD names, empty prompts, lines naming no video (issue 24) --------------------


def test_prompts_file_names_match_whatever_the_unicode_normal_form(tmp_path):
    """macOS writes names in NFD; a prompts.txt typed elsewhere is NFC (and the reverse)."""
    import unicodedata

    nfc, nfd = "café.mp4", unicodedata.normalize("NFD", "crème.mp4")
    touch(tmp_path / "sounds" / unicodedata.normalize("NFD", nfc))  # on disk: NFD
    touch(tmp_path / "sounds" / unicodedata.normalize("NFC", nfd))  # on disk: NFC
    (tmp_path / "sounds" / "prompts.txt").write_text(
        f"{nfc}: a cup on a saucer\n{nfd}: a spoon in a bowl\n", encoding="utf-8"
    )
    records, problems = read_catalog(str(tmp_path))
    prompts = sorted(r.prompt for r in records)
    assert prompts == ["a cup on a saucer", "a spoon in a bowl"]  # not the folder name
    assert not problems


@pytest.mark.parametrize("prompt", ["", "   ", "\t \u3000"])
def test_empty_prompts_fail_their_clip_when_the_catalog_is_read(tmp_path, prompt):
    manifest = tmp_path / "clips.jsonl"
    rows = [{"video": "a.mp4", "prompt": "dog"}, {"video": "b.mp4", "prompt": prompt}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, problems = read_catalog(str(manifest), require_prompt=True)
    assert [r.prompt for r in records] == ["dog"]
    assert len(problems) == 1 and problems[0].clip and problems[0].row == 1
    assert "row 1 (line 2)" in problems[0].message
    assert "column 'prompt'" in problems[0].message and "empty prompt" in problems[0].message
    # a job's --prompt fills empty cells; MMAudio and qa (require_prompt=False) need none
    filled, problems = read_catalog(str(manifest), require_prompt=True, default_prompt="rain")
    assert [r.prompt for r in filled] == ["dog", "rain"] and not problems
    records, problems = read_catalog(str(manifest))
    assert len(records) == 2 and not problems


def test_empty_prompt_of_a_folder_clip_names_the_prompts_line(tmp_path):
    touch(tmp_path / "dogs" / "a.mp4")
    touch(tmp_path / "dogs" / "b.mp4")
    touch(tmp_path / "__" / "c.mp4")  # folder name gives no prompt either
    (tmp_path / "dogs" / "prompts.txt").write_text("a.mp4: a dog\nb.mp4:   \n")
    records, problems = read_catalog(str(tmp_path), require_prompt=True)
    assert [r.prompt for r in records] == ["a dog"]
    by_name = {p.source.rsplit("/", 1)[-1]: p for p in problems}
    assert set(by_name) == {"b.mp4", "c.mp4"} and all(p.clip for p in problems)
    assert "prompts.txt line 2" in by_name["b.mp4"].message
    assert "folder name '__'" in by_name["c.mp4"].message


def test_a_prompts_line_naming_no_video_is_a_warning_in_every_job(tmp_path, caplog):
    """One rule in the shared reader: not a clip, so never a failed clip (extract, generate
    and qa all read catalogs through `read_input_catalog` / `split_problems`)."""
    from selva_ray.io.catalog import split_problems
    from selva_ray.validate import read_input_catalog

    touch(tmp_path / "dogs" / "a.mp4")
    (tmp_path / "prompts.txt").write_text("dogs/a.mp4: a dog\nmissing.mp4: nothing\n")
    with caplog.at_level("WARNING"):
        for kw in ({"variant": "tiny"}, {"default_prompt": ""}):  # generate, qa
            records, problems = read_input_catalog(
                str(tmp_path), max_duration=8.0, allow_roots=None, **kw
            )
            assert [r.prompt for r in records] == ["a dog"] and problems == []
    warned = [r.getMessage() for r in caplog.records if "matches no video" in r.getMessage()]
    assert len(warned) == 2 and "missing.mp4" in warned[0]
    _, everything = read_catalog(str(tmp_path))
    clips, warnings = split_problems(everything)  # extract's count
    assert clips == [] and warnings == 1


def test_output_names_follow_the_source_path_under_the_catalog(tmp_path):
    root = tmp_path / "lib"
    for name in ("shows/ep1/scene3.mp4", "shows/ep2/scene3.mp4", "x/a.mp4", "x/A.mkv"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    records, _ = read_catalog(str(root))
    names = {Path(r.source).relative_to(root).as_posix(): r.name for r in records}
    assert names["shows/ep1/scene3.mp4"] == "shows/ep1/scene3"
    assert names["shows/ep2/scene3.mp4"] == "shows/ep2/scene3"
    # a.mp4 and A.mkv would share a file (on a case-blind file system): a digest each
    assert names["x/a.mp4"].startswith("x/a-") and names["x/A.mkv"].startswith("x/A-")
    again, _ = read_catalog(str(root))
    assert [(r.id, r.name) for r in again] == [(r.id, r.name) for r in records]  # stable

    manifest = root / "m.csv"
    manifest.write_text(
        "video,prompt,start,duration,id\n"
        "shows/ep1/scene3.mp4,a,12.5,8,\n"
        "shows/ep1/scene3.mp4,a,,,\n"
        "x/a.mp4,a,,,my-take\n"
    )
    records, problems = read_catalog(str(manifest), max_duration=8.0)
    assert not problems
    assert [r.name for r in records] == ["shows/ep1/scene3.s12.5-d8", "shows/ep1/scene3", "my-take"]
    assert [file_stem(r.id, r.name) for r in records][:2] == [r.name for r in records][:2]


def test_file_stem_keeps_folders_and_makes_each_part_safe():
    assert file_stem("abc", "shows/ep1/scene3") == "shows/ep1/scene3"
    assert file_stem("abc", "../x/./.hidden/a:b") == "x/hidden/a_b"
    assert file_stem("abc") == "abc" and file_stem("abc#w003") == "abc.w003"
    odd = file_stem("a b/c")
    assert "/" not in odd and odd.startswith("a_b_c-")
