"""The `next-location` pipeline: raw visit records in, top-k cells of a city out; ships with the model's code.

    from transformers import pipeline

    predict = pipeline("next-location", model="ORG/NAME", trust_remote_code=True)
    predict("user.csv", city="nyc", k=5)                                   # one user's records
    predict(records_frame_with_user_column, city="nyc", at="2024-05-03 18:00")   # many users, at_time model
    predict(records, cells="data/calgary")                                 # a city the model never saw

Records are a CSV/TSV/Parquet path, a DataFrame or a list of dicts, one row per visit (columns and the rule that
turns them into the model's features: `records_nextlocllm`); a `user` column (user_id, user, uid, userid) holds many
users, each predicted from its own last `history_length + current_length` records. `at=` is the local wall-clock
time of the visit to predict (`task_mode="at_time"` models only): one time for every user, a list (users in order of
first appearance) or a dict user -> time. `city=` picks a city of the model (optional when it has one); `cells=` adds
a city, a folder built by `dataset_scripts/build_city.py` or a `CityRetriever`, to the model and predicts in it.
`max_duration_hours=` overrides the duration cap the city was built with, which its retriever carries (0 = none).
`encoding=` is the text encoding of a records file (default UTF-8, a byte-order mark allowed; a file that does not
decode is refused with its line).

Each user's result is a dict: `user` (None without a user column), `city`, `predicted_lat`, `predicted_lon`
(`predicted_duration_hours` with a duration head), `cells`, a list of `rank, cell_id, lat, lon, score, distance_m`
best first, and `records`, the features the model read (a DataFrame). `score` is what the head ranked by, higher
first: the candidate ranker's score (NaN for a cell it did not score, taken from the head's own ranking), else the
mixture's log density at the cell centre, else minus the projected distance in metres. `distance_m` is the
great-circle distance from the predicted point (`geometry_nextlocllm.haversine_m`). One user without a user column
gives one dict, otherwise a list of dicts.

The model's `save_pretrained` writes this file beside its code and `custom_pipelines` into config.json
(`add_pipeline_to_save`), so `pipeline("next-location", model=folder_or_repo, trust_remote_code=True)` finds it in
every saved folder and Hub repo, without this package.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import pandas as pd
from transformers import AutoModel, Pipeline
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY

from .geometry_nextlocllm import haversine_m, mercator_to_lonlat
from .records_nextlocllm import (
    DEFAULT_ENCODING,
    model_inputs_from_records,
    parse_records,
    prepare_records,
    read_table,
    split_users,
)
from .retrieval_nextlocllm import CityRetriever

TASK = "next-location"


DEFAULT_K = 10  # cells listed when k is not given (fewer in a city with fewer cells)


class NextLocationPipeline(Pipeline):
    """Raw records of one or many users -> each user's top-k cells (see the module docstring)."""

    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_processor = False
    _load_video_processor = False

    def __call__(self, records: Any, **kwargs):
        # A list of dicts is one table of records, not a list of inputs.
        if isinstance(records, (list, tuple)):
            records = read_table(records)
        return super().__call__(records, **kwargs)

    def _sanitize_parameters(self, city=None, cells=None, k=None, at=None, max_duration_hours=None, encoding=None):
        given = {"city": city, "cells": cells, "k": k, "at": at, "max_duration_hours": max_duration_hours,
                 "encoding": encoding}
        return {name: value for name, value in given.items() if value is not None}, {}, {}

    # -------------------------------------------------------------------------------------------------- steps
    def resolve_city(self, city: str | None = None, cells: Any = None) -> str:
        """The city to predict in, adding `cells` (a built city folder or a retriever) to the model first."""
        if cells is not None:
            if isinstance(cells, (str, os.PathLike)):
                try:
                    retriever = CityRetriever.from_folder(cells)
                except FileNotFoundError as error:
                    raise FileNotFoundError(f"cells={str(cells)!r}: {error}") from None
            else:
                retriever = cells
            if city is not None and city != retriever.name:
                raise ValueError(f"cells holds city {retriever.name!r}, not city={city!r}")
            self.model.add_city(retriever)
            return retriever.name
        if city is None:
            if len(self.model.cities) != 1:
                raise ValueError(f"city= is required: this model knows the cities {self.model.cities} (a new city: "
                                 f"cells=CITY_DIR)")
            return self.model.cities[0]
        self.model.retriever(city)  # an unknown city raises, naming the known ones
        return city

    def prepare(self, records: Any, city: str, cap_hours: float | None,
                encoding: str = DEFAULT_ENCODING) -> list[tuple[Any, pd.DataFrame]]:
        """`(user, features)` per user (`prepare_records`), durations clipped to `cap_hours` (None: no cap)."""
        where = str(records) if isinstance(records, (str, os.PathLike)) else "records"
        retriever = self.model.retriever(city)
        prepared = []
        for user, rows in split_users(read_table(records, encoding)):
            try:
                frame = prepare_records(parse_records(rows, where), retriever, self.model.config, cap_hours)
            except ValueError as error:
                if user is None:
                    raise
                raise ValueError(f"user {user!r}: {error}") from None
            prepared.append((user, frame))
        return prepared

    def preprocess(self, records, city=None, cells=None, k=None, at=None, max_duration_hours=None,
                   encoding=DEFAULT_ENCODING) -> dict:
        city = self.resolve_city(city, cells)
        retriever = self.model.retriever(city)
        if k is None:  # not given: 10, or every cell of a smaller city
            k = min(DEFAULT_K, retriever.num_cells)
        retriever.check_k(k)  # before the records are read
        if max_duration_hours is not None and not max_duration_hours >= 0:
            raise ValueError(f"max_duration_hours={max_duration_hours!r}: expected hours >= 0 (0: no cap)")
        # the cap the city was built with, unless overridden (0: no cap)
        cap = retriever.max_duration_hours if max_duration_hours is None else (max_duration_hours or None)
        prepared = self.prepare(records, city, cap, encoding)
        users = [user for user, _ in prepared]
        if isinstance(at, Mapping):
            unknown = [user for user in users if user not in at]
            if unknown:
                raise ValueError(f"at= gives no time for user {unknown[0]!r}; give one per user")
            at = [at[user] for user in users]
        batch = model_inputs_from_records([frame for _, frame in prepared], self.model.config, at)
        return {"batch": batch, "city": city, "k": k, "users": users,
                "records": [frame for _, frame in prepared], "single": users == [None]}

    def _forward(self, model_inputs: dict) -> dict:
        output = self.model.predict(model_inputs["batch"], city=model_inputs["city"], k=model_inputs["k"])
        arrays = {name: value.detach().double().cpu().numpy() if name != "top_k_cells" else value.cpu().numpy()
                  for name, value in output.items() if value is not None and name != "hidden_states"}
        return {**{key: value for key, value in model_inputs.items() if key != "batch"}, "output": arrays}

    def postprocess(self, model_outputs: dict):
        output, city = model_outputs["output"], model_outputs["city"]
        retriever = self.model.retriever(city)
        results = []
        for index, (user, records) in enumerate(zip(model_outputs["users"], model_outputs["records"])):
            lon, lat = mercator_to_lonlat(*output["coordinates"][index])
            cells = output["top_k_cells"][index]
            rows = retriever.rows_of(cells)
            latlon = retriever.latlon[rows]
            distances = haversine_m(lat, lon, latlon[:, 0], latlon[:, 1])
            scores = output["top_k_scores"][index]  # what the head ranked by, higher first
            result = {"user": user, "city": city, "predicted_lat": float(lat), "predicted_lon": float(lon)}
            if "duration" in output:
                result["predicted_duration_hours"] = float(output["duration"][index])
            result["cells"] = [
                {"rank": rank + 1, "cell_id": int(cells[rank]), "lat": float(latlon[rank, 0]),
                 "lon": float(latlon[rank, 1]), "score": float(scores[rank]), "distance_m": float(distances[rank])}
                for rank in range(len(cells))
            ]
            result["records"] = records
            results.append(result)
        return results[0] if model_outputs["single"] else results


def add_pipeline_to_save(config, save_directory: str | os.PathLike) -> None:
    """Write this pipeline's code into `save_directory` and name it in `config.custom_pipelines`, which is what
    `pipeline(TASK, model=folder_or_repo, trust_remote_code=True)` reads (as `Pipeline.save_pretrained` does, without
    building a pipeline). Called by the model's `save_pretrained` before the config is written."""
    os.makedirs(save_directory, exist_ok=True)
    config.custom_pipelines = {TASK: {"impl": f"{__name__.split('.')[-1]}.{NextLocationPipeline.__name__}",
                                      "pt": ("AutoModel",)}}
    custom_object_save(NextLocationPipeline, save_directory)


if TASK not in PIPELINE_REGISTRY.supported_tasks:
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=NextLocationPipeline, pt_model=AutoModel)

__all__ = ["NextLocationPipeline", "TASK", "add_pipeline_to_save"]
