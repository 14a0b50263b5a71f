"""City samples as ready tensors: one Arrow -> numpy read per split, then batches by fancy indexing.

Row-by-row access of nested lists through `datasets` costs more than the model on small backbones, so a split is
read once into contiguous arrays. Each batch also carries the per-sample city statistics the model normalizes
with, so batches may mix cities. The task mode decides whether the query (the target's day, hour and the gap since
the last record) is part of the inputs: in `next` mode it is not, so nothing about the target reaches the model.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .columns import rows_to_arrays
from .modeling.candidates_nextlocllm import QUERY_COLUMNS
from .modeling.configuration_nextlocllm import TASK_MODES
from .modeling.modeling_nextlocllm import MODEL_INPUT_NAMES

RECORD_FIELDS = ("coordinates", "day", "hour", "duration", "poi", "cell")


class CitySamples(Dataset):
    """A city split (or several cities' splits) in memory; `__getitems__` returns a whole batch as tensors."""

    def __init__(
        self,
        split,
        city_metadata: Mapping[str, Mapping],
        city_names: Sequence[str] | None = None,
        task_mode: str = "next",
    ):
        """`split`: a `datasets.Dataset` with the city-sample Features; `city_metadata`: name -> city.json dict.

        `city_names` fixes the order behind `city_index` (default: the order of `city_metadata`); `task_mode`
        (`next` or `at_time`) whether batches carry the query fields.
        """
        if task_mode not in TASK_MODES:
            raise ValueError(f"task_mode={task_mode!r}: expected one of {TASK_MODES}")
        self.task_mode = task_mode
        self.city_names = list(city_names or city_metadata)
        columns = rows_to_arrays(split, split.column_names)
        unknown = sorted(set(np.unique(columns["city"]).tolist()) - set(self.city_names))
        if unknown:
            raise ValueError(f"split holds cities {unknown} without statistics; known: {self.city_names}")
        index_of = {name: i for i, name in enumerate(self.city_names)}
        self.city_index = np.array([index_of[name] for name in columns["city"]], dtype=np.int64)
        mean = np.array([city_metadata[n]["coordinate_mean"] for n in self.city_names], dtype=np.float64)
        std = np.array([city_metadata[n]["coordinate_std"] for n in self.city_names], dtype=np.float64)
        self.arrays: dict[str, np.ndarray] = {
            "coordinate_mean": mean[self.city_index],
            "coordinate_std": std[self.city_index],
            "labels": columns["target_coordinates"].astype(np.float64),
            "duration_labels": columns["target_duration"].astype(np.float32),
            "target_cell": columns["target_cell"].astype(np.int64),
            "city_index": self.city_index,
        }
        if task_mode == "at_time":
            for name in QUERY_COLUMNS:
                self.arrays[name] = columns[name].astype(np.float32 if name == "target_time_gap" else np.int64)
        for part in ("history", "current"):
            for field in RECORD_FIELDS:
                dtype = {"coordinates": np.float64, "duration": np.float32, "poi": np.float32}.get(field, np.int64)
                self.arrays[f"{part}_{field}"] = columns[f"{part}_{field}"].astype(dtype)

    def __len__(self) -> int:
        return len(self.city_index)

    def __getitem__(self, index: int | slice) -> dict[str, torch.Tensor]:
        """One sample (batch of one) or a slice of samples, as a batch."""
        return self.__getitems__(np.atleast_1d(np.arange(len(self))[index]))

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = np.asarray(indices, dtype=np.int64)
        return {name: torch.from_numpy(values[rows]) for name, values in self.arrays.items()}


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`CitySamples.__getitems__` already built the batch; a DataLoader's collate step has nothing left to do."""
    return batch


def model_inputs(batch: Mapping[str, torch.Tensor], city_names: Sequence[str] | None = None) -> dict:
    """The entries of a batch that `NextLocLLMForCoordinateRegression.forward` takes.

    With `city_names` (the `CitySamples.city_names` behind `city_index`), each sample's city name is added as `city`:
    the candidate ranker and top-k ranking need the city's cells, not only its statistics.
    """
    inputs: dict = {name: batch[name] for name in MODEL_INPUT_NAMES if name in batch}
    if city_names is not None:
        inputs["city"] = [city_names[i] for i in batch["city_index"].tolist()]
    return inputs
