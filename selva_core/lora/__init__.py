"""LoRA for the generator: rsLoRA scaling, faithful PiSSA init, safetensors adapter files that are
always plain deltas on the published base, strength and stacking, and Spectral Surgery.

Typical use::

    model = load_generator("small_16k")                 # published base, then LoRA
    applied = apply_lora(model, LoRAConfig(rank=16, init="pissa", rslora=True))
    ...train lora_parameters(model)...
    report = spectral_surgery(model, calibration_batches)
    save_adapter("out.safetensors", model, variant="small_16k", training={...})

    fresh = load_generator("small_16k")
    load_adapter(fresh, "out.safetensors", strength=0.7)
"""

from .adapter_file import (
    AdapterFile,
    AdapterFormatError,
    AdapterMeta,
    BaseMismatchWarning,
    TrainingRecord,
    adapter_from_model,
    convert_legacy,
    load_adapter,
    read_adapter,
    save_adapter,
)
from .apply import (
    AppliedLoRA,
    LoRATargetError,
    adapter_names,
    apply_lora,
    base_fingerprint,
    base_state_dict,
    compute_pissa_init,
    find_targets,
    load_base_weights,
    lora_config,
    lora_layers,
    lora_parameters,
    merge_lora,
    pissa_to_delta,
    remove_lora,
    set_strength,
    target_matches,
    unmerge_lora,
)
from .layer import LoRAConfig, LoRALinear, lora_scale
from .pissa import PissaFactors, principal_factors, randomized_svd
from .surgery import (
    LayerSurgery,
    SurgeryConfig,
    SurgeryReport,
    calibration_loss,
    factored_svd,
    spectral_surgery,
)

__all__ = [
    "AdapterFile",
    "AdapterFormatError",
    "AdapterMeta",
    "AppliedLoRA",
    "BaseMismatchWarning",
    "LayerSurgery",
    "LoRAConfig",
    "LoRALinear",
    "LoRATargetError",
    "PissaFactors",
    "SurgeryConfig",
    "SurgeryReport",
    "TrainingRecord",
    "adapter_from_model",
    "adapter_names",
    "apply_lora",
    "base_fingerprint",
    "base_state_dict",
    "calibration_loss",
    "compute_pissa_init",
    "convert_legacy",
    "factored_svd",
    "find_targets",
    "load_adapter",
    "load_base_weights",
    "lora_config",
    "lora_layers",
    "lora_parameters",
    "lora_scale",
    "merge_lora",
    "pissa_to_delta",
    "principal_factors",
    "randomized_svd",
    "read_adapter",
    "remove_lora",
    "save_adapter",
    "set_strength",
    "spectral_surgery",
    "target_matches",
    "unmerge_lora",
]
