"""Checks before torch internals see an input: a `ValueError` names the field and the offending value.

A batch: shapes are read from tensor metadata (no device work). Values are checked all at once: every rule becomes one
flag on the batch's device and a single read of the stacked flags decides (one host sync per forward instead of one
per field); only when a flag is up is the offending field copied to numpy to name its first bad value.

A saved model, before `from_pretrained` loads it: its weights must be safetensors (a pickle runs code when loaded, so
a folder holding only `pytorch_model.bin` is refused unread), and their shapes, read from the files' headers, must be
those its config.json builds (on the meta device: no memory, no init). A mismatch names the config field that sets
the differing dimension, found by rebuilding with each integer field changed.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import numpy as np
import torch

from .candidates_nextlocllm import QUERY_COLUMNS
from .configuration_nextlocllm import NextLocLLMConfig

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLED_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class ValueRule(NamedTuple):
    """`name` must be finite (floats only) and within [low, high] (`None`: unbounded above)."""

    name: str
    finite: bool
    low: float | None = None
    high: float | None = None


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")


def check_shapes(config: NextLocLLMConfig, inputs: Mapping[str, torch.Tensor | None]) -> int:
    """Presence and shapes of the fields `forward` reads, and the task mode's query; returns the batch size."""
    batch_size = inputs["history_coordinates"].shape[0] if inputs["history_coordinates"].dim() > 0 else 0
    for part, length in (("history", config.history_length), ("current", config.current_length)):
        expected_shapes = {
            "coordinates": (batch_size, length, 2),
            "day": (batch_size, length),
            "hour": (batch_size, length),
            "duration": (batch_size, length),
            "poi": (batch_size, length, config.num_poi_classes),
        }
        for feature, shape in expected_shapes.items():
            name = f"{part}_{feature}"
            value = inputs[name]
            if value is None:
                raise ValueError(f"{name} is required")
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, expected {shape} "
                    f"({part}_length={length}, {config.num_poi_classes} POI classes)"
                )
    query = [name for name in QUERY_COLUMNS if inputs.get(name) is not None]
    if config.task_mode == "at_time":
        for name in QUERY_COLUMNS:
            if inputs.get(name) is None:
                raise ValueError(
                    f"{name} is required: this model was trained for task_mode='at_time' (where will the user be at a "
                    f"given time?) and reads the query's target_day, target_hour and target_time_gap"
                )
    elif query:
        raise ValueError(
            f"{query} given, but this model was trained for task_mode='next' (the time of the visit to predict is "
            f"unknown to it); use a model trained with task_mode='at_time' to predict at a given time"
        )
    optional_shapes = {name: (batch_size,) for name in (*QUERY_COLUMNS, "target_cell", "duration_labels")}
    optional_shapes.update(labels=(batch_size, 2), history_cell=(batch_size, config.history_length),
                           current_cell=(batch_size, config.current_length))
    for name, shape in optional_shapes.items():
        if inputs.get(name) is not None and tuple(inputs[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(inputs[name].shape)}, expected {shape}")
    return batch_size


def value_rules(config: NextLocLLMConfig) -> list[ValueRule]:
    """What each field's values must satisfy (day 0=Monday..6, hour 0..23, hours and frequencies >= 0)."""
    rules = []
    for part in ("history", "current"):
        rules += [
            ValueRule(f"{part}_coordinates", finite=True),
            ValueRule(f"{part}_day", finite=False, low=0, high=6),
            ValueRule(f"{part}_hour", finite=False, low=0, high=23),
            ValueRule(f"{part}_duration", finite=True, low=0),
            ValueRule(f"{part}_poi", finite=True, low=0),
        ]
    if config.task_mode == "at_time":
        rules += [
            ValueRule("target_day", finite=False, low=0, high=6),
            ValueRule("target_hour", finite=False, low=0, high=23),
            ValueRule("target_time_gap", finite=True, low=0),
        ]
    return rules + [ValueRule("labels", finite=True), ValueRule("duration_labels", finite=True, low=0)]


def check_values(
    config: NextLocLLMConfig,
    inputs: Mapping[str, torch.Tensor | None],
    coordinate_mean: torch.Tensor | None = None,
    coordinate_std: torch.Tensor | None = None,
) -> None:
    """Every value rule of the batch (and of explicitly given city statistics), with one host sync."""
    checks = [(rule, inputs[rule.name]) for rule in value_rules(config) if inputs.get(rule.name) is not None]
    flags = [_violates(value, rule) for rule, value in checks]
    if coordinate_mean is not None:
        flags.append(~torch.isfinite(coordinate_mean).all())
    if coordinate_std is not None:
        flags.append(~(coordinate_std > 0).all())
    if not flags:
        return
    device = flags[0].device
    if not bool(torch.stack([flag.to(device) for flag in flags]).any()):
        return
    for rule, value in checks:  # something is wrong: find and name it (numpy, off the hot path)
        _raise_if_violated(rule, _to_numpy(value))
    if coordinate_mean is not None:
        mean = _to_numpy(coordinate_mean)
        if not np.isfinite(mean).all():
            raise ValueError(f"coordinate_mean holds a non-finite value: {mean[~np.isfinite(mean)].flat[0].item()}")
    std = _to_numpy(coordinate_std)
    raise ValueError(f"coordinate_std holds {std[~(std > 0)].flat[0].item()}, expected positive values")


def _violates(value: torch.Tensor, rule: ValueRule) -> torch.Tensor:
    flag = torch.zeros((), dtype=torch.bool, device=value.device)
    if rule.finite and value.is_floating_point():
        flag = flag | ~torch.isfinite(value).all()
    if rule.low is not None:
        flag = flag | (value < rule.low).any()
    if rule.high is not None:
        flag = flag | (value > rule.high).any()
    return flag


def _raise_if_violated(rule: ValueRule, value: np.ndarray) -> None:
    if rule.finite and np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        raise ValueError(f"{rule.name} holds a non-finite value ({value[~np.isfinite(value)].flat[0].item()})")
    if rule.low is None:
        return
    outside = value < rule.low if rule.high is None else (value < rule.low) | (value > rule.high)
    if outside.any():
        expected = f">= {rule.low}" if rule.high is None else f"in {rule.low}..{rule.high}"
        raise ValueError(f"{rule.name} holds {value[outside].flat[0].item()}, expected values {expected}")


def _to_numpy(value: torch.Tensor) -> np.ndarray:
    value = value.detach().cpu()
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


# ---------------------------------------------------------------------------------------------- saved weights
def saved_weight_files(name_or_path: str, hub_kwargs: Mapping[str, Any]) -> list[str]:
    """Local paths of a saved model's safetensors weights (one file, or the shards its index lists), fetched into the
    cache as `from_pretrained` would. A folder or repo holding only pickled weights is refused before anything is
    read from them."""
    from transformers.utils import cached_file, has_file

    subfolder = hub_kwargs.get("subfolder") or ""
    where = os.path.join(str(name_or_path), subfolder) if subfolder else str(name_or_path)

    def fetch(filename: str) -> str | None:
        return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)

    single = fetch(SAFE_WEIGHTS_NAME)
    if single is not None:
        return [single]
    index = fetch(SAFE_WEIGHTS_INDEX_NAME)
    if index is not None:
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{where}: {SAFE_WEIGHTS_INDEX_NAME} is damaged ({type(error).__name__}: {error})") from error
        files = [fetch(shard) for shard in shards]
        missing = [shard for shard, file in zip(shards, files) if file is None]
        if missing:
            raise FileNotFoundError(f"{where}: {SAFE_WEIGHTS_INDEX_NAME} lists {missing[0]}, which is missing: "
                                    f"save, copy or download the model again")
        return files
    lookup = {key: hub_kwargs[key] for key in ("revision", "proxies", "token", "local_files_only", "cache_dir")
              if hub_kwargs.get(key) is not None}
    pickled = [name for name in PICKLED_WEIGHTS_NAMES
               if has_file(name_or_path, f"{subfolder}/{name}" if subfolder else name, **lookup)]
    if pickled:
        raise ValueError(f"{where} holds only pickled weights ({', '.join(pickled)}); NextLocLLM loads safetensors "
                         f"only ({SAFE_WEIGHTS_NAME}), as unpickling a file runs whatever code it holds: load it with "
                         f"torch and re-save it with save_pretrained where you trust the file")
    raise FileNotFoundError(f"{where} has no {SAFE_WEIGHTS_NAME}: not a complete saved model (save_pretrained "
                            f"writes it beside config.json)")


def check_weights_match_config(model_class: Callable[[NextLocLLMConfig], torch.nn.Module], config: NextLocLLMConfig,
                               files: list[str], where: str) -> None:
    """Refuse weights whose shapes differ from those `config` builds: transformers would load what fits, report the
    rest and raise a RuntimeError naming no cause. Tensors only one side has are left to transformers' load report."""
    from safetensors import safe_open

    stored: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                stored[key] = (tuple(f.get_slice(key).get_shape()), os.path.basename(file))
    built = _built_shapes(model_class, config)
    mismatches = [(key, stored[key][0], shape, stored[key][1]) for key, shape in built.items()
                  if key in stored and stored[key][0] != shape]
    if not mismatches:
        return
    effects = {field: _changed_dims(built, _built_shapes(model_class, changed))
               for field, changed in _changed_configs(config)}
    causes = []
    for key, stored_shape, built_shape, file in mismatches:
        dims = [i for i, (a, b) in enumerate(zip(stored_shape, built_shape)) if a != b]
        if len(stored_shape) != len(built_shape):
            dims = list(range(max(len(stored_shape), len(built_shape))))
        causes.append([field for field, touched in effects.items() if any((key, d) in touched for d in dims)])
    chosen = next((i for i, fields in enumerate(causes) if len(fields) == 1), 0)
    key, stored_shape, built_shape, file = mismatches[chosen]
    others = f" ({len(mismatches) - 1} more tensors disagree)" if len(mismatches) > 1 else ""
    if len(causes[chosen]) == 1:
        said = _config_says(config, causes[chosen][0])
        raise ValueError(f"{where}: {said} but {file} holds {key} of shape {stored_shape}, where that config builds "
                         f"{built_shape}{others}: the config and the weights come from different models")
    fields = causes[chosen] or ["llm_config.hidden_size", "coordinate_embedding_dim", "day_embedding_dim",
                                "hour_embedding_dim", "duration_embedding_dim"]
    raise ValueError(f"{where}: {file} holds {key} of shape {stored_shape} but config.json builds it as {built_shape}"
                     f" (set by {'; '.join(_config_says(config, field) for field in fields)}){others}: the config "
                     f"and the weights come from different models")


def _built_shapes(model_class, config: NextLocLLMConfig) -> dict[str, tuple[int, ...]]:
    """The state dict's shapes of the model `config` builds, on the meta device (no memory, nothing initialized)."""
    with torch.device("meta"):
        model = model_class(copy.deepcopy(config))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _changed_dims(built: Mapping[str, tuple[int, ...]], changed: Mapping[str, tuple[int, ...]]) -> set[tuple[str, int]]:
    touched = set()
    for key, shape in built.items():
        other = changed.get(key)
        if other is not None and other != shape:
            width = max(len(shape), len(other))
            padded = (*shape, *[None] * (width - len(shape))), (*other, *[None] * (width - len(other)))
            touched.update((key, d) for d in range(width) if padded[0][d] != padded[1][d])
    return touched


def _changed_configs(config: NextLocLLMConfig) -> Iterator[tuple[str, NextLocLLMConfig]]:
    """Each integer field of the config and of its backbone's (and the POI class count) changed, with the config
    that results; fields whose new value the config refuses are skipped."""
    data = config.to_dict()
    llm = data["llm_config"]
    variants = [(key, {**data, key: value + max(value, 1)}) for key, value in data.items() if _is_int(value)]
    variants.append(("poi_class_names", {**data, "poi_class_names": [*config.poi_class_names, "-"],
                                         "poi_class_descriptions": [*config.poi_class_descriptions, "-"]}))
    variants += [(f"llm_config.{key}", {**data, "llm_config": {**llm, key: value + max(value, 1)}})
                 for key, value in llm.items() if _is_int(value)]
    for field, changed in variants:
        try:
            yield field, type(config).from_dict(changed)
        except (ValueError, TypeError, KeyError):
            continue


def _config_says(config: NextLocLLMConfig, field: str) -> str:
    if field == "poi_class_names":
        return f"config.json lists {config.num_poi_classes} poi_class_names"
    if not field.startswith("llm_config."):
        return f"config.json says {field}={getattr(config, field)!r}"
    key = field.removeprefix("llm_config.")
    aliases = {target: alias for alias, target in getattr(config.llm_config, "attribute_map", {}).items()}
    alias = f" (the backbone's {aliases[key]})" if key in aliases else ""
    return f"config.json says {field}={getattr(config.llm_config, key)!r}{alias}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["ValueRule", "check_positive_int", "check_shapes", "value_rules", "check_values", "saved_weight_files",
           "check_weights_match_config", "SAFE_WEIGHTS_NAME", "PICKLED_WEIGHTS_NAMES"]
