"""Text/image conditioning encoders: CLIP (text tokens, frames) and flan-T5 (TextSynch text).

`load_clip` / `load_t5` return seeded random tiny encoders for tiny specs and the published models
otherwise, resolved through `WeightStore` (offline without files: `MissingWeightsError` naming the
path and the download command).

open_clip and transformers take seconds to import, so the encoder modules load lazily: importing
this package (e.g. for `prompts.validate_prompts` in a driver process) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import torch

from ..variants import TINY_CLIP_DIM, TINY_T5_DIM, ModelSpec, get_spec
from ..weights import WeightStore
from .prompts import PromptError, TokenCount, clean_prompt, validate_prompts

if TYPE_CHECKING:
    from .clip import ClipEncoder
    from .t5 import T5TextEncoder

CLIP_KEY = "clip_dfn5b"
T5_KEY = "flan_t5_base"

_LAZY = {
    "CLIP_MEAN": "clip",
    "CLIP_STD": "clip",
    "ClipEncoder": "clip",
    "TinyClipConfig": "clip",
    "load_open_clip": "clip",
    "normalize_frames": "clip",
    "save_clip_folder": "clip",
    "tiny_clip": "clip",
    "T5TextEncoder": "t5",
    "TinyT5Config": "t5",
    "load_t5_folder": "t5",
    "save_t5_folder": "t5",
    "tiny_t5": "t5",
}

__all__ = [
    "CLIP_KEY",
    "T5_KEY",
    "PromptError",
    "TokenCount",
    "clean_prompt",
    "load_clip",
    "load_t5",
    "validate_prompts",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_clip(
    spec: ModelSpec | str,
    store: WeightStore | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> ClipEncoder:
    """CLIP for a variant: tiny random (text and image width TINY_CLIP_DIM) or DFN5B."""
    from .clip import TinyClipConfig, load_open_clip, tiny_clip

    spec = get_spec(spec)
    if spec.is_tiny:
        cfg = TinyClipConfig(width=TINY_CLIP_DIM, embed_dim=TINY_CLIP_DIM)
        return tiny_clip(cfg, dtype=dtype, device=device)
    store = store or WeightStore()
    return load_open_clip(store.resolve(CLIP_KEY), dtype=dtype, device=device)


def load_t5(
    spec: ModelSpec | str,
    store: WeightStore | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> T5TextEncoder:
    """flan-T5 for a variant: tiny random (width TINY_T5_DIM) or google/flan-t5-base."""
    from .t5 import TinyT5Config, load_t5_folder, tiny_t5

    spec = get_spec(spec)
    if spec.is_tiny:
        return tiny_t5(TinyT5Config(d_model=TINY_T5_DIM), dtype=dtype, device=device)
    store = store or WeightStore()
    return load_t5_folder(store.resolve(T5_KEY), dtype=dtype, device=device)
