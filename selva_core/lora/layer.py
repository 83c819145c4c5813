"""`LoRALinear`: one wrapper around a frozen `nn.Linear` holding any number of named adapters.

y = base(x) + sum_i k_i * s_i * B_i A_i drop_i(x), with s = alpha/r (alpha/sqrt(r) under rsLoRA)
and k the adapter's strength. The base stays at `<path>.base`; adapters live at
`<path>.lora_A.<name>` / `<path>.lora_B.<name>`. LoRA tensors keep their own dtype (fp32 by
default) when the model is cast, so a bf16 base trains fp32 adapters; device moves still apply.

A PiSSA adapter is trained the PEFT way: the base holds W - s*B0@A0 and (A, B) start at
(A0, B0). Its delta against the original W is s*(B@A - B0@A0), which is what gets saved, merged
at a strength, or edited by Spectral Surgery.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

INIT_MODES = ("standard", "pissa")


@dataclass(frozen=True)
class LoRAConfig:
    """How to build one adapter. `alpha=None` means 2*rank (the trainer default)."""

    rank: int = 16
    alpha: float | None = None
    targets: tuple[str, ...] = ("attn.qkv",)
    rslora: bool = False
    init: str = "standard"  # "standard" (A Kaiming, B zero) | "pissa"
    dropout: float = 0.0  # on the LoRA input only
    dtype: torch.dtype = torch.float32  # LoRA parameter dtype, independent of the base's
    pissa_niter: int | None = None  # None: full SVD; n: randomized SVD with n power iterations
    seed: int = 0  # A's Kaiming init and the randomized SVD; per layer, order-independent

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(self.targets.split()))
        else:
            object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0 (or None for 2*rank), got {self.alpha}")
        if not self.targets or any(not t or t.startswith(".") for t in self.targets):
            raise ValueError(f"targets must be non-empty dotted names, got {self.targets}")
        if self.init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {self.init!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.init == "pissa" and self.dropout > 0:
            # Dropout on the principal path would make the init differ from the base model.
            raise ValueError("PiSSA needs dropout 0: its adapter carries the principal weights")
        if not self.dtype.is_floating_point:
            raise ValueError(f"LoRA dtype must be floating point, got {self.dtype}")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank

    @property
    def scale(self) -> float:
        return lora_scale(self.rank, self.lora_alpha, self.rslora)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(alpha=self.lora_alpha, scale=self.scale, dtype=str(self.dtype).split(".")[-1])
        d["targets"] = list(self.targets)
        return d


def lora_scale(rank: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


@dataclass
class AdapterState:
    """Bookkeeping for one adapter inside one layer."""

    rank: int
    scale: float
    strength: float = 1.0
    merged: bool = False  # its delta currently lives inside base.weight
    pissa: bool = False  # base.weight holds W - scale * B0 @ A0 for this adapter
    config: LoRAConfig | None = None  # how it was applied (None when loaded from a file)
    info: dict = field(default_factory=dict)  # carried into saved metadata (file meta, surgery)


def linear_digest(weight: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """sha256 of a Linear's weights rounded to bf16, so fp32 and bf16 copies of the same
    checkpoint agree. None for tensors without data (meta device)."""
    h = hashlib.sha256()
    for t in (weight, bias):
        if t is None:
            h.update(b"none")
            continue
        if t.is_meta:
            return None
        t = t.detach().to("cpu", torch.bfloat16).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _keep_dtype(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """Wrap a Module._apply function so dtype casts only move the tensor's device."""

    def apply(t: torch.Tensor) -> torch.Tensor:
        probe = fn(torch.empty(0, dtype=t.dtype, device=t.device))
        return fn(t) if probe.dtype == t.dtype else t.to(device=probe.device)

    return apply


class _BufferDict(nn.Module):
    """Named persistent buffers (the frozen PiSSA init factors)."""

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._buffers[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.register_buffer(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self._buffers

    def __delitem__(self, name: str) -> None:
        del self._buffers[name]


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus named low-rank adapters with per-adapter scale and strength."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        self.base = base.requires_grad_(False)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.pissa_A0 = _BufferDict()
        self.pissa_B0 = _BufferDict()
        self.lora_dropout = nn.ModuleDict()
        self.adapters: dict[str, AdapterState] = {}
        # base.weight before the first merge, so unmerge is exact (not saved in state dicts).
        self.register_buffer("merge_backup", None, persistent=False)
        # Digest of the published base weights, taken before PiSSA or a merge edits them.
        self._original_digest: str | None = None

    # ---- the wrapped Linear -------------------------------------------------------------------

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def base_digest(self) -> str | None:
        """Digest of the original base weights, even while PiSSA or a merge has edited them."""
        if self._original_digest is not None:
            return self._original_digest
        return linear_digest(self.base.weight, self.base.bias)

    def reset_base_digest(self) -> None:
        """Forget the recorded digest (after new base weights were loaded)."""
        self._original_digest = None

    def _base_edited(self) -> None:
        if self._original_digest is None:
            self._original_digest = linear_digest(self.base.weight, self.base.bias)

    # ---- adapters -----------------------------------------------------------------------------

    def add_adapter(
        self,
        name: str,
        rank: int,
        scale: float,
        *,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
        requires_grad: bool = True,
    ) -> None:
        """Standard init: A Kaiming-uniform (a=sqrt(5), as nn.Linear), B zero, so the delta is 0."""
        if not name.isidentifier():
            raise ValueError(f"adapter name must be an identifier, got {name!r}")
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        device = self.base.weight.device
        a = torch.empty(rank, self.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        b = torch.zeros(self.out_features, rank)
        self.lora_A[name] = nn.Parameter(a.to(device, dtype), requires_grad=requires_grad)
        self.lora_B[name] = nn.Parameter(b.to(device, dtype), requires_grad=requires_grad)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapters[name] = AdapterState(rank=rank, scale=float(scale))

    def _state(self, name: str) -> AdapterState:
        try:
            return self.adapters[name]
        except KeyError:
            raise KeyError(
                f"no adapter {name!r} on this layer (have {list(self.adapters)})"
            ) from None

    def set_factors(self, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        """Replace (A, B), possibly with a new rank; keeps dtype, device and requires_grad."""
        st = self._state(name)
        if st.merged or st.pissa:
            raise RuntimeError(f"adapter {name!r} is merged or PiSSA-initialised; cannot replace")
        if a.shape[1] != self.in_features or b.shape[0] != self.out_features:
            raise ValueError(
                f"factors {tuple(a.shape)}/{tuple(b.shape)} do not fit a "
                f"{self.in_features}->{self.out_features} layer"
            )
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"A has rank {a.shape[0]} but B has rank {b.shape[1]}")
        old_a, old_b = self.lora_A[name], self.lora_B[name]
        self.lora_A[name] = nn.Parameter(
            a.detach().to(old_a.device, old_a.dtype).clone(), requires_grad=old_a.requires_grad
        )
        self.lora_B[name] = nn.Parameter(
            b.detach().to(old_b.device, old_b.dtype).clone(), requires_grad=old_b.requires_grad
        )
        st.rank = a.shape[0]

    def init_pissa(self, name: str, a0: torch.Tensor, b0: torch.Tensor) -> None:
        """Start adapter `name` at (A0, B0) and move s*B0@A0 out of the base (fp32 arithmetic)."""
        st = self._state(name)
        if any(s.merged for s in self.adapters.values()):
            raise RuntimeError("unmerge every adapter before a PiSSA init")
        if any(s.pissa for s in self.adapters.values()):
            raise RuntimeError("a layer holds at most one PiSSA adapter")
        if tuple(a0.shape) != (st.rank, self.in_features) or tuple(b0.shape) != (
            self.out_features,
            st.rank,
        ):
            raise ValueError(
                f"PiSSA factors {tuple(a0.shape)}/{tuple(b0.shape)} do not match rank {st.rank} "
                f"on a {self.in_features}->{self.out_features} layer"
            )
        if not isinstance(self.lora_dropout[name], nn.Identity):
            raise RuntimeError("PiSSA needs dropout 0 on its adapter")
        self._base_edited()
        param_a, param_b = self.lora_A[name], self.lora_B[name]
        # Use the factors as stored (after any cast) so the init reproduces W as closely as the
        # base dtype allows.
        a = a0.detach().to(param_a.device, param_a.dtype)
        b = b0.detach().to(param_b.device, param_b.dtype)
        w = self.base.weight
        principal = st.scale * (b.float() @ a.float()).to(w.device)
        w.data = (w.data.float() - principal).to(w.dtype)
        with torch.no_grad():
            param_a.copy_(a)
            param_b.copy_(b)
        self.pissa_A0[name] = a.clone()
        self.pissa_B0[name] = b.clone()
        st.pissa = True

    def set_strength(self, name: str, strength: float) -> None:
        st = self._state(name)
        merged = st.merged
        if merged:
            self.unmerge([name])
        st.strength = float(strength)
        if merged:
            self.merge([name])

    def delta_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A', B') with scale * B' @ A' = the trained delta against the ORIGINAL base weights.

        For PiSSA this is the rank-2r pair A' = [A; A0], B' = [B, -B0]."""
        self._state(name)
        a, b = self.lora_A[name].detach(), self.lora_B[name].detach()
        if self.adapters[name].pissa:
            a = torch.cat([a, self.pissa_A0[name]], dim=0)
            b = torch.cat([b, -self.pissa_B0[name]], dim=1)
        return a, b

    def delta_weight(self, name: str) -> torch.Tensor:
        """What this adapter adds on top of `base.weight` at its strength, fp32 (out, in)."""
        st = self._state(name)
        a, b = self.lora_A[name].detach().float(), self.lora_B[name].detach().float()
        delta = (st.scale * st.strength) * (b @ a)
        if st.pissa and st.strength != 1.0:
            a0, b0 = self.pissa_A0[name].float(), self.pissa_B0[name].float()
            delta = delta + (st.scale * (1.0 - st.strength)) * (b0 @ a0)
        return delta.to(self.base.weight.device)

    def _names(self, names: Iterable[str] | None) -> list[str]:
        names = list(self.adapters) if names is None else list(names)
        for n in names:
            self._state(n)
        return names

    @torch.no_grad()
    def merge(self, names: Iterable[str] | None = None, *, keep_copy: bool = True) -> None:
        """Fold adapters into base.weight (fp32 arithmetic) so inference runs one matmul.

        With `keep_copy` the pre-merge weight is kept (one extra copy of this layer's weight)
        so `unmerge` restores it bit for bit; otherwise unmerge subtracts, which drifts by a
        rounding step of the base dtype per cycle."""
        w = self.base.weight
        for n in self._names(names):
            st = self.adapters[n]
            if st.merged:
                continue
            self._base_edited()
            if keep_copy and not any(s.merged for s in self.adapters.values()):
                self.merge_backup = w.detach().clone()
            w.data = (w.data.float() + self.delta_weight(n)).to(w.dtype)
            st.merged = True

    @torch.no_grad()
    def unmerge(self, names: Iterable[str] | None = None) -> None:
        """Take merged adapters out of base.weight again (exact when merge kept a copy)."""
        w = self.base.weight
        names = [n for n in self._names(names) if self.adapters[n].merged]
        for n in names:
            self.adapters[n].merged = False
        if not names:
            return
        if self.merge_backup is not None:
            restored = self.merge_backup.float()
            for n, st in self.adapters.items():
                if st.merged:
                    restored = restored + self.delta_weight(n)
            w.data = restored.to(w.dtype)
            if not any(st.merged for st in self.adapters.values()):
                self.merge_backup = None
        else:
            for n in names:
                w.data = (w.data.float() - self.delta_weight(n)).to(w.dtype)

    @torch.no_grad()
    def pissa_to_delta(self, name: str) -> None:
        """Turn a trained PiSSA adapter into a plain rank-2r delta on the restored base W."""
        st = self._state(name)
        if not st.pissa:
            return
        if st.merged:
            self.unmerge([name])
        a, b = self.delta_factors(name)
        a0, b0 = self.pissa_A0[name].float(), self.pissa_B0[name].float()
        w = self.base.weight
        w.data = (w.data.float() + st.scale * (b0 @ a0).to(w.device)).to(w.dtype)
        del self.pissa_A0[name], self.pissa_B0[name]
        st.pissa = False
        self.set_factors(name, a, b)

    @torch.no_grad()
    def remove_adapter(self, name: str) -> None:
        """Drop an adapter; a PiSSA adapter first gives the principal part back to the base."""
        st = self._state(name)
        if st.merged:
            self.unmerge([name])
        if st.pissa:
            self.pissa_to_delta(name)
        del self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
        del self.adapters[name]

    # ---- module plumbing ----------------------------------------------------------------------

    def _apply(self, fn, recurse=True):
        # The base follows every cast; LoRA tensors follow device moves but keep their dtype.
        if recurse:
            self.base._apply(fn)
            keep = _keep_dtype(fn)
            for child in (self.lora_A, self.lora_B, self.pissa_A0, self.pissa_B0):
                child._apply(keep)
        return super()._apply(fn, recurse=False)  # merge_backup mirrors the base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for name, st in self.adapters.items():
            if st.merged or (st.strength == 0.0 and not st.pissa):
                continue
            a, b = self.lora_A[name], self.lora_B[name]
            h = x.to(a.dtype)
            d = F.linear(F.linear(self.lora_dropout[name](h), a), b) * (st.scale * st.strength)
            if st.pissa and st.strength != 1.0:
                # base holds W - s*B0A0: give back the principal part not covered by k*s*BA.
                a0, b0 = self.pissa_A0[name], self.pissa_B0[name]
                d = d + F.linear(F.linear(h, a0), b0) * (st.scale * (1.0 - st.strength))
            y = y + d.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        parts = [
            f"{n}: r={s.rank} scale={s.scale:g} k={s.strength:g}"
            + (" merged" if s.merged else "")
            + (" pissa" if s.pissa else "")
            for n, s in self.adapters.items()
        ]
        return f"in={self.in_features}, out={self.out_features}, adapters=[{', '.join(parts)}]"
