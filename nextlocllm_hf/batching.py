"""City samples as batches of tensors, each gathered from the records when it is asked for.

A split is its windows (`data/windows.py`): only their cities and starts are read up front; a batch's fields are
gathered from the memory-mapped records, so a split never has to fit in memory and row-by-row access through
`datasets` (slower than the model on small backbones) is avoided. Each batch carries each sample's city
(`city_index` into `city_names`), so batches may mix cities; the model reads a city's statistics and cells from its
retriever, the one in-memory form of a city. The task mode decides whether the query (the target's day, hour and the
gap since the last record) is part of the inputs: in `next` mode it is not, so nothing about the target reaches the
model.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .columns import rows_to_arrays
from .data.windows import PAST_FIELDS, window_view_of
from .modeling.candidates_nextlocllm import QUERY_COLUMNS
from .modeling.configuration_nextlocllm import TASK_MODES, NextLocLLMConfig
from .modeling.modeling_nextlocllm import MODEL_INPUT_NAMES
from .modeling.retrieval_nextlocllm import CityRetriever

RECORD_FIELDS = ("coordinates", "day", "hour", "duration", "poi", "cell")


class CitySamples(Dataset):
    """A city split (or several cities' splits) as a torch dataset; `__getitems__` gathers a whole batch as tensors."""

    def __init__(self, split, retrievers: Mapping[str, CityRetriever], task_mode: str = "next", history: bool = False,
                 max_past_records: int = NextLocLLMConfig.max_past_records):
        """`split`: a city split of windows (`load_city_splits` / `load_cities`); `retrievers`: name -> the city's
        `CityRetriever` (`CityDataset.retriever`), whose order fixes `city_index`; `task_mode` (`next` or `at_time`):
        whether batches carry the query fields; `history`: whether they carry each user's earlier records (`past_*`,
        the most recent `max_past_records`), which `candidate_history` models read."""
        if task_mode not in TASK_MODES:
            raise ValueError(f"task_mode={task_mode!r}: expected one of {TASK_MODES}")
        self.task_mode, self.history, self.max_past_records = task_mode, history, max_past_records
        self.city_names = list(retrievers)
        self.view = window_view_of(split)
        if self.view is None:
            raise ValueError("CitySamples takes a city split of windows (from load_city_splits / load_cities)")
        columns = rows_to_arrays(split, ["city", "start"])
        unknown = sorted(set(np.unique(columns["city"]).tolist()) - set(self.city_names))
        if unknown:
            raise ValueError(f"split holds cities {unknown} without a retriever; known: {self.city_names}")
        index_of = {name: i for i, name in enumerate(self.city_names)}
        self.city_index = np.array([index_of[name] for name in columns["city"]], dtype=np.int64)
        self.starts = columns["start"]
        self.fields = [*(f"{part}_{field}" for part in ("history", "current") for field in RECORD_FIELDS),
                       "target_coordinates", "target_duration", "target_cell",
                       *(QUERY_COLUMNS if task_mode == "at_time" else ()), *(PAST_FIELDS if history else ())]

    def __len__(self) -> int:
        return len(self.city_index)

    def __getitem__(self, index: int | slice) -> dict[str, torch.Tensor]:
        """One sample (batch of one) or a slice of samples, as a batch."""
        return self.__getitems__(np.atleast_1d(np.arange(len(self))[index]))

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = np.asarray(indices, dtype=np.int64)
        city_index = self.city_index[rows]
        gathered = self.view.arrays(np.asarray(self.city_names)[city_index], self.starts[rows], self.fields,
                                    self.max_past_records)
        batch = {
            "labels": gathered.pop("target_coordinates"),
            "duration_labels": gathered.pop("target_duration"),
            "city_index": city_index,
            **gathered,
        }
        return {name: torch.from_numpy(np.ascontiguousarray(values)) for name, values in batch.items()}


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`CitySamples.__getitems__` already built the batch; a DataLoader's collate step has nothing left to do."""
    return batch


def model_inputs(batch: Mapping[str, torch.Tensor], city_names: Sequence[str]) -> dict:
    """The entries of a batch that `NextLocLLMForCoordinateRegression.forward` takes, with each sample's city name
    (`city_names`: the `CitySamples.city_names` behind `city_index`) as `city`: the model normalizes with that city's
    statistics and ranks its cells."""
    inputs: dict = {name: batch[name] for name in MODEL_INPUT_NAMES if name in batch}
    inputs["city"] = [city_names[i] for i in batch["city_index"].tolist()]
    return inputs
