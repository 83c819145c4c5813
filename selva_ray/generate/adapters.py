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


MAX_STRENGTH = 10.0  # |strength| beyond this is refused: no adapter is meant that far
USUAL_STRENGTH = (0.0, 2.0)  # outside this a strength works, with a warning


@dataclass(frozen=True)
class Adapter:
    path: str
    strength: float
    name: str
    sha256: str
    trained_for: str | None = None  # the variant the adapter was trained for, if not this one

    def describe(self) -> dict:
        d = {"name": self.name, "strength": self.strength, "sha256": self.sha256}
        if self.trained_for is not None:  # forced with --allow-base-mismatch: recorded
            d["base_mismatch"] = {"trained_for": self.trained_for}
        return d


def parse_adapter(text: str) -> tuple[str, float]:
    """`FILE[@STRENGTH]` -> (file, strength); a file name may itself contain '@'. A tail that
    is no number is part of the name, unless the name without it is a file that exists and
    the whole text is not: then the strength is bad (GenerateInputError)."""
    import os

    path, sep, tail = text.rpartition("@")
    if sep:
        try:
            strength = float(tail)
        except ValueError:
            if os.path.isfile(path) and not os.path.exists(text):
                raise GenerateInputError(
                    f"--adapter {text}: strength {tail!r} is not a number (FILE@STRENGTH, "
                    "e.g. @0.8)"
                ) from None
            return text, 1.0
        if not math.isfinite(strength) or abs(strength) > MAX_STRENGTH:
            raise GenerateInputError(
                f"--adapter {text}: strength must be a finite number in "
                f"[-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}], got {tail}"
            )
        if not USUAL_STRENGTH[0] <= strength <= USUAL_STRENGTH[1]:
            log.warning(
                "--adapter %s: strength %g is outside the usual %g..%g (recorded in the results)",
                path,
                strength,
                *USUAL_STRENGTH,
            )
        return path, strength
    return text, 1.0


def resolve_adapters(
    specs: list[str], variant: str, *, allow_base_mismatch: bool = False
) -> list[Adapter]:
    """Read every adapter once on the driver (a bad file stops the job before any work) and
    fingerprint it; the actors load the same files. An adapter trained for another variant
    is refused (its layers would merge into other weights), unless `allow_base_mismatch`:
    then it is merged and the mismatch recorded with it."""
    from selva_core.lora.adapter_file import AdapterFormatError, read_adapter

    adapters = []
    for text in specs:
        path, strength = parse_adapter(text)
        try:
            with local_copy(path) as local:
                with open(local, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                meta = read_adapter(local).meta
        except (AdapterFormatError, OSError, ValueError) as exc:
            raise GenerateInputError(f"adapter {path}: {exc}") from exc
        trained_for = meta.variant if meta.variant not in (None, variant) else None
        if trained_for is not None and not allow_base_mismatch:
            raise GenerateInputError(
                f"--adapter {path} was trained for variant {trained_for!r}, not {variant!r}; "
                f"use one trained for {variant}, or --allow-base-mismatch to merge it anyway"
            )
        name = path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        log.info("adapter %s at strength %g (rank %d, %s)", name, strength, meta.rank, meta.init)
        if trained_for is not None:
            log.warning("adapter %s: trained for %s, merged into %s", name, trained_for, variant)
        adapters.append(Adapter(path, strength, name, digest, trained_for))
    return adapters
