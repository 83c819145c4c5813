"""TextSynch: SelVA's text-conditioned Synchformer video encoder (video_enc_sup_5.pth).

Per 16-frame window: MotionFormer patch tokens (8 slots x 196 patches) -> one cross-attention block
in which every video token attends to its item's projected T5 text (learned SUP tokens first) ->
per-slot spatial pooling -> 8 sync tokens. A clip of T frames at 25 fps gives S = (T-16)//8 + 1
windows and (B, 8S, D) sync features, segment-major.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from selva_core.checkpoint import StateSource, load_strict, read_state_dict
from selva_core.model.layers import MLP
from selva_core.model.motionformer import (
    MotionFormer,
    MotionFormerConfig,
    check_sync_frames,
    map_windows,
    window_chunk_for,
)
from selva_core.random_init import randomize_

# Only these prefixes are read from a checkpoint; anything else in it is dropped (as upstream).
TEXTSYNCH_PREFIXES = (
    "vfeat_extractor",
    "text_proj",
    "synch_text_cross_blocks",
    "sup_text_feat",
    "empty_string_feat",
)


@dataclass(frozen=True)
class TextSynchConfig:
    """Video tower sizes plus the text side. The cross block and `text_proj` run at the tower's
    width and head count, so the output sync features are `video.embed_dim` wide."""

    video: MotionFormerConfig = field(default_factory=MotionFormerConfig)
    text_dim: int = 768  # flan-t5-base hidden size
    num_sup_text_tokens: int = 5
    xattn_depth: int = 1
    window_chunk: int | None = None  # windows per forward pass; None = all at once

    @classmethod
    def depth1(cls, num_sup_text_tokens: int = 5, **kwargs) -> TextSynchConfig:
        """The published model (`get_my_textsynch('depth1')`): 768 wide, 12 heads, 12 blocks."""
        return cls(num_sup_text_tokens=num_sup_text_tokens, **kwargs)

    @classmethod
    def tiny(cls, width: int = 64, text_dim: int = 64, **kwargs) -> TextSynchConfig:
        """A few-MB model for tests and the demo (head dim 64 as in the real model)."""
        video = MotionFormerConfig(embed_dim=width, num_heads=max(1, width // 64), depth=2)
        return cls(video=video, text_dim=text_dim, **kwargs)

    @property
    def width(self) -> int:
        return self.video.embed_dim


class CrossAttention(nn.Module):
    """Video queries attend to text keys/values (no pre-norm on either side).

    q is `q_proj(x)` split (head, head_dim); `kv_proj` channels are interleaved (head, head_dim,
    {k, v}). q and k get a per-head RMSNorm with the torch default eps. The bool key mask is True
    for text tokens to attend to.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.q_norm = nn.RMSNorm(head_dim)
        self.k_norm = nn.RMSNorm(head_dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        h = self.num_heads
        q = self.q_norm(self.q_proj(x).view(n, length, h, -1).transpose(1, 2))
        kv = self.kv_proj(ctx).view(n, ctx.shape[1], h, -1, 2)
        k = self.k_norm(kv[..., 0].transpose(1, 2))
        v = kv[..., 1].transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx_mask[:, None, None, :])
        return out.transpose(1, 2).reshape(n, length, dim)


class CrossAttentionBlock(nn.Module):
    """x + norm1(linear1(attn(x, text))), then x + ffn(norm2(x)); LayerNorms with affine, eps 1e-5.

    Matches upstream `MMCrossAttentionBlock` with kernel 1 (Linear, SwiGLU MLP) and residual on.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self.linear1(self.attn(x, ctx, ctx_mask)))
        return x + self.ffn(self.norm2(x))


class TextSynch(nn.Module):
    """Text-conditioned sync-feature encoder. Parameter names are the checkpoint's."""

    def __init__(self, config: TextSynchConfig | None = None):
        super().__init__()
        cfg = config or TextSynchConfig()
        self.config = cfg
        self.window_chunk = cfg.window_chunk
        dim, video = cfg.width, cfg.video
        self.vfeat_extractor = MotionFormer(video)
        self.text_proj = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.SiLU(), MLP(dim, int(dim * video.mlp_ratio))
        )
        self.synch_text_cross_blocks = nn.ModuleList(
            CrossAttentionBlock(dim, video.num_heads, video.mlp_ratio)
            for _ in range(cfg.xattn_depth)
        )
        if cfg.num_sup_text_tokens > 0:
            self.sup_text_feat = nn.Parameter(torch.zeros(cfg.num_sup_text_tokens, cfg.text_dim))
        # The T5 feature of "" shipped with the weights (frozen); used for text dropout / CFG.
        self.empty_string_feat = nn.Parameter(torch.zeros(1, cfg.text_dim), requires_grad=False)
        self.reset_text_layers()

    @torch.no_grad()
    def reset_text_layers(self) -> None:
        """Upstream training init: Xavier Linears and, by zeroing the cross blocks' `norm1` and
        `ffn.w2`, cross blocks that start as the identity, so a fresh TextSynch on pretrained
        Synchformer weights starts out as plain Synchformer (useless for tests, see
        `random_textsynch`)."""
        for module in (*self.text_proj.modules(), *self.synch_text_cross_blocks.modules()):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.synch_text_cross_blocks:
            nn.init.zeros_(block.norm1.weight)
            nn.init.zeros_(block.norm1.bias)
            nn.init.zeros_(block.ffn.w2.weight)

    # ---- text side ---------------------------------------------------------------------------

    def prepend_sup_text_tokens(
        self, text_f: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, text_dim), (B, L) bool -> the learned SUP tokens first: (B, n_sup + L, ...)."""
        if self.config.num_sup_text_tokens <= 0:
            return text_f, text_mask
        b = text_f.shape[0]
        sup = self.sup_text_feat.to(device=text_f.device, dtype=text_f.dtype).expand(b, -1, -1)
        sup_mask = text_mask.new_ones(b, sup.shape[1])
        return torch.cat([sup, text_f], dim=1), torch.cat([sup_mask, text_mask], dim=1)

    def empty_text(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored empty-string T5 feature as a (B, 1, text_dim) batch with an all-True mask."""
        feat = self.empty_string_feat.unsqueeze(0).expand(batch, -1, -1)
        return feat, torch.ones(batch, 1, dtype=torch.bool, device=feat.device)

    # ---- video side --------------------------------------------------------------------------

    def encode_windows(
        self, clips: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """(n, C, 16, H, W) windows with their own projected text (n, L, D) -> (n, 8, D)."""
        tokens = self.vfeat_extractor.forward_tokens(clips)
        for block in self.synch_text_cross_blocks:
            tokens = block(tokens, text, text_mask)
        return self.vfeat_extractor.pool(tokens)

    def encode_video_with_sync(
        self,
        frames: torch.Tensor,
        text_f_with_sup: torch.Tensor,
        text_mask_with_sup: torch.Tensor,
        *,
        window_chunk: int | None = -1,
    ) -> torch.Tensor:
        """Frames (B, T, 3, 224, 224) in [-1, 1] at 25 fps, text from `prepend_sup_text_tokens`
        -> sync features (B, 8*S, D), S = (T-16)//8 + 1.

        Each window attends to its own item's text. Windows run `window_chunk` at a time
        (-1: `self.window_chunk`; None: all at once); the result does not depend on the chunk.
        Frames may stay on the CPU: each chunk is moved to the model's device and dtype. At real
        size in fp32 each window in a chunk adds about 110 MB of activations (CPU, inference).
        """
        check_sync_frames(frames, self.config.video)
        b = frames.shape[0]
        if text_f_with_sup.dim() != 3 or text_f_with_sup.shape[0] != b:
            raise ValueError(
                f"text features must be (B={b}, L, {self.config.text_dim}), "
                f"got {tuple(text_f_with_sup.shape)}"
            )
        if text_mask_with_sup.shape != text_f_with_sup.shape[:2]:
            raise ValueError(
                f"text mask shape {tuple(text_mask_with_sup.shape)} does not match text "
                f"features {tuple(text_f_with_sup.shape)}"
            )
        param = self.empty_string_feat
        text_f = text_f_with_sup.to(device=param.device, dtype=param.dtype)
        text = self.text_proj(text_f)  # once per item, then gathered per window
        mask = text_mask_with_sup.to(device=param.device, dtype=torch.bool)
        chunk = window_chunk_for(self.window_chunk, window_chunk)

        def encode(clips: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return self.encode_windows(clips, text[items], mask[items])

        return map_windows(
            frames, self.config.video, chunk, encode, device=param.device, dtype=param.dtype
        )

    def forward(
        self,
        frames: torch.Tensor,
        text_f: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        window_chunk: int | None = -1,
    ) -> torch.Tensor:
        """Raw T5 features (B, L, text_dim) + bool mask -> sync features (B, 8*S, D)."""
        text_f, text_mask = self.prepend_sup_text_tokens(text_f, text_mask)
        return self.encode_video_with_sync(frames, text_f, text_mask, window_chunk=window_chunk)


# ---- construction helpers --------------------------------------------------------------------


def load_textsynch(
    source: StateSource,
    config: TextSynchConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> TextSynch:
    """TextSynch from video_enc_sup_5.pth (path or state dict): only the official prefixes are
    kept, then the load is strict. Built on the meta device, so no time goes into an init that
    the checkpoint overwrites. Returns the model in eval mode on `device`."""
    with torch.device("meta"):
        model = TextSynch(config)
    load_strict(model, *read_state_dict(source), keep_prefixes=TEXTSYNCH_PREFIXES)
    return model.to(device).eval()


def random_textsynch(config: TextSynchConfig | None = None, seed: int = 0) -> TextSynch:
    """TextSynch with O(1) random weights (see `randomize_`), eval mode, for tests and the demo.

    The upstream init zeroes the 3-D patch embedding, the cross blocks' `norm1` and `ffn.w2`,
    so its output would ignore the pixels and the text.
    """
    model = TextSynch(config)
    randomize_(model, seed)
    return model.eval()
