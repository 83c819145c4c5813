"""Deterministic random weights that keep every activation O(1).

The official initialisation zeroes adaLN/final layers and parts of TextSynch, which makes outputs
identically zero or ignore their inputs: useless for the `tiny` demo and for tests. This draws every
state-dict entry from one seeded generator, with the scheme the golden fixtures used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

# A rule may return a tensor to use for an entry, or None to fall through to the defaults.
Rule = Callable[[str, torch.Tensor, torch.Generator], "torch.Tensor | None"]

_NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d)


def _owner_types(module: nn.Module) -> dict[str, nn.Module]:
    owners = {}
    for mod_name, mod in module.named_modules():
        for p_name, _ in list(mod.named_parameters(recurse=False)) + list(
            mod.named_buffers(recurse=False)
        ):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    return owners


def fan_in(name: str, shape: torch.Size, owner: nn.Module | None) -> int:
    if isinstance(owner, nn.ConvTranspose1d):
        return owner.in_channels * owner.kernel_size[0] // owner.stride[0]
    return math.prod(shape[1:])


@torch.no_grad()
def randomize_(
    module: nn.Module,
    seed: int,
    *,
    rules: Iterable[Rule] = (),
    keep: Callable[[str], bool] = lambda name: False,
) -> nn.Module:
    """Overwrite every state-dict entry of `module` in place, in state-dict order.

    Defaults: >=2-D weights ~ N(0, 1/fan_in); biases ~ N(0, 0.05^2); norm weights ~ 1 + N(0, 0.1^2);
    anything else (tokens, positional embeddings) ~ N(0, 0.5^2). `keep(name)` leaves deterministic
    buffers (filterbanks, anti-alias filters, data statistics) untouched.
    """
    gen = torch.Generator().manual_seed(seed)
    owners = _owner_types(module)
    rules = tuple(rules)
    for name, tensor in module.state_dict(keep_vars=True).items():
        if keep(name) or not tensor.is_floating_point():
            continue
        shape = tensor.shape
        value = None
        for rule in rules:
            value = rule(name, tensor, gen)
            if value is not None:
                break
        if value is None:
            owner = owners.get(name)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                value = torch.randn(shape, generator=gen) * 0.05
            elif isinstance(owner, _NORMS) and leaf == "weight":
                value = 1 + torch.randn(shape, generator=gen) * 0.1
            elif len(shape) >= 2 and ("weight" in leaf or leaf.endswith("proj_weight")):
                std = 1.0 / math.sqrt(max(1, fan_in(name, shape, owner)))
                value = torch.randn(shape, generator=gen) * std
            else:
                value = torch.randn(shape, generator=gen) * 0.5
        tensor.data.copy_(value.to(dtype=tensor.dtype).reshape(shape))
    return module
