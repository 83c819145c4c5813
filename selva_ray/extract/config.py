"""The extract job's settings: one declaration each (flag, type, default, range, help)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import shared_settings as s
from .. import validate
from ..settings import SWITCH, opt

ENCODER = "encoder"


@dataclass
class ExtractConfig(s.BatchJobSettings):
    input: str = s.input_opt("catalog folder or manifest (path or URI)")
    output: str = s.output_opt()
    variant: str = s.variant_opt()
    device: str = s.device_opt()
    precision: str | None = s.precision_opt()
    weights_dir: str | None = s.weights_dir_opt()
    offline: bool = s.offline_opt()
    with_audio_latents: bool = opt(
        False,
        kind=SWITCH,
        help="also store the VAE posterior of each clip's audio track (for LoRA training)",
    )
    max_duration: float = s.max_duration_opt()
    storage_dtype: str = opt(
        "float16",
        choices=("float16", "bfloat16", "float32"),
        help="dtype of the stored features",
    )
    batch_size: int = opt(8, type=validate.int_range(1, 4096), help="clips per encoder call")
    actors: int | None = s.actors_opt(ENCODER)
    gpus_per_actor: float = s.gpus_per_actor_opt(ENCODER)
    actor_memory_gb: float | None = s.actor_memory_opt(ENCODER)
    allow_roots: list[str] | None = s.allow_roots_opt()
    window: float = s.window_opt()
    overlap: float = s.overlap_opt()
    mask_strength: float = s.mask_strength_opt()
    mask_paths: tuple[str, ...] = s.mask_paths_opt()
    ignore_rotation: bool = opt(
        False,
        kind=SWITCH,
        help="decode frames as stored, ignoring the display rotation of phone videos (as the "
        "official reader does); default: turn them upright",
    )
    # not flags
    frame_rule: str = "official"
    # Benchmarks only: build the encoders by hand (real sizes, random weights),
    # `factory(device, dtype, "encoder") -> Components`.
    components_factory: Callable | None = None


def check_weights(config: ExtractConfig) -> None:
    """The weight files an extraction loads (the encoders, the VAE with audio latents): all
    missing ones named at once, before Ray. The command calls it before its heavy imports, the
    job again when run from Python."""
    validate.check_variant(config.variant)
    if config.check_weights:
        validate.check_extract_weights(
            config.variant,
            config.weights_dir,
            offline=config.offline,
            with_vae=config.with_audio_latents,
        )
