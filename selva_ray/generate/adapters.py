"""LoRA adapters of a generation run: `FILE[@STRENGTH]` specs, read and fingerprinted once on
the driver (a bad file stops the job before any work); the actors load the same files."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

from ..io.rows import local_copy
from .config import GenerateInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adapter:
    path: str
    strength: float
    name: str
    sha256: str

    def describe(self) -> dict:
        return {"name": self.name, "strength": self.strength, "sha256": self.sha256}


def parse_adapter(text: str) -> tuple[str, float]:
    """`FILE[@STRENGTH]` -> (file, strength); a file name may itself contain '@'."""
    path, sep, tail = text.rpartition("@")
    if sep:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return text, 1.0


def resolve_adapters(specs: list[str]) -> list[Adapter]:
    """Read every adapter once on the driver (a bad file stops the job before any work) and
    fingerprint it; the actors load the same files."""
    from selva_core.lora.adapter_file import AdapterFormatError, read_adapter

    adapters = []
    for text in specs:
        path, strength = parse_adapter(text)
        if not math.isfinite(strength):
            raise GenerateInputError(f"adapter {text!r}: strength must be a finite number")
        try:
            with local_copy(path) as local:
                with open(local, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                meta = read_adapter(local).meta
        except (AdapterFormatError, OSError, ValueError) as exc:
            raise GenerateInputError(f"adapter {path}: {exc}") from exc
        name = path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        log.info("adapter %s at strength %g (rank %d, %s)", name, strength, meta.rank, meta.init)
        adapters.append(Adapter(path, strength, name, digest))
    return adapters
