"""Tensors that stay float32, value for value, when a module is cast to bf16 / fp16.

Derived tables (RoPE rotations, the timestep frequencies, STFT windows and filterbanks) and the
latent statistics are sensitive to rounding: a bf16 cos/sin table or frequency carries 3
significant digits. Converting back with `.float()` after `nn.Module._apply` would keep the
dtype but not the values (they were already rounded), so the tensors are set aside before the
cast and only moved to the new device after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def fp32_kept(module: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Around `super()._apply(fn)`: the named buffers / parameters of `module` come out of the
    cast in float32 with their exact values, on whatever device the cast moved them to."""
    saved = {}
    for name in names:
        t = getattr(module, name, None)
        if isinstance(t, torch.Tensor):
            saved[name] = t.detach()
    yield
    for name, old in saved.items():
        new = getattr(module, name)
        if old.is_meta or new.is_meta:  # no values to keep (built on meta, or moved there)
            value = new.detach().float()
        else:
            value = old.to(device=new.device, dtype=torch.float32)
        if isinstance(new, nn.Parameter):
            new.data = value
        else:
            setattr(module, name, value)
