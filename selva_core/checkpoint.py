"""Reading checkpoints safely and loading them strictly, for every module of the model.

One place decides how a file is read (`weights.load_state_dict`: weights-only pickles or
safetensors) and what a mismatch reports: the file, and the missing, unexpected and mis-shaped
keys, so a wrong or truncated download is diagnosed from the message alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from .weights import WeightsError, load_state_dict

StateSource = str | os.PathLike | Mapping[str, torch.Tensor]


class CheckpointMismatchError(WeightsError, ValueError):
    """A checkpoint's keys or shapes do not match the module built for it."""


def read_state_dict(
    source: StateSource, *, key: str | None = None, trusted: bool = False
) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict and a name for messages, from a mapping or a .pth/.pt/.safetensors file.

    `key` selects a nested entry (e.g. the `generator` of a vocoder checkpoint).
    """
    if isinstance(source, Mapping):
        state, name = source, "<state dict>"
    else:
        name = str(Path(source))
        state = load_state_dict(source, trusted=trusted)
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            found = list(state)[:8] if isinstance(state, Mapping) else type(state).__name__
            raise CheckpointMismatchError(
                f"{name}: expected the weights under {key!r}, found {found}"
            )
        state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{name}: expected a state dict, got {type(state).__name__}")
    return dict(state), name


def _first(items: list[str], limit: int = 10) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


def check_state(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str, note: str = ""
) -> None:
    """Raise CheckpointMismatchError unless `state` has exactly the module's keys and shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{source}: does not match {type(module).__name__}{note}: "
            f"missing keys {_first(missing)}, unexpected keys {_first(unexpected)}, "
            f"shape mismatches {_first(shapes)}"
        )


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    keep_prefixes: Iterable[str] | None = None,
) -> nn.Module:
    """Check, then load strictly. A module built on the meta device adopts the tensors (no
    second copy in memory). `keep_prefixes` drops every other key first, as some official
    loaders do."""
    note = ""
    if keep_prefixes is not None:
        prefixes = tuple(keep_prefixes)
        state = {k: v for k, v in state.items() if k.startswith(prefixes)}
        note = f" (keys kept: {', '.join(prefixes)})"
    check_state(module, state, source, note)
    on_meta = any(t.is_meta for t in module.state_dict().values())
    module.load_state_dict(state, strict=True, assign=on_meta)
    return module
