"""Loading a saved model's companions: refuse a folder of another architecture, pin the revision, and load the
city retrievers saved beside the weights (`retrievers.json` / `retrievers.safetensors`)."""

from __future__ import annotations

import os
from typing import Any, Mapping

from .configuration_nextlocllm import NextLocLLMConfig
from .retrieval_nextlocllm import RETRIEVERS_CONFIG_NAME, RETRIEVERS_WEIGHTS_NAME, CityRetriever, load_retrievers


def check_model_type(name_or_path: str, hub_kwargs: dict[str, Any]) -> None:
    """Refuse a folder or repo that is not a NextLocLLM model before anything is built: transformers would otherwise
    build this class from another architecture's config, or AutoModel a random model of that other type."""
    subfolder = hub_kwargs.get("subfolder")
    folder = os.path.join(name_or_path, subfolder) if subfolder else name_or_path
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"model {folder} has no config.json: not a saved model folder")
    config, _ = NextLocLLMConfig.get_config_dict(name_or_path, **hub_kwargs)
    model_type = config.get("model_type")
    if model_type != NextLocLLMConfig.model_type:
        raise ValueError(f"model {name_or_path}: config.json has model_type {model_type!r}, not "
                         f"{NextLocLLMConfig.model_type!r}: not a NextLocLLM model")


def resolve_revision(name_or_path, kwargs: Mapping[str, Any]):
    """A branch resolved to its commit, so weights and retrievers come from the same repository state."""
    try:
        from transformers.utils.hub import resolve_revision as resolve_on_hub
    except ImportError:  # older transformers: files are fetched at the requested revision
        return kwargs.get("revision")
    return resolve_on_hub(
        name_or_path,
        kwargs.get("revision"),
        token=kwargs.get("token"),
        local_files_only=bool(kwargs.get("local_files_only")),
        cache_dir=kwargs.get("cache_dir"),
    )


def load_retrievers_beside(name_or_path: str, hub_kwargs: dict[str, Any]) -> dict[str, CityRetriever]:
    """`retrievers.json` (+ `retrievers.safetensors` when it lists cities) from where the weights came from.

    Every saved model has `retrievers.json`, even without cities: a folder or repo without it is incomplete, and
    errors name the folder or repo (and revision) as well as the file.
    """
    from transformers.utils import cached_file

    revision = hub_kwargs.get("revision")
    where = name_or_path if revision is None else f"{name_or_path} (revision {getattr(revision, 'resolved', revision)})"
    config_file = cached_file(
        name_or_path, RETRIEVERS_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    if config_file is None:
        cache_note = " in the local cache" if hub_kwargs.get("local_files_only") else ""
        raise OSError(
            f"{where} has no {RETRIEVERS_CONFIG_NAME}{cache_note}: it is written by save_pretrained beside the "
            f"weights (even for a model without cities), so this folder or repo is incomplete"
        )
    weights_file = cached_file(
        name_or_path, RETRIEVERS_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    try:
        return load_retrievers(config_file, weights_file)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


__all__ = ["check_model_type", "resolve_revision", "load_retrievers_beside"]
