"""Checks of a batch before it reaches torch internals: a `ValueError` names the field and the offending value.

Shapes are read from tensor metadata (no device work). Values are checked all at once: every rule becomes one flag on
the batch's device and a single read of the stacked flags decides (one host sync per forward instead of one per
field); only when a flag is up is the offending field copied to numpy to name its first bad value.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np
import torch

from .candidates_nextlocllm import QUERY_COLUMNS
from .configuration_nextlocllm import NextLocLLMConfig


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


__all__ = ["ValueRule", "check_positive_int", "check_shapes", "value_rules", "check_values"]
