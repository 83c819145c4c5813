"""The results table of a run: one row per clip, written by `generate` (its writer stage
measures each track; DeSync actors score it) and by `qa` (on an existing catalog), read by
`report` and `inspect`, so both kinds of run folder read the same way.

Layout: `RUN_DIR/results/part-*.parquet` (committed per shard by `OutputDir(kind="results")`),
failures in `RUN_DIR/errors/` with the shared error schema (`selva_ray.io.rows`).

Paths (`audio_path`, `video_path`) are relative to the run folder when the file lies inside it
(`audio/<id>.flac`, `video/<id>.mp4`); a source outside the run (a QA-only run's input video)
is stored as given (absolute path or URI). Levels are in dB with digital silence at -120;
a metric that cannot be measured (DeSync without a model, loudness of a clip under 400 ms)
is null. Timings are seconds of that stage for the clip (null when the job has no such stage).

To add a column: append it to `COLUMNS` with its type and meaning and bump `RESULTS_VERSION`
if readers must tell old files apart. Writers fill columns they do not know with nulls
(`results_table`), and `read_results` reads files written before a column existed.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from .catalog import resolve
from .output_dir import part_files_in

RESULTS_VERSION = 1
RESULTS_DIR = "results"

# name, type, meaning (stored as field metadata `doc`)
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("id", pa.string(), "clip id (the catalog's)"),
    ("source", pa.string(), "source video (absolute path or URI)"),
    ("row", pa.int64(), "row of the catalog (null: a features folder's clip)"),
    ("prompt", pa.string(), "text prompt used"),
    ("negative_prompt", pa.string(), "negative prompt used (null: none)"),
    ("seed", pa.int64(), "sampling seed"),
    ("cfg", pa.float64(), "classifier-free guidance strength"),
    ("steps", pa.int64(), "Euler sampling steps"),
    ("variant", pa.string(), "model variant (null for a QA-only run)"),
    ("adapters", pa.string(), "JSON list of {name, strength, sha256} of merged LoRA adapters"),
    ("audio_path", pa.string(), "generated track, relative to the run folder ('' for QA-only)"),
    ("video_path", pa.string(), "dubbed video relative to the run folder, or the source video"),
    ("start", pa.float64(), "seconds into the source where the clip starts"),
    ("duration", pa.float64(), "seconds of audio measured / generated"),
    ("samples", pa.int64(), "samples of the generated track (null for QA-only)"),
    ("sample_rate", pa.int64(), "Hz of the measured audio"),
    ("bits", pa.int64(), "sample depth of the written track, 16 or 24 (null for QA-only)"),
    ("peak_dbfs", pa.float64(), "sample peak, dBFS"),
    ("true_peak_dbtp", pa.float64(), "true peak (4x oversampled), dBTP"),
    ("rms_dbfs", pa.float64(), "RMS level, dBFS"),
    ("loudness_lufs", pa.float64(), "integrated loudness, ITU-R BS.1770 (null: < 400 ms)"),
    ("clipped_ratio", pa.float64(), "share of samples at full scale (>= 0.999)"),
    ("silence_ratio", pa.float64(), "share of 50 ms frames under -60 dBFS"),
    ("spectral_flatness", pa.float64(), "long-term spectral flatness (null: silent)"),
    ("gain_db", pa.float64(), "loudness normalisation gain applied (null for QA-only)"),
    ("desync_s", pa.float64(), "audio-visual offset predicted by Synchformer (null: not run)"),
    ("qa_flags", pa.list_(pa.string()), "checks the clip failed (see QAThresholds)"),
    ("status", pa.string(), "ok"),
    ("batch_clips", pa.int64(), "clips in its generator batch (null for QA-only)"),
    ("worker", pa.string(), "host:pid of the generator actor (null for QA-only)"),
    ("t_decode", pa.float64(), "seconds decoding the source"),
    ("t_features", pa.float64(), "seconds computing conditioning features"),
    ("t_sampling", pa.float64(), "seconds of flow-matching sampling"),
    ("t_vocoder", pa.float64(), "seconds of VAE decoding + vocoder"),
    ("t_write", pa.float64(), "seconds writing audio / muxing video"),
    ("t_qa", pa.float64(), "seconds computing the QA metrics (DeSync included)"),
    ("t_desync", pa.float64(), "seconds of DeSync scoring on the model actor (null: none)"),
    ("settings_hash", pa.string(), "hash of the run's settings (_meta.json)"),
    (
        "input_hash",
        pa.string(),
        "hash of what the row was computed from (catalog values, source size and mtime, "
        "mask); a rerun redoes a clip whose hash changed (selva_ray.io.identity)",
    ),
    # long videos (generate --window): one row per video, null for an ordinary clip
    ("windows", pa.int32(), "windows the video was generated in (null: an ordinary clip)"),
    ("join", pa.string(), "how the windows were joined: continue | crossfade"),
    (
        "window_timings",
        pa.string(),
        "JSON list per window of {index, start, end (s from the clip start), seed, t_decode, "
        "t_features, t_sampling, t_vocoder}",
    ),
    (
        "seam_worst",
        pa.float64(),
        "seam metric: largest log-mel spectral flux at a seam / the track's median flux",
    ),
    (
        "seam_inner_max",
        pa.float64(),
        "the same over the windows' inner frames (a seam above it is a click)",
    ),
]
COLUMN_NAMES = [name for name, _, _ in COLUMNS]


def results_schema() -> pa.Schema:
    return pa.schema(
        [pa.field(name, type_, metadata={"doc": doc}) for name, type_, doc in COLUMNS],
        metadata={"selva.results_version": str(RESULTS_VERSION)},
    )


RESULTS_SCHEMA = results_schema()


def adapters_json(adapters: list[dict] | None) -> str:
    """The `adapters` cell: a stable JSON list (empty list when none)."""
    return json.dumps(adapters or [], sort_keys=True, separators=(",", ":"))


def results_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts) in the results schema; missing columns are null, unknown keys refused."""
    extra = sorted({k for r in rows for k in r} - set(COLUMN_NAMES))
    if extra:
        raise ValueError(f"results rows hold columns outside the results schema: {extra}")
    return pa.Table.from_pylist(
        [{name: r.get(name) for name in COLUMN_NAMES} for r in rows], schema=RESULTS_SCHEMA
    )


def result_files(run_dir: str) -> list[str]:
    """Committed results files of a run folder (path or URI), sorted."""
    fs, root = resolve(run_dir)
    return part_files_in(fs, f"{root.rstrip('/')}/{RESULTS_DIR}")


# generation runs written before this schema: timings under other names, adapters as structs
LEGACY_NAMES = {
    "decode_s": "t_decode",
    "features_s": "t_features",
    "sampling_s": "t_sampling",
    "vocoder_s": "t_vocoder",
    "write_s": "t_write",
}


def _upgrade(table: pa.Table) -> pa.Table:
    """A results file written by an older generation job, in today's column names and types."""
    names = [LEGACY_NAMES.get(n, n) if LEGACY_NAMES.get(n) not in table.column_names else n
             for n in table.column_names]  # fmt: skip
    table = table.rename_columns(names)
    if "adapters" in names and not pa.types.is_string(table.schema.field("adapters").type):
        cells = [adapters_json(a) for a in table["adapters"].to_pylist()]
        table = table.set_column(names.index("adapters"), "adapters", pa.array(cells, pa.string()))
    return table


def read_results(run_dir: str) -> pa.Table:
    """Every results row of a run, in the current schema (columns added later read as null;
    columns this version does not know are kept at the end)."""
    fs, _ = resolve(run_dir)
    tables = [_upgrade(pq.read_table(path, filesystem=fs)) for path in result_files(run_dir)]
    if not tables:
        return RESULTS_SCHEMA.empty_table()
    table = pa.concat_tables(tables, promote_options="permissive")
    columns, fields = [], []
    for f in RESULTS_SCHEMA:
        if f.name in table.column_names:
            columns.append(table[f.name].cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
        fields.append(f)
    for name in table.column_names:
        if name not in COLUMN_NAMES:
            columns.append(table[name])
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=RESULTS_SCHEMA.metadata))
