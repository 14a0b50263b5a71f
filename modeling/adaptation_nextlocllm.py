"""Which backbone parameters train (`config.adaptation`): the paper's norms, LoRA adapters, all, or none.

Applied after construction and again after `from_pretrained`, because loading materializes fresh parameters, all
trainable.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .configuration_nextlocllm import NextLocLLMConfig


def inject_lora(backbone: nn.Module, config: NextLocLLMConfig) -> None:
    """Wrap the backbone's target projections with PEFT LoRA adapters (`x.weight` becomes `x.base_layer.weight`)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = config.llm_config.model_type
    targets = config.lora_target_modules or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        raise ValueError(f"lora_target_modules is required for backbone type {model_type!r}")
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(targets),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2 stores its projections as Conv1D (in, out)
    )
    inject_adapter_in_model(lora_config, backbone)


def module_trains(backbone: nn.Module, module_name: str, module: nn.Module, mode: str) -> bool:
    """Whether the parameters directly owned by a backbone module train under adaptation `mode`."""
    if mode == "full":
        return True
    if mode == "lora":
        return "lora_" in module_name
    if mode == "norms":
        is_norm = isinstance(module, nn.LayerNorm) or "RMSNorm" in type(module).__name__
        is_position_table = isinstance(module, nn.Embedding) and module is not backbone.get_input_embeddings()
        return is_norm or is_position_table
    return False  # frozen


def apply_adaptation(backbone: nn.Module, mode: str) -> None:
    for module_name, module in backbone.named_modules():
        trains = module_trains(backbone, module_name, module, mode)
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(trains)


def load_backbone_weights(backbone: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy pretrained backbone weights in, mapping onto LoRA-wrapped layers (`x.weight` -> `x.base_layer.weight`)."""
    own_keys = set(backbone.state_dict())
    remapped = {}
    for key, value in state_dict.items():
        if key not in own_keys:
            module_path, _, leaf = key.rpartition(".")
            key = f"{module_path}.base_layer.{leaf}"
        remapped[key] = value
    missing, unexpected = backbone.load_state_dict(remapped, strict=False)
    missing = [key for key in missing if "lora_" not in key]
    if missing or unexpected:
        raise ValueError(f"backbone weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")


__all__ = ["inject_lora", "module_trains", "apply_adaptation", "load_backbone_weights"]
