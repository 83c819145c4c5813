"""The feature-encoder stage shared by extract and generate: a callable-class actor that loads
the encoders once and turns decoded clips into features (one row per clip, tensors at the
layout's fixed shapes)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from selva_core.pipeline import fit_length

from ..io.feature_schema import FeatureLayout, as_tensor, to_storage
from ..io.rows import batch_rows, error_result
from .decode import CLIP_COLUMNS


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
                    sync_frames=as_tensor(row["sync_frames"]),
                    clip_frames=as_tensor(row["clip_frames"]),
                    audio=as_tensor(row["audio"]) if row["has_audio"] else None,
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


def _tensors(f, layout: FeatureLayout) -> dict[str, torch.Tensor]:
    tensors = {"sync_f": f.sync_f, "text_f": f.text_f}
    if layout.clip_len:
        tensors["clip_f"] = f.clip_f
    if layout.latent_len and f.latent is not None:
        tensors["latent_mean"] = f.latent.mean
        tensors["latent_std"] = f.latent.std
    return tensors
