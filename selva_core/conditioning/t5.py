"""flan-T5 encoder features for TextSynch (or a tiny random T5 with the file-free ByT5 tokenizer).

Matches official SelVA ``FeaturesUtils.encode_text_t5`` (selva/model/utils/features_utils.py):
tokenize with max_length = the tokenizer's model_max_length (512 for flan-t5-base), padding to the
longest prompt, truncation; run ``T5EncoderModel`` with the attention mask and return
``last_hidden_state`` (B, L, d) with the mask as bool (B, L).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, ByT5Tokenizer, T5Config, T5EncoderModel

from ..random_init import randomize_
from ..variants import TINY_T5_DIM
from ..weights import MissingWeightsError, WeightsError
from .prompts import PromptError, TokenCount, clean_prompts, warn_truncated

log = logging.getLogger(__name__)

T5_MAX_LENGTH = 512
# Not in build.TINY_SEEDS (another module); fixed here so every process builds the same model.
TINY_T5_SEED = 1240


@dataclass(frozen=True)
class TinyT5Config:
    """A 2-layer gated-GELU T5 encoder (flan-T5's layout) over ByT5's 384-token byte vocab."""

    d_model: int = TINY_T5_DIM
    d_kv: int = 32
    d_ff: int = 128
    num_layers: int = 2
    num_heads: int = 2
    vocab_size: int = 384

    def t5_config(self) -> T5Config:
        return T5Config(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            d_kv=self.d_kv,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_decoder_layers=self.num_layers,
            num_heads=self.num_heads,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")


def _finish(model: T5EncoderModel, dtype: torch.dtype, device: torch.device | str):
    """Cast as transformers' from_pretrained(dtype=...) does: T5LayerNorm keeps its own fp32
    variance; for fp16 only, the `_keep_in_fp32_modules` (the FFN ``wo``) stay fp32."""
    model.to(device=device, dtype=dtype)
    if dtype == torch.float16:
        keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
        for name, module in model.named_modules():
            if keep and name.rsplit(".", 1)[-1] in keep:
                module.to(torch.float32)
    return model.eval().requires_grad_(False)


class T5TextEncoder(nn.Module):
    """T5 encoder + tokenizer returning padded hidden states and a bool mask."""

    def __init__(self, model: T5EncoderModel, tokenizer, *, max_length: int = T5_MAX_LENGTH):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    def train(self, mode: bool = True) -> T5TextEncoder:
        """Always eval (flan-T5 has dropout 0.1), as official FeaturesUtils.train does."""
        return super().train(False)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def count_tokens(self, prompts: Sequence[str]) -> list[TokenCount]:
        """Tokens each cleaned prompt needs (``</s>`` included) against max_length."""
        cleaned = clean_prompts(prompts)
        if not cleaned:
            return []
        # verbose=False: the length check is ours (warn_truncated), not the tokenizer's warning.
        ids = self.tokenizer(cleaned, truncation=False, verbose=False)["input_ids"]
        return [
            TokenCount(p, len(i), self.max_length, "t5") for p, i in zip(cleaned, ids, strict=True)
        ]

    def encode(
        self, prompts: Sequence[str], *, allow_empty: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last_hidden_state (B, L, d), mask bool (B, L)); L = longest prompt, at most 512.

        T5 features only feed TextSynch with the positive prompt (the negative's are unused), so
        an empty prompt is a `PromptError` unless `allow_empty`. Rows do not depend on what else
        is in the batch: padding keys are masked out.
        """
        counts = self.count_tokens(prompts)
        if not allow_empty:
            for raw, c in zip(prompts, counts, strict=True):
                if not c.prompt:
                    raise PromptError(raw, "empty prompt; the T5/TextSynch path needs text")
        warn_truncated(counts)
        if not counts:
            empty = torch.empty(0, 0, self.dim, dtype=self.dtype, device=self.device)
            return empty, torch.empty(0, 0, dtype=torch.bool, device=self.device)
        batch = self.tokenizer(
            [c.prompt for c in counts],
            max_length=self.max_length,
            padding=True,
            truncation=True,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden.clone(), (mask == 1).clone()


def _t5_rules(config: T5Config):
    """Norm weights near 1 (T5LayerNorm is no nn.LayerNorm) and q scaled as T5's own init,
    since T5 attention has no 1/sqrt(d) factor."""

    def rule(name: str, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        if name.endswith("layer_norm.weight"):
            return 1 + torch.randn(t.shape, generator=gen) * 0.1
        if name.endswith(".q.weight"):
            return torch.randn(t.shape, generator=gen) / math.sqrt(config.d_model * config.d_kv)
        return None

    return rule


def tiny_t5(
    config: TinyT5Config | None = None,
    *,
    seed: int = TINY_T5_SEED,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> T5TextEncoder:
    """A tiny T5 encoder with seeded O(1) random weights and ByT5's file-free tokenizer."""
    _check_dtype(dtype)
    cfg = (config or TinyT5Config()).t5_config()
    with torch.random.fork_rng(devices=[]):  # construction init must not move the global RNG
        model = T5EncoderModel(cfg)
    randomize_(model, seed, rules=[_t5_rules(cfg)])
    tokenizer = ByT5Tokenizer(model_max_length=T5_MAX_LENGTH)
    return T5TextEncoder(_finish(model, dtype, device), tokenizer)


def load_t5_folder(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> T5TextEncoder:
    """The real encoder from a local hub folder (config.json, tokenizer files, weights).

    safetensors is used when present; a ``pytorch_model.bin`` is read by transformers with
    ``weights_only=True``. Nothing is fetched: the folder must be complete.
    """
    _check_dtype(dtype)
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MissingWeightsError(f"{folder / 'config.json'} does not exist (expected a T5 folder)")
    has_st = (folder / "model.safetensors").is_file()
    if not has_st and not (folder / "pytorch_model.bin").is_file():
        raise MissingWeightsError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
    try:
        model = T5EncoderModel.from_pretrained(
            folder, dtype=torch.float32, use_safetensors=has_st, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except OSError as exc:
        raise WeightsError(f"could not load T5 from {folder}: {exc}") from exc
    max_length = min(T5_MAX_LENGTH, int(getattr(tokenizer, "model_max_length", T5_MAX_LENGTH)))
    return T5TextEncoder(_finish(model, dtype, device), tokenizer, max_length=max_length)


def save_t5_folder(encoder: T5TextEncoder, folder: str | Path) -> Path:
    """Write model + tokenizer in the hub layout `load_t5_folder` reads (tests, offline mirrors)."""
    folder = Path(folder)
    encoder.model.save_pretrained(folder, safe_serialization=True)
    encoder.tokenizer.save_pretrained(folder)
    return folder
