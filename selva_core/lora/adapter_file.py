"""Adapter files: safetensors factors plus JSON metadata; legacy `.pt` conversion; loading onto
a model with a strength; stacking several adapters.

Every file is a plain delta against the ORIGINAL published base: tensors `<path>.lora_A`
(rank, in) and `<path>.lora_B` (out, rank) with delta = scale * B @ A. A PiSSA adapter is stored
as its rank-2r delta A' = [A; A0], B' = [B, -B0] (alpha doubled, or times sqrt 2 under rsLoRA, so
the scale is unchanged), so no file carries base weights and strength k always means
base + k * delta. The metadata key `selva_lora` holds JSON with a `format_version`.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..variants import VARIANTS
from ..weights import load_state_dict
from .apply import base_fingerprint, lora_layers
from .layer import LoRALinear, lora_scale

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = "selva_lora"
LEGACY_SUFFIXES = (".pt", ".pth", ".bin")
# A legacy PiSSA residual should differ from the base by exactly rank r; more left over than
# this (relative Frobenius norm) means the file was trained on different base weights.
LEGACY_RESIDUAL_TOLERANCE = 1e-2


class AdapterFormatError(ValueError):
    """The file is not a readable adapter, or does not fit the model."""


class BaseMismatchWarning(UserWarning):
    """The adapter was trained on different base weights than the model it is loaded onto."""


@dataclass(frozen=True)
class TrainingRecord:
    """Hyper-parameters a trained adapter is saved with; `extra` takes anything else
    (timestep sampler, CFG dropout, schedule, LoRA+ ratio, dataset id...)."""

    lr: float
    batch_size: int
    seed: int
    steps: int
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainingRecord:
        names = {f.name for f in fields(cls)} - {"extra"}
        missing = names - set(values)
        if missing:
            raise ValueError(f"training record needs {sorted(missing)}")
        extra = dict(values.get("extra", {}))
        extra.update({k: v for k, v in values.items() if k not in names | {"extra"}})
        return cls(**{k: values[k] for k in names}, extra=extra)


@dataclass(frozen=True)
class AdapterMeta:
    rank: int  # rank of the stored factors (2 * trained_rank for PiSSA)
    alpha: float  # alpha that gives `scale` at `rank`
    rslora: bool
    scale: float  # authoritative: delta = scale * B @ A
    init: str  # how it was trained: "standard" | "pissa"
    trained_rank: int
    targets: tuple[str, ...]
    family: str | None = None
    variant: str | None = None
    dropout: float = 0.0
    base_hash: str | None = None
    training: dict | None = None
    surgery: dict | None = None
    source: str = "selva-ray"  # or "legacy-pt"
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return json.dumps(d, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> AdapterMeta:
        d = json.loads(text)
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise AdapterFormatError(
                f"adapter format_version {version!r} is not supported (this build reads "
                f"<= {FORMAT_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        meta = cls(**{k: v for k, v in d.items() if k in known})
        object.__setattr__(meta, "targets", tuple(meta.targets))
        expected = lora_scale(meta.rank, meta.alpha, meta.rslora)
        if not math.isclose(expected, meta.scale, rel_tol=1e-6):
            raise AdapterFormatError(
                f"inconsistent metadata: rank {meta.rank}, alpha {meta.alpha}, rslora "
                f"{meta.rslora} give scale {expected}, file says {meta.scale}"
            )
        return meta


@dataclass
class AdapterFile:
    """An adapter in memory: per-layer factors (A, B) and its metadata."""

    meta: AdapterMeta
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def num_parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.factors.values())

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in sorted(self.factors):
            a, b = self.factors[name]
            out[f"{name}.lora_A"] = a.contiguous()
            out[f"{name}.lora_B"] = b.contiguous()
        return out

    def delta(self, layer: str) -> torch.Tensor:
        """Dense fp32 delta of one layer (for checks; never needed to apply the adapter)."""
        a, b = self.factors[layer]
        return self.meta.scale * (b.float() @ a.float())


def _file_alpha(scale: float, rank: int, rslora: bool) -> float:
    return scale * (math.sqrt(rank) if rslora else rank)


def _family(variant: str | None) -> str | None:
    spec = VARIANTS.get(variant) if variant else None
    return spec.family if spec else None


def adapter_from_model(
    model: nn.Module,
    adapter: str = "default",
    *,
    variant: str | None = None,
    training: TrainingRecord | Mapping[str, Any] | None = None,
    surgery: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> AdapterFile:
    """Collect adapter `adapter` as a plain delta file (PiSSA -> rank 2r); strength is not saved.

    `surgery` defaults to the record Spectral Surgery left on the adapter, if it ran."""
    layers = lora_layers(model, adapter)
    if not layers:
        raise KeyError(f"model has no adapter {adapter!r}")
    first = next(iter(layers.values())).adapters[adapter]
    scale, config, info = first.scale, first.config, first.info
    factors = {}
    for name, m in layers.items():
        st = m.adapters[adapter]
        if not math.isclose(st.scale, scale, rel_tol=1e-9):
            raise ValueError(f"{name}: scale {st.scale} differs from {scale} on other layers")
        a, b = m.delta_factors(adapter)
        factors[name] = tuple(t.detach().to("cpu", dtype or t.dtype).clone() for t in (a, b))
    ranks = {a.shape[0] for a, _ in factors.values()}
    if len(ranks) != 1:
        raise ValueError(f"adapter {adapter!r} has mixed ranks {sorted(ranks)}")
    rank = ranks.pop()
    if config is not None:
        rslora, init, trained_rank = config.rslora, config.init, config.rank
        targets, dropout = config.targets, config.dropout
    else:  # loaded from a file earlier
        rslora, init = info.get("rslora", False), info.get("init", "standard")
        trained_rank = info.get("trained_rank", rank)
        targets, dropout = tuple(info.get("targets", ())), info.get("dropout", 0.0)
    if isinstance(training, Mapping):
        training = TrainingRecord.from_mapping(training)
    if training is None and isinstance(info.get("training"), dict):
        training_dict = info["training"]
    else:
        training_dict = asdict(training) if training is not None else None
    variant = variant or info.get("variant")
    meta = AdapterMeta(
        rank=rank,
        alpha=_file_alpha(scale, rank, rslora),
        rslora=rslora,
        scale=scale,
        init=init,
        trained_rank=trained_rank,
        targets=tuple(targets),
        family=_family(variant) or info.get("family"),
        variant=variant,
        dropout=dropout,
        base_hash=base_fingerprint(model, list(layers)),
        training=training_dict,
        surgery=dict(surgery) if surgery is not None else info.get("surgery", {"ran": False}),
    )
    return AdapterFile(meta, factors)


def save_adapter(
    path: str | Path,
    source: nn.Module | AdapterFile,
    adapter: str = "default",
    **kwargs: Any,
) -> AdapterFile:
    """Write a `.safetensors` adapter from a model (see `adapter_from_model` for kwargs)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"adapters are written as .safetensors, got {path.name}")
    if isinstance(source, AdapterFile):
        file = source
    else:
        file = adapter_from_model(source, adapter, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(file.tensors(), str(path), metadata={METADATA_KEY: file.meta.to_json()})
    return file


# ---- reading ------------------------------------------------------------------------------------


def _pair_tensors(tensors: Mapping[str, torch.Tensor], where: str) -> dict:
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        layer, _, leaf = key.rpartition(".")
        if leaf not in ("lora_A", "lora_B") or not layer:
            raise AdapterFormatError(f"{where}: unexpected tensor {key!r}")
        factors.setdefault(layer, {})[leaf] = value
    out = {}
    for layer, pair in factors.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterFormatError(f"{where}: {layer} lacks lora_A or lora_B")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise AdapterFormatError(
                f"{where}: {layer} factors {tuple(a.shape)}/{tuple(b.shape)} do not pair up"
            )
        out[layer] = (a, b)
    return out


def _read_safetensors(path: Path) -> AdapterFile:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise AdapterFormatError(f"{path}: not a readable safetensors file ({exc})") from exc
    if METADATA_KEY not in header:
        raise AdapterFormatError(f"{path}: no {METADATA_KEY!r} metadata; not a selva adapter")
    try:
        meta = AdapterMeta.from_json(header[METADATA_KEY])
    except (ValueError, TypeError, AttributeError) as exc:  # bad JSON, fields, values
        reason = " ".join(str(exc).split())
        raise AdapterFormatError(
            f"{path}: unreadable {METADATA_KEY!r} metadata ({reason})"
        ) from exc
    factors = _pair_tensors(tensors, str(path))
    if any(a.shape[0] != meta.rank for a, _ in factors.values()):
        raise AdapterFormatError(f"{path}: factor ranks differ from metadata rank {meta.rank}")
    return AdapterFile(meta, factors)


def _legacy_residual_factors(
    w_res: torch.Tensor, w: torch.Tensor, rank: int, scale: float, layer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_d, B_d) with scale * B_d @ A_d = the rank-r part of W_res - W (old PiSSA files)."""
    d = w_res.float() - w.float()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    left = s[rank:].square().sum().sqrt() / s.square().sum().sqrt().clamp_min(1e-30)
    if left > LEGACY_RESIDUAL_TOLERANCE:
        warnings.warn(
            f"{layer}: the legacy residual weight differs from this base by more than rank "
            f"{rank} ({left:.3g} of the difference dropped); was it trained on other weights?",
            BaseMismatchWarning,
            stacklevel=4,
        )
    root = (s[:rank] / scale).sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


def convert_legacy(
    obj: Mapping[str, Any], base_model: nn.Module | None = None, *, where: str = "legacy adapter"
) -> AdapterFile:
    """Convert ComfyUI-SelVA's `{state_dict, meta}` (or a bare state dict) to a delta file.

    Old PiSSA files replace each base weight by W_res; the delta is rebuilt against
    `base_model`'s original weights as scale*B@A + (W_res - W), stored at rank 2r."""
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd, meta = obj["state_dict"], dict(obj.get("meta") or {})
    else:
        sd, meta = obj, {}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        for leaf in ("lora_A", "lora_B", "linear.weight", "linear.bias"):
            if key.endswith("." + leaf) and isinstance(value, torch.Tensor):
                groups.setdefault(key[: -len(leaf) - 1], {})[leaf] = value
                break
        else:
            log.warning("%s: ignoring unexpected key %s", where, key)
    pairs = _pair_tensors(
        {f"{k}.{leaf}": v for k, g in groups.items() for leaf, v in g.items() if "lora" in leaf},
        where,
    )
    if not pairs:
        raise AdapterFormatError(f"{where}: no lora_A/lora_B tensors")
    rank = next(iter(pairs.values()))[0].shape[0]
    if any(a.shape[0] != rank for a, _ in pairs.values()):
        raise AdapterFormatError(f"{where}: layers have different ranks")
    if "rank" in meta and int(meta["rank"]) != rank:
        log.warning("%s: meta rank %s but tensors have rank %d", where, meta["rank"], rank)
    alpha = meta.get("alpha")
    # The old loader defaulted alpha to rank; the old trainer stored alpha <= 0 to mean 2*rank.
    alpha = float(rank if alpha is None else (2 * rank if float(alpha) <= 0 else alpha))
    rslora = bool(meta.get("use_rslora", False))
    scale = lora_scale(rank, alpha, rslora)
    factors = {k: (a.float(), b.float()) for k, (a, b) in pairs.items()}
    has_base = [k for k, g in groups.items() if "linear.weight" in g]
    if has_base:
        if base_model is None:
            raise AdapterFormatError(
                f"{where}: a legacy PiSSA file stores residual base weights; pass the base "
                f"model so the delta against the original weights can be rebuilt"
            )
        for layer in has_base:
            module = base_model.get_submodule(layer)
            base = module.base if isinstance(module, LoRALinear) else module
            if isinstance(module, LoRALinear) and module._original_digest is not None:
                raise AdapterFormatError(f"{layer}: the model's base is edited; use a clean one")
            g = groups[layer]
            old_bias = g.get("linear.bias")
            if (
                old_bias is not None
                and base.bias is not None
                and not torch.allclose(old_bias.float(), base.bias.float(), atol=1e-3)
            ):
                log.warning("%s: legacy bias differs from the base; bias change dropped", layer)
            a_d, b_d = _legacy_residual_factors(g["linear.weight"], base.weight, rank, scale, layer)
            a, b = factors[layer]
            factors[layer] = (torch.cat([a, a_d.cpu()]), torch.cat([b, b_d.cpu()], dim=1))
    file_rank = next(iter(factors.values()))[0].shape[0]
    target = meta.get("target", meta.get("target_suffixes", "attn.qkv"))
    targets = tuple(target.split()) if isinstance(target, str) else tuple(target)
    variant = meta.get("variant")
    known = {"rank", "alpha", "use_rslora", "init_mode", "target", "variant", "lora_dropout"}
    steps = meta.get("steps")
    file_meta = AdapterMeta(
        rank=file_rank,
        alpha=_file_alpha(scale, file_rank, rslora),
        rslora=rslora,
        scale=scale,
        init=str(meta.get("init_mode", "pissa" if has_base else "standard")),
        trained_rank=rank,
        targets=targets,
        family=_family(variant) or "selva",
        variant=variant,
        dropout=float(meta.get("lora_dropout", 0.0)),
        training={"steps": steps, "extra": {k: v for k, v in meta.items() if k not in known}},
        source="legacy-pt",
    )
    return AdapterFile(file_meta, factors)


def read_adapter(path: str | Path, *, base_model: nn.Module | None = None) -> AdapterFile:
    """Read a `.safetensors` adapter, or convert a legacy `.pt` one (weights_only, no pickles;
    legacy PiSSA files need `base_model`)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in LEGACY_SUFFIXES:
        obj = load_state_dict(path, trusted=False)  # weights_only=True; pickles are refused
        if not isinstance(obj, Mapping):
            raise AdapterFormatError(f"{path}: expected a dict, got {type(obj).__name__}")
        return convert_legacy(obj, base_model, where=str(path))
    raise AdapterFormatError(f"{path}: unknown adapter file type {path.suffix!r}")


# ---- applying -----------------------------------------------------------------------------------


def load_adapter(
    model: nn.Module,
    source: str | Path | AdapterFile,
    *,
    adapter: str = "default",
    strength: float = 1.0,
    check_base: bool = True,
    dtype: torch.dtype = torch.float32,
    requires_grad: bool = False,
) -> AdapterFile:
    """Add a saved adapter to `model` as `adapter` at `strength` (0 = exactly the base model).

    Call again with another name to stack adapters. Warns (BaseMismatchWarning) when the
    model's base weights differ from those the adapter was trained on."""
    file = source if isinstance(source, AdapterFile) else read_adapter(source, base_model=model)
    modules = {}
    for layer, (a, b) in file.factors.items():
        try:
            module = model.get_submodule(layer)
        except AttributeError as exc:
            raise AdapterFormatError(f"model has no layer {layer} for this adapter") from exc
        linear = module.base if isinstance(module, LoRALinear) else module
        if not isinstance(linear, nn.Linear):
            raise AdapterFormatError(f"{layer} is a {type(linear).__name__}, not an nn.Linear")
        if (b.shape[0], a.shape[1]) != (linear.out_features, linear.in_features):
            raise AdapterFormatError(
                f"{layer}: adapter is {a.shape[1]}->{b.shape[0]}, layer is "
                f"{linear.in_features}->{linear.out_features} (another variant?)"
            )
        if isinstance(module, LoRALinear) and adapter in module.adapters:
            raise ValueError(f"{layer} already holds an adapter named {adapter!r}")
        modules[layer] = module
    if check_base and file.meta.base_hash:
        found = base_fingerprint(model, list(file.factors))
        if found is not None and found != file.meta.base_hash:
            warnings.warn(
                f"adapter was trained on base {file.meta.base_hash[:19]}..., this model's "
                f"targeted weights hash to {found[:19]}... (variant {file.meta.variant}); "
                f"loading anyway",
                BaseMismatchWarning,
                stacklevel=2,
            )
    info = json.loads(file.meta.to_json())
    for layer, (a, b) in file.factors.items():
        module = modules[layer]
        if not isinstance(module, LoRALinear):
            module = LoRALinear(module)
            parent, _, leaf = layer.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, module)
        module.add_adapter(
            adapter,
            a.shape[0],
            file.meta.scale,
            dtype=dtype,
            generator=torch.Generator().manual_seed(0),  # overwritten; keeps global RNG untouched
            requires_grad=requires_grad,
        )
        module.set_factors(adapter, a, b)
        module.adapters[adapter].info = info
        module.set_strength(adapter, strength)
    return file
