"""CLIP text and frame features (open_clip DFN5B ViT-H-14-384, or a tiny random model).

Text path, as official SelVA/MMAudio patch open_clip's ``encode_text``
(selva/model/utils/features_utils.py, ``patch_clip``): token embedding cast to the tower's dtype,
plus positional embedding, the causal text transformer, ``ln_final``, and then **every** one of the
77 token states is returned, each L2-normalised. No EOT pooling and no ``text_projection``, so the
width is the text transformer width (1024 for DFN5B), not the joint embed dim.

Image path (MMAudio family only; official SelVA feeds the learned empty feature instead):
``encode_image(normalize=True)`` on frames already resized to 384x384 and normalised with
`CLIP_MEAN`/`CLIP_STD`. The DFN5B config says image_size 378 with patch 14; a 384 input gives the
same 27x27 patch grid because the stride-14 patch conv ignores the last 6 pixels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP, convert_weights_to_lp
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from ..checkpoint import load_strict
from ..random_init import randomize_
from ..variants import TINY_CLIP_DIM
from ..weights import MissingWeightsError, WeightsError, load_state_dict, offline
from .prompts import TokenCount, clean_prompts, warn_truncated

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The tokenizer official SelVA uses ("same as ViT-H-14"); its BPE vocab ships with open_clip.
CLIP_TOKENIZER_NAME = "ViT-H-14-378-quickgelu"
CLIP_CONFIG_FILE = "open_clip_config.json"
CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Not in build.TINY_SEEDS (another module); fixed here so every process builds the same model.
TINY_CLIP_SEED = 1239

_LOW_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class TinyClipConfig:
    """A 2-layer open_clip CLIP with the real tokenizer's vocab and the real 384-px input."""

    width: int = TINY_CLIP_DIM  # text and vision width; text features are this wide
    embed_dim: int = TINY_CLIP_DIM  # image embedding width
    layers: int = 2
    heads: int = 2
    context_length: int = 77
    vocab_size: int = 49408
    image_size: int = 384
    patch_size: int = 32

    def model_cfg(self) -> dict:
        """The config in open_clip's ``model_cfg`` JSON format (as in open_clip_config.json)."""
        return {
            "embed_dim": self.embed_dim,
            "quick_gelu": True,
            "vision_cfg": {
                "image_size": self.image_size,
                "layers": self.layers,
                "width": self.width,
                "head_width": self.width // self.heads,
                "patch_size": self.patch_size,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": self.vocab_size,
                "width": self.width,
                "heads": self.heads,
                "layers": self.layers,
            },
        }


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")


def _causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu_(1)


def _construct(model_cfg: dict, dtype: torch.dtype, *, meta: bool) -> CLIP:
    cfg = dict(model_cfg)
    if cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise WeightsError("only open_clip CLIP models with the built-in text tower are supported")
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        raise WeightsError("timm vision towers are not supported")
    # open_clip picks LayerNormFp32 when built with a low-precision cast dtype.
    cast = dtype if dtype in _LOW_PRECISION else None
    if meta:
        with torch.device("meta"):
            return CLIP(**cfg, cast_dtype=cast)
    with torch.random.fork_rng(devices=[]):  # construction init must not move the global RNG
        return CLIP(**cfg, cast_dtype=cast)


def _finish(model: CLIP, dtype: torch.dtype, device: torch.device | str) -> CLIP:
    """Precision as open_clip's ``precision='bf16'|'fp16'``: low-precision matmul weights,
    LayerNorms (LayerNormFp32) and embeddings kept in fp32."""
    model.to(device=device)
    if dtype in _LOW_PRECISION:
        convert_weights_to_lp(model, dtype=dtype)
    return model.eval().requires_grad_(False)


class ClipEncoder(nn.Module):
    """open_clip model + tokenizer with the SelVA per-token text path and batched frames."""

    def __init__(self, model: CLIP, tokenizer: SimpleTokenizer, *, frame_batch_size: int = 64):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.frame_batch_size = frame_batch_size
        if tokenizer.context_length != model.context_length:
            raise ValueError(
                f"tokenizer context {tokenizer.context_length} != model {model.context_length}"
            )

    def train(self, mode: bool = True) -> ClipEncoder:
        """Always eval: a frozen feature extractor, as official FeaturesUtils.train does."""
        return super().train(False)

    # ---- properties -----------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def text_dim(self) -> int:
        """Per-token width of `encode_text` (the text transformer width)."""
        return int(self.model.ln_final.normalized_shape[0])

    @property
    def clip_dim(self) -> int:
        """Width of `encode_frames` (the joint image embedding)."""
        return int(self.model.visual.output_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.transformer.get_cast_dtype()

    @property
    def device(self) -> torch.device:
        return self.model.positional_embedding.device

    # ---- text -----------------------------------------------------------------------------

    def count_tokens(self, prompts: Sequence[str]) -> list[TokenCount]:
        """Tokens each cleaned prompt needs, start/end-of-text included, against 77."""
        return [
            TokenCount(p, len(self.tokenizer.encode(p)) + 2, self.context_length, "clip")
            for p in clean_prompts(prompts)
        ]

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, list[TokenCount]]:
        """(B, 77) token ids, zero-padded and truncated like open_clip, plus the counts."""
        counts = self.count_tokens(prompts)
        ids = self.tokenizer([c.prompt for c in counts], context_length=self.context_length)
        return ids, counts

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, 77, text_dim) per-token states after ln_final, each L2-normalised.

        Empty prompts are fine (CLIP("") is the official negative); policy on empty positives
        belongs to `prompts.validate_prompts`. Long prompts are truncated with a warning.
        """
        ids, counts = self.tokenize(prompts)
        warn_truncated(counts)
        if not counts:
            return torch.empty(
                0, self.context_length, self.text_dim, dtype=self.dtype, device=self.device
            )
        with torch.inference_mode():
            out = self._text_tokens(ids.to(self.device))
        return out.clone()  # outside inference mode: a normal tensor, usable in autograd

    def _text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(ids).to(cast) + m.positional_embedding.to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        return nn.functional.normalize(x, dim=-1)

    # ---- frames ---------------------------------------------------------------------------

    def encode_frames(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """(T, 3, H, W) or (B, T, 3, H, W) normalised frames -> (T, clip_dim) or (B, T, clip_dim).

        L2-normalised image embeddings, run `batch_size` frames at a time to bound memory.
        """
        if frames.ndim not in (4, 5) or frames.shape[-3] != 3:
            raise ValueError(f"expected (T,3,H,W) or (B,T,3,H,W) frames, got {tuple(frames.shape)}")
        lead = frames.shape[:-3]
        flat = frames.reshape(-1, *frames.shape[-3:])
        step = batch_size or self.frame_batch_size
        in_dtype = self.model.visual.conv1.weight.dtype
        chunks = []
        with torch.inference_mode():
            for i in range(0, flat.shape[0], step):
                x = flat[i : i + step].to(device=self.device, dtype=in_dtype)
                chunks.append(self.model.encode_image(x, normalize=True))
            out = (
                torch.cat(chunks)
                if chunks
                else torch.empty(0, self.clip_dim, dtype=in_dtype, device=self.device)
            )
        return out.clone().reshape(*lead, self.clip_dim)


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB frames (..., 3, H, W) -> CLIP-normalised, in the frames' dtype."""
    mean = torch.tensor(CLIP_MEAN, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    return (frames - mean) / std


def clip_tokenizer(context_length: int = 77) -> SimpleTokenizer:
    """The official tokenizer; open_clip ships its BPE vocab, so this works offline."""
    tok = open_clip.get_tokenizer(CLIP_TOKENIZER_NAME)
    if tok.context_length != context_length:
        tok.context_length = context_length
    return tok


def tiny_clip(
    config: TinyClipConfig | None = None,
    *,
    seed: int = TINY_CLIP_SEED,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> ClipEncoder:
    """A tiny CLIP with seeded O(1) random weights; nothing is downloaded.

    The causal attention mask is a non-persistent buffer, so `randomize_` leaves it alone.
    """
    _check_dtype(dtype)
    config = config or TinyClipConfig()
    model = _construct(config.model_cfg(), dtype, meta=False)
    randomize_(model, seed)
    return ClipEncoder(_finish(model, dtype, device), clip_tokenizer(config.context_length))


def save_clip_folder(encoder: ClipEncoder, folder: str | Path, model_cfg: dict) -> Path:
    """Write a model in the hub layout the real loader reads (config JSON + safetensors)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    }
    (folder / CLIP_CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    state = {
        k: v.detach().float().contiguous().cpu() for k, v in encoder.model.state_dict().items()
    }
    save_file(state, str(folder / CLIP_WEIGHT_FILES[0]))
    return folder


def _hub_folder(repo_id: str, cache_dir: str | Path | None) -> Path:
    """Local snapshot of an ``hf-hub:`` name (cache first; downloads only when online)."""
    from huggingface_hub import snapshot_download

    kw = {"allow_patterns": [CLIP_CONFIG_FILE, *CLIP_WEIGHT_FILES], "cache_dir": cache_dir}
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **kw))
    except Exception as exc:  # noqa: BLE001 - not cached; try the network unless offline
        if offline():
            raise MissingWeightsError(
                f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set ({exc})"
            ) from None
        return Path(snapshot_download(repo_id, **kw))


def load_open_clip(
    source: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
) -> ClipEncoder:
    """A real CLIP from a folder (``open_clip_config.json`` + weights) or an ``hf-hub:`` name
    (looked up in the Hugging Face cache, `cache_dir` or the default, before any download).

    Weights are read with `selva_core.weights.load_state_dict`: safetensors directly, ``.bin``
    with ``weights_only=True`` (no pickled code runs). The model is built on the meta device and
    the checkpoint tensors are assigned, so a 1B-parameter model is never initialised twice.
    """
    _check_dtype(dtype)
    if isinstance(source, str) and source.startswith("hf-hub:"):
        folder = _hub_folder(source.removeprefix("hf-hub:"), cache_dir)
    else:
        folder = Path(source)
    cfg_path = folder / CLIP_CONFIG_FILE
    if not cfg_path.is_file():
        raise MissingWeightsError(f"{cfg_path} does not exist (expected an open_clip hub folder)")
    raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    model_cfg = raw.get("model_cfg", raw)
    weights = next((folder / f for f in CLIP_WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise MissingWeightsError(f"{folder} has none of {', '.join(CLIP_WEIGHT_FILES)}")
    state = load_state_dict(weights)
    if "state_dict" in state and not isinstance(state["state_dict"], torch.Tensor):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}

    model = _construct(model_cfg, dtype, meta=True)
    if "logit_scale" in state:  # some exports store it as shape (1,)
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    load_strict(model, state, f"{weights} (config {cfg_path.name})")
    if model.attn_mask is not None:  # non-persistent buffer: not in the file, still on meta
        model.attn_mask = _causal_mask(model.context_length)
    leftover = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if leftover:
        raise WeightsError(f"{weights}: entries left uninitialised: {leftover[:5]}")
    tok = clip_tokenizer(model.context_length)
    return ClipEncoder(_finish(model, dtype, device), tok)
