"""Model specs: which family, size and sample rate a variant name means, and what it needs.

`selva` variants run SelVA's fine-tuned generators with the text-conditioned Synchformer;
`mmaudio_*` variants run MMAudio's own checkpoints with the plain Synchformer and CLIP frame
features. `tiny` variants use the same code with small sizes and random weights (tests, demo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .seqconfig import MIN_SYNC_DURATION, SequenceConfig, config_for_mode

if TYPE_CHECKING:  # the generator module imports torch; variant names must not need it
    from .model.generator import GeneratorConfig

# Widths of the tiny conditioning encoders (CLIP text/image width, TextSynch/Synchformer width,
# flan-T5 width); real models use 1024 / 768 / 768.
TINY_CLIP_DIM = 64
TINY_SYNC_DIM = 64
TINY_T5_DIM = 64

FAMILIES = ("selva", "mmaudio")


class UnknownVariantError(ValueError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"unknown variant {name!r}; known variants: {', '.join(VARIANTS)}")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "selva" | "mmaudio"
    size: str  # "tiny" | "small" | "medium" | "large"
    mode: str  # "16k" | "44k"
    v2: bool = False

    @property
    def is_tiny(self) -> bool:
        return self.size == "tiny"

    @property
    def sampling_rate(self) -> int:
        return 16000 if self.mode == "16k" else 44100

    @property
    def latent_dim(self) -> int:
        return 20 if self.mode == "16k" else 40

    @property
    def uses_text_sync(self) -> bool:
        """SelVA conditions its sync features on the prompt (T5 + TextSynch)."""
        return self.family == "selva"

    @property
    def uses_clip_frames(self) -> bool:
        """MMAudio feeds CLIP frame features; official SelVA uses the learned empty feature."""
        return self.family == "mmaudio"

    @property
    def generator_config(self) -> GeneratorConfig:
        from .model.generator import GeneratorConfig

        if self.is_tiny:
            return GeneratorConfig(
                latent_dim=self.latent_dim,
                hidden_dim=128,
                depth=3,
                fused_depth=1,
                num_heads=2,
                clip_dim=TINY_CLIP_DIM,
                sync_dim=TINY_SYNC_DIM,
                text_dim=TINY_CLIP_DIM,
            )
        hidden, heads, depth, fused = {
            "small": (448, 7, 12, 8),
            "medium": (896, 14, 12, 8),
            "large": (896, 14, 21, 14),
        }[self.size]
        return GeneratorConfig(
            latent_dim=self.latent_dim,
            hidden_dim=hidden,
            depth=depth,
            fused_depth=fused,
            num_heads=heads,
            v2=self.v2,
        )

    def sequence(self, duration: float = 8.0) -> SequenceConfig:
        """Sequence lengths the model samples a clip of `duration` seconds at: a clip shorter
        than one sync window is sampled at one window (0.64 s) and its track trimmed."""
        return config_for_mode(self.mode, max(float(duration), MIN_SYNC_DURATION))

    @property
    def generator_weights(self) -> str | None:
        """Catalog key of the generator checkpoint (None for tiny)."""
        if self.is_tiny:
            return None
        base = f"{self.size}_{self.mode}" + ("_v2" if self.v2 else "")
        return f"generator_{base}" if self.family == "selva" else f"mmaudio_{base}"

    @property
    def weight_keys(self) -> tuple[str, ...]:
        """Every catalog entry (files and hub snapshots) this variant needs for inference."""
        if self.is_tiny:
            return ()
        keys = [self.generator_weights]
        keys.append("textsynch" if self.family == "selva" else "synchformer")
        keys.append(f"vae_{self.mode}")
        keys.append("bigvgan_16k" if self.mode == "16k" else "bigvgan_v2_44k")
        keys.append("clip_dfn5b")
        if self.family == "selva":
            keys.append("flan_t5_base")
        return tuple(keys)


def _specs() -> dict[str, ModelSpec]:
    specs = [
        ModelSpec("tiny", "selva", "tiny", "16k"),
        ModelSpec("tiny_44k", "selva", "tiny", "44k"),
        ModelSpec("small_16k", "selva", "small", "16k"),
        ModelSpec("small_44k", "selva", "small", "44k"),
        ModelSpec("medium_44k", "selva", "medium", "44k"),
        ModelSpec("large_44k", "selva", "large", "44k"),
        ModelSpec("mmaudio_tiny", "mmaudio", "tiny", "16k"),
        ModelSpec("mmaudio_small_16k", "mmaudio", "small", "16k"),
        ModelSpec("mmaudio_small_44k", "mmaudio", "small", "44k"),
        ModelSpec("mmaudio_medium_44k", "mmaudio", "medium", "44k"),
        ModelSpec("mmaudio_large_44k", "mmaudio", "large", "44k"),
        ModelSpec("mmaudio_large_44k_v2", "mmaudio", "large", "44k", v2=True),
    ]
    return {s.name: s for s in specs}


VARIANTS: dict[str, ModelSpec] = _specs()


def get_spec(name: str | ModelSpec) -> ModelSpec:
    if isinstance(name, ModelSpec):
        return name
    spec = VARIANTS.get(name)
    if spec is None:
        raise UnknownVariantError(name)
    return spec
