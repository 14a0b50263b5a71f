"""The `next-location` pipeline: raw visit records in, top-k cells of a city out; ships with the model's code.

    from transformers import pipeline

    predict = pipeline("next-location", model="ORG/NAME", trust_remote_code=True)
    predict("user.csv", city="nyc", k=5)                                   # one user's records
    predict(records_frame_with_user_column, city="nyc", at="2024-05-03 18:00")   # many users, at_time model
    predict(records, cells="data/calgary")                                 # a city the model never saw
    predict(records, city="nyc", hold_out_last=True)         # each user's last record as the true next visit

Records are a CSV/TSV/Parquet path, a DataFrame or a list of dicts, one row per visit (columns and the rule that
turns them into the model's features: `records_nextlocllm`); a `user` column (user_id, user, uid, userid) holds many
users, each predicted from its own records (the window is the last `history_length + current_length`; a model with
`candidate_history` also reads the earlier ones). `at=` is the local wall-clock
time of the visit to predict (`task_mode="at_time"` models only): one time for every user, a list (users in order of
first appearance) or a dict user -> time. `city=` picks a city of the model (optional when it has one); `cells=` adds
a city, a folder built by `dataset_scripts/build_city.py` or a `CityRetriever`, to the model and predicts in it.
`max_duration_hours=` overrides the duration cap the city was built with, which its retriever carries (0 = none).
`encoding=` is the text encoding of a records file (default UTF-8, a byte-order mark allowed; a file that does not
decode is refused with its line).

Each user's result is a dict (every value plain Python, JSON-ready, except `records`):

* `user` (None without a user column) and `city`;
* `cells`, best first, each a dict `rank, cell_id, probability, score, distance_from_last_m, lat, lon, poi_mix,
  top_categories` (see `cell_probabilities` for `probability`): `score` is what the head ranked by, higher first
  (the candidate ranker's score, NaN for a cell it did not score; else the mixture's log density per square metre at
  the cell centre; else minus the metres to the regressed point); `distance_from_last_m` the great-circle metres from
  the last record to the cell centre (`geometry_nextlocllm.haversine_m`); `lat, lon` the cell centre; `poi_mix` the
  share of the cell's POIs in each class, largest first, classes without POIs left out (None where the city keeps no
  counts); `top_categories` the cell's most common venue category names (None where the city keeps none);
* `probability_basis`: what `probability` is, in words (None where the head gives none);
* `last_record`: `lat, lon, local_time` of the last record read, where `distance_from_last_m` starts;
* `regressed_point`: `lat, lon, distance_from_last_m` of the position head's point (with a mixture, its heaviest
  mode): the head's regression, not the answer; it ranks the cells of the `point` / `mixture` heads and fills a
  ranker's list past its candidates;
* `predicted_duration_hours`, with a duration head;
* `held_out` (with `hold_out_last=True`): the true next visit, `lat, lon, local_time, cell_id` (-1: in no candidate
  cell) and `rank`, its place in `cells` (None: not listed);
* `records`: the features the model read (a DataFrame, `prepare_records`).

`hold_out_last=True` holds out each user's last record as the true next visit and predicts from the records before
it (an `at_time` model is asked about the held-out visit's time, so `at=` is refused then). One user without a user
column gives one dict, otherwise a list of dicts.

The model's `save_pretrained` writes this file beside its code and `custom_pipelines` into config.json
(`add_pipeline_to_save`), so `pipeline("next-location", model=folder_or_repo, trust_remote_code=True)` finds it in
every saved folder and Hub repo, without this package.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Mapping

import numpy as np
import pandas as pd
from transformers import AutoModel, Pipeline
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY

from .geometry_nextlocllm import haversine_m, lonlat_to_mercator, mercator_to_lonlat
from .mixture_nextlocllm import mixture_log_density_np
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


def parse_users(records: pd.DataFrame, where: str = "records") -> list[tuple[Any, pd.DataFrame]]:
    """`(user, parse_records rows)` per user in order of first appearance (`split_users`); an error names its user."""
    parsed = []
    for user, rows in split_users(records):
        try:
            parsed.append((user, parse_records(rows, where)))
        except ValueError as error:
            if user is None:
                raise
            raise ValueError(f"user {user!r}: {error}") from None
    return parsed


def hold_out_last_visit(records: pd.DataFrame, needed: int) -> tuple[pd.DataFrame, dict]:
    """A user's `parse_records` rows without the last one, and that last visit: `lat, lon, local_time` and `time`,
    its local time with its UTC offset (what an `at_time` model is asked about: the gap is then exact in absolute
    time, the day and hour are the local clock's)."""
    if len(records) < needed + 1:
        raise ValueError(f"hold_out_last: {len(records)} records (after sorting and dropping exact duplicates); "
                         f"holding out the last leaves {len(records) - 1}, but the model needs {needed}; give at "
                         f"least {needed + 1}")
    last = records.iloc[-1]
    offset = datetime.timedelta(seconds=int(last["local_s"]) - int(last["time_s"]))
    visit = {"lat": float(last["latitude"]), "lon": float(last["longitude"]), "local_time": str(last["local_time"]),
             "time": pd.Timestamp(last["local_time"]).tz_localize(datetime.timezone(offset))}
    return records.iloc[:-1], visit


def cell_probabilities(output: Mapping[str, np.ndarray], index: int, cells: np.ndarray,
                       retriever: CityRetriever) -> tuple[np.ndarray, str | None]:
    """The model's probability that sample `index`'s next visit is in each of `cells`, and what it is, in words.

    * A candidate ranker (`candidate_scores` in the output): the softmax of its scores over the sample's candidates,
      the distribution its listwise loss trains. A cell only the position head listed (past the candidates) gets 0,
      not NaN: the ranker puts all its mass on its candidates, so the probabilities stay a distribution (they sum to
      at most 1 over any list) and a fallback cell reads as what it is, outside what the ranker considered.
    * A mixture alone: its density at every cell centre of the city, normalized over the cells (cells are equal
      squares, so this is the mixture's mass per cell up to the centre-point rule).
    * A point alone (the paper's head): NaN, a single point is no distribution.
    """
    if "candidate_scores" in output:
        candidates = output["candidate_cells"][index].astype(np.int64)
        valid = candidates >= 0
        logits = output["candidate_scores"][index][valid]
        shares = np.exp(logits - logits.max())  # a sample has candidates: its records' cells at least
        by_cell = dict(zip(candidates[valid].tolist(), (shares / shares.sum()).tolist()))
        probabilities = np.array([by_cell.get(int(cell), 0.0) for cell in cells])
        return probabilities, (f"softmax of the candidate ranker's scores over its {int(valid.sum())} candidate cells "
                               f"(0: a cell past them, listed by the position head)")
    if "mixture_means" in output:
        with np.errstate(divide="ignore"):
            log_weights = np.log(output["mixture_weights"][index])
        log_density = mixture_log_density_np(retriever.xy, output["mixture_means"][index],
                                             output["mixture_scales"][index], log_weights)
        shares = np.exp(log_density - log_density.max())
        return ((shares / shares.sum())[retriever.rows_of(cells)],
                f"the mixture's density at the centres of the city's {retriever.num_cells} cells, normalized over them")
    return np.full(len(cells), np.nan), None


def poi_mix(retriever: CityRetriever, row: int, class_names: list[str]) -> dict[str, float] | None:
    """Share of the cell's POIs in each class, largest first, classes without POIs left out; None where the city
    keeps no POI counts, `{}` for a cell without POIs."""
    if retriever.poi_counts is None:
        return None
    counts = retriever.poi_counts[row]
    total = int(counts.sum())
    order = np.argsort(-counts, kind="stable")
    return {class_names[c]: int(counts[c]) / total for c in order if counts[c] > 0}


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

    def _sanitize_parameters(self, city=None, cells=None, k=None, at=None, max_duration_hours=None, encoding=None,
                             hold_out_last=None):
        given = {"city": city, "cells": cells, "k": k, "at": at, "max_duration_hours": max_duration_hours,
                 "encoding": encoding, "hold_out_last": hold_out_last}
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

    def prepare(self, records: Any, city: str, cap_hours: float | None, encoding: str = DEFAULT_ENCODING,
                hold_out_last: bool = False) -> list[tuple[Any, pd.DataFrame, dict | None]]:
        """`(user, features, held-out visit or None)` per user (`prepare_records`), durations clipped to `cap_hours`
        (None: no cap)."""
        where = str(records) if isinstance(records, (str, os.PathLike)) else "records"
        retriever, config = self.model.retriever(city), self.model.config
        needed = config.history_length + config.current_length
        prepared = []
        for user, rows in parse_users(read_table(records, encoding), where):
            try:
                rows, visit = hold_out_last_visit(rows, needed) if hold_out_last else (rows, None)
                frame = prepare_records(rows, retriever, config, cap_hours)
            except ValueError as error:
                if user is None:
                    raise
                raise ValueError(f"user {user!r}: {error}") from None
            prepared.append((user, frame, visit))
        return prepared

    def preprocess(self, records, city=None, cells=None, k=None, at=None, max_duration_hours=None,
                   encoding=DEFAULT_ENCODING, hold_out_last=False) -> dict:
        city = self.resolve_city(city, cells)
        retriever = self.model.retriever(city)
        if k is None:  # not given: 10, or every cell of a smaller city
            k = min(DEFAULT_K, retriever.num_cells)
        retriever.check_k(k)  # before the records are read
        if max_duration_hours is not None and not max_duration_hours >= 0:
            raise ValueError(f"max_duration_hours={max_duration_hours!r}: expected hours >= 0 (0: no cap)")
        if not isinstance(hold_out_last, bool):
            raise ValueError(f"hold_out_last={hold_out_last!r}: expected True or False")
        if hold_out_last and at is not None:
            raise ValueError(f"at={at!r} (--at) with hold_out_last=True (--hold_out_last): the held-out visit's own "
                             f"time is the time asked about; drop at")
        # the cap the city was built with, unless overridden (0: no cap)
        cap = retriever.max_duration_hours if max_duration_hours is None else (max_duration_hours or None)
        prepared = self.prepare(records, city, cap, encoding, hold_out_last)
        users = [user for user, _, _ in prepared]
        held_out = [visit for _, _, visit in prepared]
        if hold_out_last and self.model.config.task_mode == "at_time":
            at = [visit["time"] for visit in held_out]
        if isinstance(at, Mapping):
            unknown = [user for user in users if user not in at]
            if unknown:
                raise ValueError(f"at= gives no time for user {unknown[0]!r}; give one per user")
            at = [at[user] for user in users]
        frames = [frame for _, frame, _ in prepared]
        batch = model_inputs_from_records(frames, self.model.config, at)
        return {"batch": batch, "city": city, "k": k, "users": users, "records": frames, "held_out": held_out,
                "single": users == [None]}

    def _forward(self, model_inputs: dict) -> dict:
        output = self.model.predict(model_inputs["batch"], city=model_inputs["city"], k=model_inputs["k"])
        arrays = {name: (value.detach().double() if value.is_floating_point() else value).cpu().numpy()
                  for name, value in output.items() if value is not None and name != "hidden_states"}
        return {**{key: value for key, value in model_inputs.items() if key != "batch"}, "output": arrays}

    def postprocess(self, model_outputs: dict):
        output, city = model_outputs["output"], model_outputs["city"]
        retriever = self.model.retriever(city)
        class_names = retriever.poi_classes or list(self.model.config.poi_class_names)
        results = []
        for index, (user, records, visit) in enumerate(
                zip(model_outputs["users"], model_outputs["records"], model_outputs["held_out"])):
            last = records.iloc[-1]
            last_lat, last_lon = float(last["latitude"]), float(last["longitude"])
            cells = output["top_k_cells"][index]
            rows = retriever.rows_of(cells)
            latlon = retriever.latlon[rows]
            distances = haversine_m(last_lat, last_lon, latlon[:, 0], latlon[:, 1])
            scores = output["top_k_scores"][index]  # what the head ranked by, higher first
            probabilities, basis = cell_probabilities(output, index, cells, retriever)
            lon, lat = mercator_to_lonlat(*output["coordinates"][index])
            result = {
                "user": user,
                "city": city,
                "cells": [
                    {"rank": rank + 1, "cell_id": int(cells[rank]), "probability": float(probabilities[rank]),
                     "score": float(scores[rank]), "distance_from_last_m": float(distances[rank]),
                     "lat": float(latlon[rank, 0]), "lon": float(latlon[rank, 1]),
                     "poi_mix": poi_mix(retriever, rows[rank], class_names),
                     "top_categories": (None if retriever.top_categories is None
                                        else list(retriever.top_categories[rows[rank]]))}
                    for rank in range(len(cells))
                ],
                "probability_basis": basis,
                "last_record": {"lat": last_lat, "lon": last_lon, "local_time": str(last["local_time"])},
                "regressed_point": {"lat": float(lat), "lon": float(lon),
                                    "distance_from_last_m": float(haversine_m(last_lat, last_lon, lat, lon))},
            }
            if "duration" in output:
                result["predicted_duration_hours"] = float(output["duration"][index])
            if visit is not None:
                result["held_out"] = held_out_result(visit, cells, retriever)
            result["records"] = records
            results.append(result)
        return results[0] if model_outputs["single"] else results


def held_out_result(visit: dict, cells: np.ndarray, retriever: CityRetriever) -> dict:
    """The held-out visit as a result shows it: where and when, its cell (-1: in no candidate cell) and its rank among
    `cells` (None: not listed)."""
    x, y = lonlat_to_mercator(visit["lon"], visit["lat"])
    row, _ = retriever.locate(np.array([[float(x), float(y)]]))
    cell = int(retriever.cell_ids[row[0]]) if row[0] >= 0 else -1
    listed = np.flatnonzero(cells == cell) if cell >= 0 else []
    return {"lat": visit["lat"], "lon": visit["lon"], "local_time": visit["local_time"], "cell_id": cell,
            "rank": int(listed[0]) + 1 if len(listed) else None}


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

__all__ = ["NextLocationPipeline", "TASK", "add_pipeline_to_save", "cell_probabilities", "held_out_result",
           "hold_out_last_visit", "parse_users", "poi_mix"]
