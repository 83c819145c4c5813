"""The three Ray Data stages of feature extraction: decode (CPU tasks), encode (actors holding
the models, on GPUs when there are any), write (CPU tasks staging Parquet fragments).

Every stage catches per-clip failures and passes the clip on as an error row (status, stage,
error type, message), so one bad video never costs its neighbours in the block.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import pyarrow as pa
import torch

from selva_core.pipeline import clip_duration, fit_length

from ..io.feature_schema import FeatureLayout, tensor_array, to_storage
from ..io.output_dir import OutputDir
from ..io.rows import OK_RESULT, batch_rows, error_result, error_table, local_copy, plain

log = logging.getLogger(__name__)

CLIP_COLUMNS = (
    "id",
    "shard",
    "row",
    "source",
    "prompt",
    "negative_prompt",
    "seed",
    "start",
    "input_hash",
    # windows of a long video (selva_ray.extract.windows) and the clip's object mask
    "parent_id",
    "window_index",
    "window_count",
    "window_start",
    "window_end",
    "parent_duration",
    "pad_to",
    "mask",
)
EMPTY_FRAMES = np.zeros((0, 3, 1, 1), dtype=np.uint8)
EMPTY_AUDIO = np.zeros((0,), dtype=np.float32)


# ---- stage 1: decode ------------------------------------------------------------------------


def decode_args(spec, config, *, audio_rate: int | None, ignore_rotation: bool = False) -> dict:
    """`decode_batch`'s settings from a job's config (extract's or generate's), so that both
    jobs decode a clip alike."""
    return {
        "variant": spec.name,
        "max_duration": config.max_duration,
        "frame_rule": config.frame_rule,
        "ignore_rotation": ignore_rotation,
        "audio_rate": audio_rate,
        "mask_strength": config.mask_strength,
        "mask_paths": tuple(config.mask_paths),
    }


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    variant: str,
    max_duration: float,
    frame_rule: str,
    audio_rate: int | None,
    carry: tuple[str, ...] = (),
    ignore_rotation: bool = False,
    mask_strength: float = 1.0,
    mask_paths: tuple[str, ...] = ("clip", "sync"),
) -> dict[str, list]:
    """Catalog rows -> uint8 frames (and mono audio) at the model's rates.

    `carry` names extra input columns passed through unchanged (other jobs' per-clip settings).
    A row with `pad_to` (a window of a long video) is padded to that length; a row with a
    `mask` has its background greyed by it (`mask_strength`, `mask_paths`); a mask that does
    not fit the video fails the clip with a message naming both files.
    """
    from selva_core.pipeline import decode_config_for
    from selva_core.variants import get_spec

    config = decode_config_for(get_spec(variant), frame_rule, ignore_rotation)
    out: dict[str, list] = defaultdict(list)
    for row in batch_rows(batch):
        result = dict(OK_RESULT)
        frames = clip_frames = EMPTY_FRAMES
        audio, duration, fps, has_audio, padded = EMPTY_AUDIO, 0.0, 0.0, False, False
        rotation, digest = 0, None
        try:
            with local_copy(row["source"]) as path:
                clip = _decode_row(row, path, max_duration, audio_rate, config)
            if row.get("mask"):
                clip = _apply_mask(clip, row["mask"], mask_strength, mask_paths, config)
                digest = clip.mask_digest
            frames, clip_frames = clip.sync_frames.numpy(), clip.clip_frames.numpy()
            if clip.audio is not None:
                audio = clip.audio.numpy()
            # the clip's exact duration (its track's), not what the frames cover
            duration, fps = clip_duration(clip), clip.source_fps
            has_audio, padded = clip.has_audio, clip.padded
            rotation = clip.rotation
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            result = error_result(row, "decode", exc)
        for key in (*CLIP_COLUMNS, *carry):
            out[key].append(row.get(key))
        for key, value in result.items():
            out[key].append(value)
        out["duration"].append(duration)
        out["fps"].append(fps)
        out["has_audio"].append(has_audio)
        out["padded"].append(padded)
        out["rotation"].append(rotation)
        out["mask_digest"].append(digest)
        out["sync_frames"].append(frames)
        out["clip_frames"].append(clip_frames)
        out["audio"].append(audio)
    return dict(out)


def _decode_row(row: dict, path: str, max_duration: float, audio_rate, config):
    from selva_core.video.decode import VideoReader

    with VideoReader(path, config=config) as reader:
        return reader.read(
            start=row["start"],
            max_duration=row["duration"] or max_duration,
            audio_rate=audio_rate,
            pad_to=row.get("pad_to"),
        )


def _apply_mask(clip, mask: str, strength: float, paths, config):
    from selva_core.video.mask import MaskSettings, apply_mask

    with local_copy(mask) as local:
        return apply_mask(clip, MaskSettings(local, float(strength), tuple(paths)), config=config)


# ---- stage 2: encode ------------------------------------------------------------------------


class FeatureEncoder:
    """Callable-class actor: loads the feature encoders once, then encodes batches of clips."""

    def __init__(
        self,
        *,
        layout: FeatureLayout,
        device: str = "auto",
        precision: str | None = None,
        weights_dir: str | None = None,
        allow_download: bool | None = None,
        carry: tuple[str, ...] = (),
        components_factory=None,
    ):
        from selva_core.build import encoder_fingerprint
        from selva_core.pipeline import Pipeline, PipelineConfig
        from selva_core.weights import WeightStore

        from ..runtime import resolve_device, resolve_dtype

        self.layout = layout
        self.carry = tuple(carry)  # extra input columns passed through unchanged
        device = resolve_device(device)
        store = WeightStore(weights_dir, allow_download=allow_download)
        config = PipelineConfig(
            variant=layout.variant,
            dtype=resolve_dtype(precision, device),
            device=device,
            generation=False,
            with_audio_encoder=layout.with_audio_latents,
            frame_rule=layout.frame_rule,
        )
        if components_factory is not None:  # benchmarks: models built by hand
            parts = components_factory(device, config.dtype, "encoder")
            self.pipe = Pipeline(config, components=parts)
            self.checksum = "custom"
            return
        self.pipe = Pipeline(config, store)
        self.checksum = encoder_fingerprint(
            layout.variant, store, with_vae=layout.with_audio_latents
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from selva_core.pipeline import ClipInput

        rows = list(batch_rows(batch))
        inputs = {}
        for i, row in enumerate(rows):
            if row["status"] == "ok":
                inputs[i] = ClipInput(
                    path=row["source"],
                    start=row["start"],
                    duration=row["duration"],
                    sync_frames=_tensor(row["sync_frames"]),
                    clip_frames=_tensor(row["clip_frames"]),
                    audio=_tensor(row["audio"]) if row["has_audio"] else None,
                    has_audio=row["has_audio"],
                    padded=row["padded"],
                    source_fps=row["fps"],
                )
        features = self._encode(rows, inputs)
        return self._output(rows, features)

    def _encode(self, rows: list[dict], inputs: dict[int, object]) -> dict[int, object]:
        """Encode as one batch; if that fails, clip by clip so only the bad ones fail."""
        order = list(inputs)
        audio = self.layout.with_audio_latents
        try:
            encoded = self.pipe.features_from_decoded(
                [inputs[i] for i in order], [rows[i]["prompt"] for i in order], audio
            )
            return dict(zip(order, encoded, strict=True))
        except Exception:  # noqa: BLE001 - isolate the failing clip(s) below
            pass
        result: dict[int, object] = {}
        for i in order:
            try:
                result[i] = self.pipe.features_from_decoded(
                    [inputs[i]], [rows[i]["prompt"]], audio
                )[0]
            except Exception as exc:  # noqa: BLE001
                rows[i].update(error_result(rows[i], "encode", exc))
        return result

    def _output(self, rows: list[dict], features: dict[int, object]) -> dict[str, list]:
        lay = self.layout
        shapes = lay.tensor_shapes()
        dtype = lay.storage_dtype
        out: dict[str, list] = defaultdict(list)
        for i, row in enumerate(rows):
            for key in (*CLIP_COLUMNS, *self.carry, "status", "stage", "error_type", "message"):
                out[key].append(row[key])
            for key in ("duration", "fps", "has_audio", "padded", "rotation", "mask_digest"):
                out[key].append(row[key])
            f = features.get(i)
            tensors = _tensors(f, lay) if f is not None else {}
            for name, shape in shapes.items():
                t = tensors.get(name, torch.zeros(shape))
                out[name].append(to_storage(fit_length(t, shape[0]), dtype))
            out["sync_len"].append(tensors["sync_f"].shape[0] if f is not None else 0)
            if lay.clip_len:
                out["clip_len"].append(tensors["clip_f"].shape[0] if f is not None else 0)
            if lay.latent_len:
                latent = tensors.get("latent_mean")
                out["latent_len"].append(latent.shape[0] if latent is not None else 0)
            dropped = f.info.get("tokens_dropped", {}) if f is not None else {}
            truncated = any(dropped.values())
            out["prompt_truncated"].append(truncated)
            out["encoder_checksum"].append(self.checksum)
        return dict(out)


def _tensor(array) -> torch.Tensor:
    """A tensor of a batch array. Ray Data hands out read-only views of its object store;
    torch must not alias them (it warns, and a model writing in place would fault), so copy
    exactly when the array is read-only."""
    array = np.asarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def _tensors(f, layout: FeatureLayout) -> dict[str, torch.Tensor]:
    tensors = {"sync_f": f.sync_f, "text_f": f.text_f}
    if layout.clip_len:
        tensors["clip_f"] = f.clip_f
    if layout.latent_len and f.latent is not None:
        tensors["latent_mean"] = f.latent.mean
        tensors["latent_std"] = f.latent.std
    return tensors


# ---- stage 3: write -------------------------------------------------------------------------


def write_batch(
    batch: dict[str, np.ndarray], *, output: str, layout: FeatureLayout
) -> dict[str, list]:
    """Stage each shard's rows as Parquet fragments; report (shard, id, status, stage)."""
    out_dir = OutputDir(output)
    settings = layout.settings_hash
    rows = list(batch_rows(batch))
    by_shard: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_shard[row["shard"]].append(i)
    for shard, idx in by_shard.items():
        ok = [i for i in idx if rows[i]["status"] == "ok"]
        if ok:
            table = _feature_table_or_errors(batch, ok, rows, layout)
            if table is not None:
                out_dir.stage(shard, "features", table)
        bad = [i for i in idx if rows[i]["status"] != "ok"]
        if bad:
            out_dir.stage(shard, "errors", error_table([rows[i] for i in bad], settings))
    return {
        "shard": [r["shard"] for r in rows],
        "id": [r["id"] for r in rows],
        "status": [r["status"] for r in rows],
        "stage": [r["stage"] for r in rows],
    }


def _feature_table_or_errors(
    batch: dict[str, np.ndarray], idx: list[int], rows: list[dict], layout: FeatureLayout
) -> pa.Table | None:
    """The feature table of rows `idx`; a row whose values do not fit the schema becomes an
    error row (stage 'write') instead of failing the block with it."""
    try:
        return feature_table(batch, idx, layout)
    except Exception:  # noqa: BLE001 - find the bad row(s) below
        pass
    good = []
    for i in idx:
        try:
            feature_table(batch, [i], layout)
            good.append(i)
        except Exception as exc:  # noqa: BLE001
            rows[i].update(error_result(rows[i], "write", exc))
    return feature_table(batch, good, layout) if good else None


def feature_table(batch: dict[str, np.ndarray], idx: list[int], layout: FeatureLayout) -> pa.Table:
    schema = layout.arrow_schema()
    values = {}
    for f in schema:
        if isinstance(f.type, pa.FixedShapeTensorType):
            array = np.stack([np.asarray(batch[f.name][i]) for i in idx])
            values[f.name] = tensor_array(array, tuple(f.type.shape))
        elif f.name == "settings_hash":
            values[f.name] = pa.array([layout.settings_hash] * len(idx), f.type)
        elif f.name in ("family", "variant"):
            values[f.name] = pa.array([getattr(layout, f.name)] * len(idx), f.type)
        else:
            values[f.name] = pa.array([plain(batch[f.name][i]) for i in idx], f.type)
    return pa.table(values, schema=schema)
