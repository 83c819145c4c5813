"""Text/image conditioning encoders: CLIP (text tokens, frames) and flan-T5 (TextSynch text).

`load_clip` / `load_t5` (both `load_encoder`) return seeded random tiny encoders for tiny specs
and the published models otherwise, resolved through `WeightStore` (offline without files:
`MissingWeightsError` naming the path and the download command).

open_clip and transformers take seconds to import, so the encoder modules load lazily: importing
this package (e.g. for `prompts.validate_prompts` in a driver process) stays cheap.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import TYPE_CHECKING

import torch

from ..variants import ModelSpec, get_spec
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
    "load_encoder",
    "load_t5",
    "validate_prompts",
    *_LAZY,
]


# Per encoder: its weight key, its tiny builder (whose default config has the tiny variants'
# width) and its published loader, the two by their names in `_LAZY` (imported on first use).
_ENCODERS = {
    "clip": (CLIP_KEY, "tiny_clip", "load_open_clip"),
    "t5": (T5_KEY, "tiny_t5", "load_t5_folder"),
}


def _lazy(name: str):
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def __getattr__(name: str):
    if name in _LAZY:
        return _lazy(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_encoder(
    kind: str,
    spec: ModelSpec | str,
    store: WeightStore | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> ClipEncoder | T5TextEncoder:
    """The encoder `kind` ("clip" or "t5") for a variant: seeded random tiny ones for tiny specs
    (width TINY_CLIP_DIM / TINY_T5_DIM), else DFN5B / google/flan-t5-base through `store`."""
    key, tiny, published = _ENCODERS[kind]
    if get_spec(spec).is_tiny:
        return _lazy(tiny)(dtype=dtype, device=device)
    store = store or WeightStore()
    return _lazy(published)(store.resolve(key), dtype=dtype, device=device)


load_clip = partial(load_encoder, "clip")  # CLIP: tiny random or DFN5B
load_t5 = partial(load_encoder, "t5")  # flan-T5: tiny random or google/flan-t5-base
