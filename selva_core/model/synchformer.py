"""MMAudio's sync-feature encoder: the Synchformer video tower alone (no text).

MMAudio reads `ext_weights/synchformer_state_dict.pth` (the full AudioSet Synchformer: video and
audio towers and the sync transformer), keeps only the `vfeat_extractor.*` keys and loads them
strictly. That is the same MotionFormer + per-slot pooling that TextSynch holds, without the text
cross-attention: (B, T, 3, 224, 224) frames -> (B, 8*S, 768), S = (T-16)//8 + 1.

Frame preprocessing differs from SelVA's only in geometry. Both sample at 25 fps, scale uint8 to
[0, 1] and normalise with mean = std = 0.5 to [-1, 1] (`normalize_sync_frames`). MMAudio resizes
the short side to 224 (bicubic) and centre-crops 224x224 (mmaudio/eval_utils.py `sync_transform`);
SelVA resizes straight to 224x224 with no crop, changing the aspect ratio.
"""

from __future__ import annotations

import torch
from torch import nn

from selva_core.checkpoint import StateSource, load_strict, read_state_dict
from selva_core.model.motionformer import (
    MotionFormer,
    MotionFormerConfig,
    map_tower,
    window_chunk_for,
)

SYNCHFORMER_PREFIXES = ("vfeat_extractor",)


class Synchformer(nn.Module):
    """The video tower of Synchformer as MMAudio uses it; keys `vfeat_extractor.*`."""

    def __init__(self, config: MotionFormerConfig | None = None, window_chunk: int | None = None):
        super().__init__()
        self.config = config or MotionFormerConfig()
        self.window_chunk = window_chunk
        self.vfeat_extractor = MotionFormer(self.config)

    def encode_video_with_sync(
        self, frames: torch.Tensor, *, window_chunk: int | None = -1
    ) -> torch.Tensor:
        """Frames (B, T, 3, 224, 224) in [-1, 1] at 25 fps -> (B, 8*S, D), segment-major.

        Windows run `window_chunk` at a time (-1: `self.window_chunk`; None: all at once).
        """
        chunk = window_chunk_for(self.window_chunk, window_chunk)
        return map_tower(self.vfeat_extractor, frames, chunk)

    def forward(self, frames: torch.Tensor, *, window_chunk: int | None = -1) -> torch.Tensor:
        return self.encode_video_with_sync(frames, window_chunk=window_chunk)


def load_synchformer(
    source: StateSource,
    config: MotionFormerConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> Synchformer:
    """Synchformer video tower from synchformer_state_dict.pth (path or state dict): only the
    `vfeat_extractor.*` keys are kept (the audio tower and the rest are dropped, as MMAudio does),
    then loaded strictly. Returns the model in eval mode on `device`."""
    with torch.device("meta"):
        model = Synchformer(config)
    load_strict(model, *read_state_dict(source), keep_prefixes=SYNCHFORMER_PREFIXES)
    return model.to(device).eval()
