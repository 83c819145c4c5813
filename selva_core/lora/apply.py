"""Put adapters into a model and manage them: target matching, apply/remove, merge, strength,
base fingerprints and loading published base weights into a wrapped model.

Targets match whole dotted name components at the end of a module path: `attn.qkv` matches
`joint_blocks.0.latent_block.attn.qkv`, `qkv` does not match `xqkv`, and `*` stands for one
component. Only `nn.Linear` modules are wrapped (ChannelLastConv1d is a Conv1d and is skipped).

Recommended order: load the published weights, then apply LoRA. `load_base_weights` also maps
published keys (`<path>.weight`) onto wrapped layers (`<path>.base.weight`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from ..model.generator import DERIVED_KEYS
from .layer import LoRAConfig, LoRALinear, linear_digest
from .pissa import PissaFactors, principal_factors

log = logging.getLogger(__name__)

# Linears whose weight is read directly by their owner (nn.MultiheadAttention), never via forward.
_UNWRAPPABLE = (nn.modules.linear.NonDynamicallyQuantizableLinear,)


class LoRATargetError(ValueError):
    """No module matched the requested targets."""


@dataclass(frozen=True)
class AppliedLoRA:
    """What `apply_lora` did: which layers got the adapter and which matches were skipped."""

    adapter: str
    config: LoRAConfig
    layers: tuple[str, ...]
    skipped: tuple[str, ...]  # matched by name but not an nn.Linear (e.g. Conv1d `linear1`)

    @property
    def count(self) -> int:
        return len(self.layers)


def target_matches(name: str, target: str) -> bool:
    """True when the last components of `name` equal (fnmatch) the components of `target`."""
    parts, want = name.split("."), target.split(".")
    if len(want) > len(parts):
        return False
    return all(fnmatchcase(p, w) for p, w in zip(parts[-len(want) :], want, strict=True))


def find_targets(model: nn.Module, targets: Iterable[str]) -> tuple[list[str], list[str]]:
    """(wrappable layer paths, matched-but-skipped paths) in module order."""
    targets = tuple(targets)
    inner = {f"{n}.base" for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    layers, skipped = [], []
    for name, module in model.named_modules():
        if not name or name in inner or not any(target_matches(name, t) for t in targets):
            continue
        wrappable = isinstance(module, LoRALinear) or (
            isinstance(module, nn.Linear) and not isinstance(module, _UNWRAPPABLE)
        )
        (layers if wrappable else skipped).append(name)
    return layers, skipped


def _layer_seed(seed: int, adapter: str, layer: str) -> int:
    """A per-layer seed that does not depend on wrapping order."""
    digest = hashlib.sha256(f"{seed}:{adapter}:{layer}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _base_linear(module: nn.Module) -> nn.Linear:
    return module.base if isinstance(module, LoRALinear) else module


def compute_pissa_init(
    model: nn.Module, config: LoRAConfig, *, device: torch.device | str = "cpu"
) -> dict[str, PissaFactors]:
    """PiSSA factors for every target layer, without touching the model.

    Compute on one process and broadcast the result (plain CPU tensors) to make every rank
    start from the same bits, then pass it to `apply_lora(..., pissa_init=...)`."""
    layers, _ = find_targets(model, config.targets)
    out = {}
    for name in layers:
        module = model.get_submodule(name)
        if isinstance(module, LoRALinear) and any(s.pissa for s in module.adapters.values()):
            raise RuntimeError(f"{name} already holds a PiSSA adapter")
        out[name] = principal_factors(
            _base_linear(module).weight,
            config.rank,
            config.scale,
            niter=config.pissa_niter,
            seed=_layer_seed(config.seed, "pissa", name),
            device=device,
        )
    return out


def apply_lora(
    model: nn.Module,
    config: LoRAConfig | None = None,
    *,
    adapter: str = "default",
    pissa_init: Mapping[str, PissaFactors] | None = None,
    requires_grad: bool = True,
    **overrides: Any,
) -> AppliedLoRA:
    """Add adapter `adapter` to every target Linear (keyword overrides edit `config`).

    Raises LoRATargetError when nothing matches. A layer that already holds other adapters
    gets this one beside them."""
    config = replace(config or LoRAConfig(), **overrides)
    layers, skipped = find_targets(model, config.targets)
    if not layers:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:5]
        raise LoRATargetError(
            f"no nn.Linear matches targets {list(config.targets)} (whole dotted components; "
            f"{len(skipped)} non-Linear matches skipped); Linears look like {linears}"
        )
    # Validate everything before the first layer changes, so a failure leaves the model as is.
    taken = [n for n in layers if adapter in getattr(model.get_submodule(n), "adapters", {})]
    if taken:
        raise ValueError(f"adapter {adapter!r} already exists on {taken[:3]}")
    if config.init == "pissa" and pissa_init is None:
        pissa_init = compute_pissa_init(model, config)
    if pissa_init is not None:
        missing = [n for n in layers if n not in pissa_init]
        if missing or config.init != "pissa":
            raise ValueError(f"pissa_init given for init={config.init!r} or misses {missing}")
        for name in layers:
            f = pissa_init[name]
            if abs(f.scale - config.scale) > 1e-9 * config.scale or f.rank != config.rank:
                raise ValueError(
                    f"{name}: PiSSA factors for rank {f.rank}, scale {f.scale} do not match "
                    f"rank {config.rank}, scale {config.scale}"
                )
    for name in layers:
        module = model.get_submodule(name)
        if not isinstance(module, LoRALinear):
            module = LoRALinear(module)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, module)
        gen = torch.Generator().manual_seed(_layer_seed(config.seed, adapter, name))
        module.add_adapter(
            adapter,
            config.rank,
            config.scale,
            dropout=config.dropout,
            dtype=config.dtype,
            generator=gen,
            requires_grad=requires_grad,
        )
        module.adapters[adapter].config = config
        if pissa_init is not None:
            module.init_pissa(adapter, pissa_init[name].a0, pissa_init[name].b0)
    log.info(
        "LoRA %r: %d layers (targets %s, rank %d, scale %.4g, init %s); %d non-Linear skipped",
        adapter,
        len(layers),
        " ".join(config.targets),
        config.rank,
        config.scale,
        config.init,
        len(skipped),
    )
    return AppliedLoRA(adapter, config, tuple(layers), tuple(skipped))


# ---- inspection ---------------------------------------------------------------------------------


def lora_layers(model: nn.Module, adapter: str | None = None) -> dict[str, LoRALinear]:
    """Wrapped layers by path; with `adapter`, only those holding it."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, LoRALinear) and (adapter is None or adapter in m.adapters)
    }


def adapter_names(model: nn.Module) -> list[str]:
    names: dict[str, None] = {}
    for m in lora_layers(model).values():
        names.update(dict.fromkeys(m.adapters))
    return list(names)


def _require(model: nn.Module, adapter: str) -> dict[str, LoRALinear]:
    layers = lora_layers(model, adapter)
    if not layers:
        raise KeyError(f"model has no adapter {adapter!r} (have {adapter_names(model)})")
    return layers


def lora_parameters(model: nn.Module, adapter: str | None = None) -> list[nn.Parameter]:
    """The trainable A/B parameters (all adapters, or one)."""
    params = []
    for m in lora_layers(model, adapter).values():
        for n in [adapter] if adapter else list(m.adapters):
            params += [m.lora_A[n], m.lora_B[n]]
    return params


def lora_config(model: nn.Module, adapter: str = "default") -> LoRAConfig | None:
    """The config an adapter was applied with (None for adapters loaded from files)."""
    return next(iter(_require(model, adapter).values())).adapters[adapter].config


# ---- state changes ------------------------------------------------------------------------------


def set_strength(model: nn.Module, strength: float, adapter: str = "default") -> None:
    """Scale an adapter's delta: k=1 is the trained model, k=0 skips the adapter, so the output
    is bit-identical to the base (a live PiSSA adapter, whose base holds W - s*B0@A0, gives the
    base back up to fp rounding). Merged adapters are re-merged at the new strength."""
    for m in _require(model, adapter).values():
        m.set_strength(adapter, strength)


def _each(model: nn.Module, adapters: list[str] | None):
    """(layer, the requested adapters it holds) for every wrapped layer."""
    for m in lora_layers(model).values():
        yield m, [a for a in m.adapters if adapters is None or a in adapters]


def merge_lora(
    model: nn.Module, adapters: Iterable[str] | None = None, *, keep_copy: bool = True
) -> None:
    """Fold adapters into the base weights for inference speed; `unmerge_lora` undoes it
    exactly while `keep_copy` holds a copy of each pre-merge weight (see LoRALinear.merge)."""
    adapters = None if adapters is None else list(adapters)
    for m, names in _each(model, adapters):
        m.merge(names, keep_copy=keep_copy)


def unmerge_lora(model: nn.Module, adapters: Iterable[str] | None = None) -> None:
    adapters = None if adapters is None else list(adapters)
    for m, names in _each(model, adapters):
        m.unmerge(names)


def pissa_to_delta(model: nn.Module, adapter: str = "default") -> None:
    """Restore the original base and hold a trained PiSSA adapter as its rank-2r delta."""
    for m in _require(model, adapter).values():
        m.pissa_to_delta(adapter)


def remove_lora(model: nn.Module, adapters: Iterable[str] | None = None) -> None:
    """Remove adapters; a layer left without any goes back to being its plain nn.Linear."""
    adapters = None if adapters is None else list(adapters)
    for m, names in list(_each(model, adapters)):
        for n in names:
            m.remove_adapter(n)
    for name, m in lora_layers(model).items():
        if not m.adapters:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, m.base)


# ---- base weights -------------------------------------------------------------------------------


def base_fingerprint(model: nn.Module, layers: Iterable[str] | None = None) -> str | None:
    """sha256 over the (original) base weights of `layers` (default: every wrapped layer),
    key-sorted, rounded to bf16 so fp32 and bf16 copies of a checkpoint agree. None on meta."""
    names = sorted(lora_layers(model) if layers is None else layers)
    h = hashlib.sha256()
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, LoRALinear):
            digest = module.base_digest()
        elif isinstance(module, nn.Linear):
            digest = linear_digest(module.weight, module.bias)
        else:
            raise TypeError(f"{name} is a {type(module).__name__}, not a Linear")
        if digest is None:
            return None
        h.update(f"{name}:{digest}\n".encode())
    return "sha256:" + h.hexdigest()


def _base_key_map(model: nn.Module) -> dict[str, str]:
    """Published key -> key inside the wrapped model, for every wrapped layer."""
    out = {}
    for name, m in lora_layers(model).items():
        for leaf in ("weight", "bias"):
            if getattr(m.base, leaf, None) is not None:
                out[f"{name}.{leaf}"] = f"{name}.base.{leaf}"
    return out


def load_base_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True
) -> None:
    """Load a published checkpoint (unwrapped key names) into a model that already has LoRA.

    Adapters keep their values. Refused while an adapter is merged or PiSSA-initialised,
    because those have edited the base this would overwrite."""
    layers = lora_layers(model)
    busy = [n for n, m in layers.items() if any(s.merged or s.pissa for s in m.adapters.values())]
    if busy:
        raise RuntimeError(f"unmerge / convert PiSSA adapters first; edited bases: {busy[:3]}")
    key_map = _base_key_map(model)
    mapped = {key_map.get(k, k): v for k, v in state_dict.items() if k not in DERIVED_KEYS}
    result = model.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if ".lora_" not in k and ".pissa_" not in k]
    if strict and (missing or result.unexpected_keys):
        raise RuntimeError(
            f"base weights do not fit: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}"
        )
    for m in layers.values():
        m.reset_base_digest()


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's base weights under published key names (no LoRA tensors)."""
    layers = lora_layers(model)
    busy = [n for n, m in layers.items() if any(s.merged or s.pissa for s in m.adapters.values())]
    if busy:
        raise RuntimeError(f"base weights are edited by merged/PiSSA adapters in {busy[:3]}")
    inverse = {v: k for k, v in _base_key_map(model).items()}
    return {
        inverse.get(k, k): v
        for k, v in model.state_dict().items()
        if ".lora_" not in k and ".pissa_" not in k
    }
