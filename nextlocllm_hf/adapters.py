"""LoRA adapters the PEFT way: a `--adaptation lora` model split into a base and a PEFT adapter.

We go through PEFT's own `PeftModel` API rather than transformers' `add_adapter` / `load_adapter`: transformers
5.24's PEFT integration requires peft >= 0.22, 0.21.2 is the newest peft the package registry serves, and an older
transformers would undo the rest of the stack; `PeftModel` is also what that integration calls underneath.

A LoRA model trains with its adapters injected into the backbone and exports whole (`model.safetensors` holds the
LoRA weights). `export_lora_adapter` splits it in two:

- the **base**: the same architecture without LoRA (`adaptation="frozen"`), the pretrained backbone weights, the
  encoded prompt and POI descriptions and the model's cities, with the model's own layers as newly initialized. It
  is an ordinary model folder (`nextlocllm-hub push-model`); every adapter trained on that architecture fits it.
- the **adapter**: PEFT's `adapter_config.json` and `adapter_model.safetensors`: the LoRA weights and, in
  `modules_to_save`, every layer of the model's own (record embedding, POI projections, query token, heads), which
  training changed and the base does not have.

`PeftModel.from_pretrained(AutoModel.from_pretrained(base), adapter)` then predicts exactly as the whole export.
`nextlocllm_hf.hub.push_adapter` (`nextlocllm-hub push-adapter`) pushes an adapter folder, as every push is made there.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CARD_NAME = "README.md"
ADAPTER_FILES = (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)
# Children of the model that are not its own trained layers: the backbone (LoRA's) and the parameter-free prefix.
NOT_OWN_MODULES = ("backbone", "prompt_prefix")


def own_module_names(model) -> list[str]:
    """The model's own top-level layers with parameters, in order: what `modules_to_save` must carry.

    PEFT matches `modules_to_save` by suffix, so a nested module whose name ends like one of them would be wrapped
    too; that is refused here rather than saved wrong.
    """
    names = [name for name, module in model.named_children()
             if name not in NOT_OWN_MODULES and any(True for _ in module.parameters())]
    for key, _ in model.named_modules():
        clash = [name for name in names if key != name and key.endswith(name)]
        if clash:
            raise ValueError(f"module {key!r} ends like the top-level layer {clash[0]!r}: PEFT's modules_to_save "
                             f"would wrap both")
    return names


def lora_config_for(model):
    """The `peft.LoraConfig` of `model`'s injected adapters, over the whole model: the same rank, alpha, dropout and
    backbone projections, plus the model's own layers in `modules_to_save`."""
    from peft import LoraConfig

    if model.config.adaptation != "lora":
        raise ValueError(f"adaptation={model.config.adaptation!r}: only a model trained with adaptation='lora' has "
                         f"an adapter to export")
    targets = sorted({key.rsplit(".", 1)[-1] for key, module in model.backbone.named_modules() if hasattr(module, "lora_A")})
    return LoraConfig(
        r=model.config.lora_r,
        lora_alpha=model.config.lora_alpha,
        lora_dropout=model.config.lora_dropout,
        target_modules=rf"backbone\.(.*\.)?({'|'.join(targets)})",
        fan_in_fan_out=model.config.llm_config.model_type == "gpt2",  # as at injection (Conv1D projections)
        modules_to_save=own_module_names(model),
    )


def base_model_for(model):
    """The base of `model`'s adapters: its architecture without LoRA, its pretrained backbone weights, text buffers
    and cities, and its own layers freshly initialized (the adapter carries the trained ones)."""
    config = copy.deepcopy(model.config)
    config.adaptation = "frozen"
    base = type(model)(config)
    backbone = {key.replace(".base_layer.", "."): value for key, value in model.backbone.state_dict().items()
                if "lora_" not in key}
    base.load_backbone_weights(backbone)
    with torch.no_grad():
        for name in ("poi_text_embeddings", "prompt_token_ids", "text_features_encoded"):
            getattr(base, name).copy_(getattr(model, name))
    base.retrievers = dict(model.retrievers)
    return base.eval()


def to_peft_model(model, base=None):
    """`model` as a `peft.PeftModel` on `base` (default: `base_model_for(model)`), holding `model`'s trained LoRA and
    own-layer weights. The base is modified in place (PEFT injects its layers)."""
    from peft import get_peft_model

    config = lora_config_for(model)
    peft_model = get_peft_model(base_model_for(model) if base is None else base, config)
    inner = peft_model.base_model.model
    own = tuple(f"{name}." for name in config.modules_to_save)
    trained = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            trained[key] = value
        elif key.startswith(own):
            name, _, rest = key.partition(".")
            trained[f"{name}.modules_to_save.default.{rest}"] = value
    missing, unexpected = inner.load_state_dict(trained, strict=False)
    not_loaded = [key for key in missing if ".modules_to_save." in key or "lora_" in key]
    if unexpected or not_loaded:
        raise ValueError(f"the adapter does not fit the base: unexpected {unexpected[:5]}, missing {not_loaded[:5]}")
    return peft_model.eval()


def adapter_card(base_model: str, repo_id: str | None = None):
    """The adapter's model card (huggingface_hub's `ModelCard`): PEFT library, base model, how to load it."""
    from huggingface_hub import ModelCard, ModelCardData

    adapter = repo_id or "path/to/adapter"
    data = ModelCardData(library_name="peft", base_model=base_model,
                         tags=["peft", "lora", "nextlocllm", "next-location-prediction", "human-mobility"])
    body = f"""
# NextLocLLM LoRA adapter

A PEFT LoRA adapter of NextLocLLM (next-location prediction as coordinate regression with a partly frozen LLM,
arXiv 2410.09129) for the base `{base_model}`: the backbone's LoRA weights and, in `modules_to_save`, the model's own
trained layers (record embedding, POI projections, heads). The base holds the pretrained backbone and the cities.

```python
from peft import PeftModel
from transformers import AutoModel

base = AutoModel.from_pretrained("{base_model}", trust_remote_code=True)
model = PeftModel.from_pretrained(base, "{adapter}")
prediction = model.predict(batch, city=model.cities[0], k=10)
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def export_lora_adapter(model, adapter_dir: str | os.PathLike, base_dir: str | os.PathLike,
                        base_model_name_or_path: str | None = None) -> dict[str, int]:
    """Write `model`'s adapter to `adapter_dir` and its base model to `base_dir`; `adapter_config.json` names the
    base as `base_model_name_or_path` (default: `base_dir`; `hub.push_adapter` names its Hub id). Returns the bytes of
    each one's weights."""
    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    base_name = base_model_name_or_path or str(base_dir.resolve())
    base = base_model_for(model)
    base.save_pretrained(base_dir)  # before PEFT injects its layers into it
    base.name_or_path = base_name  # what PEFT records as the adapter's base_model_name_or_path
    peft_model = to_peft_model(model, base)
    peft_model.save_pretrained(adapter_dir, save_embedding_layers=False)  # no embedding table is adapted
    adapter_card(base_name).save(adapter_dir / ADAPTER_CARD_NAME)  # replaces PEFT's template card
    return {"adapter": (adapter_dir / ADAPTER_WEIGHTS_NAME).stat().st_size,
            "base": (base_dir / "model.safetensors").stat().st_size}


__all__ = ["own_module_names", "lora_config_for", "base_model_for", "to_peft_model", "adapter_card",
           "export_lora_adapter"]
