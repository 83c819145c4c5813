"""The versioned Parquet schema of extracted features, and tensor (de)coding.

One row per clip. Tensor columns are Arrow's canonical fixed-shape tensor extension type
(`arrow.fixed_shape_tensor`), padded to the run's max duration; `*_len` columns give the valid
rows. bfloat16 has no Arrow type, so bf16 features are stored as their raw 16-bit patterns
(uint16) with the field metadata `selva.dtype = bfloat16`; `read_tensor` undoes that.

Schema version 1 columns:
  id, source, prompt, negative_prompt, seed, start, duration, fps, has_audio, padded,
  prompt_truncated, family, variant, encoder_checksum, settings_hash,
  input_hash (added within v1; absent in older files, read as null),
  rotation   (added within v1: degrees counterclockwise the frames were turned upright by the
              file's display matrix, 0/90/180/-90; 0 with --ignore-rotation; absent in older
              files, read as 0)
  parent_id, window_index, window_count, window_start, window_end, parent_duration
             (added within v1: a window of a long video, see WINDOW_SCALARS; null on clip rows
              and in older files)
  mask_digest (added within v1: digest of the object mask and its settings; null: no mask)
                                                                         (scalars)
  sync_f   (sync_len_max, sync_dim)     text-conditioned (SelVA) or plain (MMAudio) sync features
  sync_len                              valid rows of sync_f (8 per 0.32 s window)
  text_f   (77, text_dim)               CLIP per-token text features of the prompt
  clip_f   (clip_len_max, clip_dim)     CLIP frame features at 8 fps (MMAudio family only)
  clip_len
  latent_mean, latent_std (latent_len_max, latent_dim)   VAE posterior of the clip's own audio
  latent_len                            (only with --with-audio-latents; 0 when no audio)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from selva_core.variants import ModelSpec

if TYPE_CHECKING:  # torch is imported by the functions that make tensors: a driver that only
    import torch  # plans and validates a job does not pay for it

SCHEMA_VERSION = 1
STORAGE_DTYPES = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}
DTYPE_KEY = b"selva.dtype"

SCALARS = [
    ("id", pa.string()),
    ("source", pa.string()),
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("seed", pa.int64()),
    ("start", pa.float64()),
    ("duration", pa.float64()),
    ("fps", pa.float64()),
    ("has_audio", pa.bool_()),
    ("padded", pa.bool_()),
    ("prompt_truncated", pa.bool_()),
    ("family", pa.string()),
    ("variant", pa.string()),
    ("encoder_checksum", pa.string()),
    ("settings_hash", pa.string()),
    ("input_hash", pa.string()),  # digest of the catalog row; a changed row is redone
    ("rotation", pa.int16()),  # display rotation applied when decoding (degrees, ccw)
    # windows of a long video (null on an ordinary clip row): see `WINDOW_SCALARS`
    ("parent_id", pa.string()),
    ("window_index", pa.int32()),
    ("window_count", pa.int32()),
    ("window_start", pa.float64()),
    ("window_end", pa.float64()),
    ("parent_duration", pa.float64()),
    ("mask_digest", pa.string()),  # object mask the frames were greyed by (null: none)
]
# A video longer than the run's window is cut into overlapping windows, one row each: id
# "<parent_id>#w<index:03d>", `start`/`duration` the window's span in the source, and these
# columns: the video's clip id, the window's index (0-based, time order) and their count, the
# window's span [window_start, window_end) in seconds from the video's clip start, and the
# length of the whole clip (what a joined track lasts).
WINDOW_SCALARS = (
    "parent_id",
    "window_index",
    "window_count",
    "window_start",
    "window_end",
    "parent_duration",
)
# scalars added within schema v1, and what a file written before them reads as
LATER_SCALARS = {
    "input_hash": None,
    "rotation": 0,
    **dict.fromkeys(WINDOW_SCALARS),
    "mask_digest": None,
}


@dataclass(frozen=True)
class FeatureLayout:
    """Everything that fixes the on-disk shape of a run's features."""

    variant: str
    family: str
    max_duration: float
    storage_dtype: str
    with_audio_latents: bool
    frame_rule: str
    sync_len: int
    sync_dim: int
    text_len: int
    text_dim: int
    clip_len: int  # 0: no clip_f column (SelVA)
    clip_dim: int
    latent_len: int  # 0: no latent columns
    latent_dim: int
    schema_version: int = SCHEMA_VERSION
    ignore_rotation: bool = False  # frames decoded as stored, display matrix ignored
    window: float = 0.0  # videos longer than this are cut into windows (0: never, old runs)
    overlap: float = 0.0  # seconds shared by consecutive windows

    @classmethod
    def for_run(
        cls,
        spec: ModelSpec,
        *,
        max_duration: float,
        storage_dtype: str = "float16",
        with_audio_latents: bool = False,
        frame_rule: str = "official",
        ignore_rotation: bool = False,
        window: float = 0.0,
        overlap: float = 0.0,
    ) -> FeatureLayout:
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage dtype must be one of {list(STORAGE_DTYPES)}")
        seq, g = spec.sequence(max_duration), spec.generator_config
        return cls(
            variant=spec.name,
            family=spec.family,
            max_duration=float(max_duration),
            storage_dtype=storage_dtype,
            with_audio_latents=with_audio_latents,
            frame_rule=frame_rule,
            sync_len=seq.sync_seq_len,
            sync_dim=g.sync_dim,
            text_len=g.text_seq_len,
            text_dim=g.text_dim,
            clip_len=seq.clip_seq_len if spec.uses_clip_frames else 0,
            clip_dim=g.clip_dim,
            latent_len=seq.latent_seq_len if with_audio_latents else 0,
            latent_dim=g.latent_dim,
            ignore_rotation=ignore_rotation,
            window=float(window),
            overlap=float(overlap) if window else 0.0,
        )

    def hashed_settings(self) -> dict:
        """The settings that identify a run. `ignore_rotation` counts only when set, so folders
        written before it existed keep their hash (their rows read as rotation 0)."""
        settings = asdict(self)
        if not settings["ignore_rotation"]:
            del settings["ignore_rotation"]
        if not settings["window"]:  # folders from before windows: no window, same hash
            del settings["window"], settings["overlap"]
        return settings

    @property
    def settings_hash(self) -> str:
        """Identifies the settings: features are reused only when this matches."""
        blob = json.dumps(self.hashed_settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def tensor_shapes(self) -> dict[str, tuple[int, int]]:
        shapes = {
            "sync_f": (self.sync_len, self.sync_dim),
            "text_f": (self.text_len, self.text_dim),
        }
        if self.clip_len:
            shapes["clip_f"] = (self.clip_len, self.clip_dim)
        if self.latent_len:
            shapes["latent_mean"] = (self.latent_len, self.latent_dim)
            shapes["latent_std"] = (self.latent_len, self.latent_dim)
        return shapes

    def length_columns(self) -> list[str]:
        names = ["sync_len"]
        if self.clip_len:
            names.append("clip_len")
        if self.latent_len:
            names.append("latent_len")
        return names

    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field(n, t) for n, t in SCALARS]
        fields += [pa.field(n, pa.int32()) for n in self.length_columns()]
        value_type = pa.from_numpy_dtype(STORAGE_DTYPES[self.storage_dtype])
        meta = {DTYPE_KEY: self.storage_dtype.encode()}
        fields += [
            pa.field(n, pa.fixed_shape_tensor(value_type, list(shape)), metadata=meta)
            for n, shape in self.tensor_shapes().items()
        ]
        return pa.schema(fields, metadata={b"selva.schema_version": str(SCHEMA_VERSION).encode()})

    def describe(self) -> dict:
        """Human-readable layout for `_meta.json`."""
        return {
            "schema_version": self.schema_version,
            "settings": asdict(self),
            "settings_hash": self.settings_hash,
            "tensors": {
                n: {"shape": list(s), "dtype": self.storage_dtype}
                for n, s in self.tensor_shapes().items()
            },
            "scalars": [n for n, _ in SCALARS] + self.length_columns(),
        }


def to_storage(x: torch.Tensor, storage_dtype: str) -> np.ndarray:
    """A float tensor as the numpy array that Parquet stores (bf16 as raw uint16 bits)."""
    import torch

    if storage_dtype == "bfloat16":
        return x.detach().to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
    return x.detach().float().cpu().numpy().astype(STORAGE_DTYPES[storage_dtype])


def as_tensor(array) -> torch.Tensor:
    """A tensor over a NumPy array. Arrow and Ray's object store hand out read-only views;
    torch must not alias them (it warns, and a model writing in place would fault), so the
    array is copied exactly when it is read-only."""
    import torch

    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def from_storage(array: np.ndarray, storage_dtype: str) -> torch.Tensor:
    """Stored values back to a float32 tensor."""
    import torch

    if storage_dtype == "bfloat16":
        raw = as_tensor(np.ascontiguousarray(array).view(np.int16))
        return raw.view(torch.bfloat16).float()
    return as_tensor(array).float()


def tensor_array(array: np.ndarray, shape: tuple[int, ...]) -> pa.Array:
    """(B, *shape) numpy -> a canonical fixed-shape tensor Arrow array."""
    if array.shape[1:] != tuple(shape):
        raise ValueError(f"tensor of shape {array.shape[1:]} does not fit {tuple(shape)}")
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(array))


def read_tensor(table: pa.Table, column: str) -> torch.Tensor:
    """A stored tensor column as float32 (B, *shape), honouring the storage dtype."""
    field = table.schema.field(column)
    dtype = (field.metadata or {}).get(DTYPE_KEY, b"float32").decode()
    chunked = table.column(column)
    arrays = [chunk.to_numpy_ndarray() for chunk in chunked.chunks]
    if not arrays:
        import torch

        return torch.empty(0)
    return from_storage(np.concatenate(arrays), dtype)


def feature_files(output: str) -> list[str]:
    """The committed feature part files of an extraction folder (not errors/, not staging)."""
    from .output_dir import OutputDir

    return OutputDir(output).part_files()


def read_features(output: str, columns: list[str] | None = None) -> pa.Table:
    """All committed features of an extraction folder as one Arrow table.

    `pyarrow.dataset` or `ray.data.read_parquet` on the folder itself would also pick up the
    error table under errors/; pass them `feature_files(output)` instead.
    """

    from .output_dir import OutputDir

    out = OutputDir(output)
    tables = [_read_part(p, columns, out.fs) for p in out.part_files()]
    if not tables:
        raise FileNotFoundError(f"no feature files in {output}")
    return pa.concat_tables(tables, promote_options="default")


def _read_part(path: str, columns: list[str] | None, fs) -> pa.Table:
    """One part file, with the scalars added after it was written filled in (LATER_SCALARS);
    an unreadable file raises `CorruptOutputError` naming it."""
    import pyarrow.parquet as pq

    from .output_dir import CorruptOutputError

    try:
        names = pq.read_schema(path, filesystem=fs).names
        if "id" not in names:
            raise pa.ArrowInvalid("no 'id' column: not a feature file")
        wanted = None if columns is None else [c for c in columns if c in names]
        table = pq.read_table(path, columns=wanted, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptOutputError(
            f"{path} is not a readable Parquet file ({' '.join(str(exc).split())[:200]}); "
            "move it out of the folder (its clips will be redone by extract) and read again"
        ) from exc
    types = dict(SCALARS)
    for name, default in LATER_SCALARS.items():
        if name not in table.column_names and (columns is None or name in columns):
            table = table.append_column(
                pa.field(name, types[name]), pa.array([default] * table.num_rows, types[name])
            )
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise KeyError(f"{path} has no column(s) {missing}")
        table = table.select(columns)
    return table
