"""A city as the model needs it at inference: candidate cells, their POI frequencies, the coordinate statistics the
model normalizes with, the grid, and a KD-tree over the cells. `CityRetriever` is the single owner of these.

`from_folder` reads a built city folder (`city.json` + `cells.parquet`); `city_groups` splits a batch that mixes cities
into each city's rows, once per forward pass.

A regressed point becomes a ranked list of cells by nearest-neighbour search in projected metres; a raw record's
position becomes its cell by the builder's grid (`locate`). Retrievers are saved as safetensors (arrays) + JSON
(names, statistics, grid) beside the model weights; a KD-tree is never pickled but rebuilt from the saved coordinates
on first use (milliseconds). Files written before the grid was stored still load: their grid is read from the
centroids' spacing (`locate`). What a person reads about a cell (`poi_counts`, `top_categories`) is optional: a city
built or saved before they were kept loads without them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from .grid_nextlocllm import Grid
from .records_nextlocllm import DEFAULT_MAX_DURATION_HOURS

RETRIEVERS_WEIGHTS_NAME = "retrievers.safetensors"
RETRIEVERS_CONFIG_NAME = "retrievers.json"
RETRIEVERS_FORMAT_VERSION = 1


@dataclass(eq=False)
class CityRetriever:
    """Candidate cells of one city plus the per-city coordinate statistics the model normalizes with, its grid
    (None for a retriever saved before the grid was stored) and the cap its record durations were built with
    (`max_duration_hours`, None: no cap; the builder's default for a retriever saved before the cap was stored), so
    inference turns raw records into the durations training saw, and the names of its POI classes (`poi_classes`, None
    for a retriever saved before they were stored), so a model refuses a city whose frequencies mean other classes.

    For answers a person reads, not for the model: `poi_counts`, the POIs of each class in each cell (a cell's class
    mix; the frequencies are normalized per class city-wide, so their shares are not the cell's), and
    `top_categories`, each cell's most common venue category names, most venues first; None where the city does not
    keep them (built or saved before they were, or POIs without category names)."""

    name: str
    cell_ids: np.ndarray  # (N,) int64
    xy: np.ndarray  # (N, 2) cell centroids, Web Mercator metres
    latlon: np.ndarray  # (N, 2) cell centroids, WGS84 degrees
    poi_frequency: np.ndarray  # (N, C) POI frequency vector of each cell
    coordinate_mean: np.ndarray  # (2,) per-axis mean of the city's projected record coordinates
    coordinate_std: np.ndarray  # (2,) per-axis standard deviation of the same
    metadata: dict[str, Any] = field(default_factory=dict)
    grid: Grid | None = None
    max_duration_hours: float | None = DEFAULT_MAX_DURATION_HOURS
    poi_classes: list[str] | None = None
    poi_counts: np.ndarray | None = None  # (N, C) int64
    top_categories: list[list[str]] | None = None  # (N,) lists of names

    def __post_init__(self) -> None:
        self.cell_ids = np.asarray(self.cell_ids, dtype=np.int64).reshape(-1)
        self.xy = np.asarray(self.xy, dtype=np.float64)
        self.latlon = np.asarray(self.latlon, dtype=np.float64)
        self.poi_frequency = np.asarray(self.poi_frequency, dtype=np.float32)
        self.coordinate_mean = np.asarray(self.coordinate_mean, dtype=np.float64).reshape(-1)
        self.coordinate_std = np.asarray(self.coordinate_std, dtype=np.float64).reshape(-1)
        n = len(self.cell_ids)
        where = f"city {self.name!r}"
        if n == 0:
            raise ValueError(f"{where}: cell_ids is empty; a retriever needs at least one candidate cell")
        for field_name, expected in (("xy", (n, 2)), ("latlon", (n, 2))):
            if getattr(self, field_name).shape != expected:
                raise ValueError(f"{where}: {field_name} has shape {getattr(self, field_name).shape}, expected {expected}")
        if self.poi_frequency.ndim != 2 or self.poi_frequency.shape[0] != n:
            raise ValueError(f"{where}: poi_frequency has shape {self.poi_frequency.shape}, expected ({n}, C)")
        if not np.isfinite(self.xy).all():
            raise ValueError(f"{where}: xy holds non-finite cell coordinates")
        if len(np.unique(self.cell_ids)) != n:
            raise ValueError(f"{where}: cell_ids are not unique")
        if self.coordinate_mean.shape != (2,) or not np.isfinite(self.coordinate_mean).all():
            raise ValueError(f"{where}: coordinate_mean={self.coordinate_mean.tolist()} must be 2 finite numbers")
        if self.coordinate_std.shape != (2,) or not (self.coordinate_std > 0).all():
            raise ValueError(f"{where}: coordinate_std={self.coordinate_std.tolist()} must be 2 positive numbers")
        cap = self.max_duration_hours
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap < np.inf):
            raise ValueError(f"{where}: max_duration_hours={cap!r} must be positive hours or None (no cap)")
        if self.poi_classes is not None:
            if isinstance(self.poi_classes, str) or not all(isinstance(n, str) for n in self.poi_classes):
                raise ValueError(f"{where}: poi_classes={self.poi_classes!r} must be a list of class names")
            self.poi_classes = list(self.poi_classes)
            if len(self.poi_classes) != self.poi_frequency.shape[1]:
                raise ValueError(f"{where}: {len(self.poi_classes)} poi_classes for {self.poi_frequency.shape[1]} POI "
                                 f"frequency columns")
        if self.poi_counts is not None:
            self.poi_counts = np.asarray(self.poi_counts, dtype=np.int64)
            if self.poi_counts.shape != self.poi_frequency.shape:
                raise ValueError(f"{where}: poi_counts has shape {self.poi_counts.shape}, expected "
                                 f"{self.poi_frequency.shape} (as poi_frequency)")
        if self.top_categories is not None:
            self.top_categories = [[str(name) for name in names] for names in self.top_categories]
            if len(self.top_categories) != n:
                raise ValueError(f"{where}: top_categories holds {len(self.top_categories)} cells, expected {n}")
        if isinstance(self.grid, Mapping):
            self.grid = Grid.from_dict(self.grid)
        if self.grid is not None and not self._grid_keys_inside.all():
            raise ValueError(f"{where}: some cell centroids lie outside its grid {self.grid.to_dict()}")

    @classmethod
    def from_cells(
        cls,
        name: str,
        cells: Any,
        coordinate_mean: Sequence[float],
        coordinate_std: Sequence[float],
        metadata: Mapping[str, Any] | None = None,
        grid: Grid | Mapping[str, Any] | None = None,
        max_duration_hours: float | None = DEFAULT_MAX_DURATION_HOURS,
        poi_classes: Sequence[str] | None = None,
    ) -> "CityRetriever":
        """Build from a candidate-cell table with columns `cell_id, lat, lon, x, y, poi_frequency` (and, when the
        city keeps them, `poi_counts` and `top_categories`), the city's grid (`Grid` or its dict, as in city.json), its
        duration cap and its POI class names."""
        missing = [c for c in ("cell_id", "lat", "lon", "x", "y", "poi_frequency") if c not in cells.columns]
        if missing:
            raise ValueError(f"city {name!r}: candidate cells lack columns {missing}")
        return cls(
            name=name,
            cell_ids=cells["cell_id"].to_numpy(),
            xy=cells[["x", "y"]].to_numpy(dtype=np.float64),
            latlon=cells[["lat", "lon"]].to_numpy(dtype=np.float64),
            poi_frequency=np.stack([np.asarray(v, dtype=np.float32) for v in cells["poi_frequency"]]),
            coordinate_mean=coordinate_mean,
            coordinate_std=coordinate_std,
            metadata=dict(metadata or {}),
            grid=grid,
            max_duration_hours=max_duration_hours,
            poi_classes=poi_classes,
            poi_counts=(np.stack([np.asarray(v, dtype=np.int64) for v in cells["poi_counts"]])
                        if "poi_counts" in cells.columns else None),
            top_categories=_named_cells(cells["top_categories"]) if "top_categories" in cells.columns else None,
        )

    @classmethod
    def from_city(cls, city: Mapping[str, Any], cells: Any) -> "CityRetriever":
        """From a built city: its `city.json` (name, coordinate statistics, grid, duration cap, POI classes) and its
        `cells.parquet` table."""
        return cls.from_cells(city["city"], cells, city["coordinate_mean"], city["coordinate_std"],
                              grid=city.get("grid"),
                              max_duration_hours=city.get("max_duration_hours", DEFAULT_MAX_DURATION_HOURS),
                              poi_classes=city.get("poi_classes"))

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> "CityRetriever":
        """From a city folder built by `dataset_scripts/build_city.py`: its `city.json` and `cells.parquet` only, for
        inference in a new city (`load_city_splits` reads the same two files beside the records and splits)."""
        import pandas as pd  # the cells table's reader; the model itself never needs pandas

        folder = Path(path).expanduser()
        missing = [name for name in ("city.json", "cells.parquet") if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{str(path)!r} is not a built city folder (missing {missing})")
        city = json.loads((folder / "city.json").read_text(encoding="utf-8"))
        return cls.from_city(city, pd.read_parquet(folder / "cells.parquet"))

    @property
    def num_cells(self) -> int:
        return len(self.cell_ids)

    @cached_property
    def tree(self) -> cKDTree:
        return cKDTree(self.xy)

    @cached_property
    def poi_table(self) -> np.ndarray:
        """`(max cell id + 1, C)` float32: the POI frequencies indexed by cell id (0 for ids that are no cell), which
        is how records, which carry cell ids, read them."""
        table = np.zeros((int(self.cell_ids.max()) + 1, self.poi_frequency.shape[1]), dtype=np.float32)
        table[self.cell_ids] = self.poi_frequency
        return table

    @cached_property
    def _id_order(self) -> np.ndarray:
        return np.argsort(self.cell_ids, kind="stable")

    def rows_of(self, cell_ids: Any) -> np.ndarray:
        """Row of each cell id in `cell_ids` / `xy` / `poi_frequency`; -1 where the id is not a cell of this city."""
        ids = np.asarray(cell_ids, dtype=np.int64)
        sorted_ids = self.cell_ids[self._id_order]
        positions = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[positions] == ids, self._id_order[positions], -1)

    @cached_property
    def _grid_keys_inside(self) -> np.ndarray:
        _, _, inside = self.grid.locate(self.xy[:, 0], self.xy[:, 1])
        return inside

    @cached_property
    def _grid_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Grid key of every cell (its centroid lies mid-cell), sorted, and the retriever row of each."""
        row, col, _ = self.grid.locate(self.xy[:, 0], self.xy[:, 1])
        keys = self.grid.key(row, col)
        order = np.argsort(keys, kind="stable")
        return keys[order], order

    @cached_property
    def cell_spacing(self) -> float:
        """Projected cell size: the grid's, or for a retriever without a grid the smallest spacing between centroid
        coordinates along x or y (exact whenever two candidate cells are adjacent)."""
        if self.grid is not None:
            return float(self.grid.cell_size_projected)
        gaps = np.concatenate([np.diff(np.unique(np.round(self.xy[:, axis], 3))) for axis in (0, 1)])
        if not len(gaps):
            raise ValueError(f"city {self.name!r} has a single candidate cell: its grid size cannot be inferred")
        return float(gaps.min())

    def locate(self, points: Any) -> tuple[np.ndarray, np.ndarray]:
        """The cell holding each projected point, by the rule the dataset builder used: `(rows, inside)`.

        `rows` (M,) is the retriever row of the candidate cell holding the point (-1 where no candidate cell does:
        a cell the builder kept out had no POI and no record); `inside` (M,) is False for a point outside the city's
        area (the builder drops such records). With a grid that is `Grid.locate`; without one (older files) a point
        lies in the cell whose centroid is within half `cell_spacing` on both axes, and the area is the cells'
        bounding box grown by half a cell.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if self.grid is not None:
            row, col, inside = self.grid.locate(points[:, 0], points[:, 1])
            sorted_keys, rows_of_keys = self._grid_keys
            keys = self.grid.key(row, col)
            position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
            found = inside & (sorted_keys[position] == keys)
            return np.where(found, rows_of_keys[position], -1), inside
        half = self.cell_spacing / 2.0
        # The spacing is read from centroids rounded to the millimetre, so it may be up to 1 mm short.
        tolerance = 2e-3
        low, high = self.xy.min(axis=0) - half - tolerance, self.xy.max(axis=0) + half + tolerance
        inside = ~((points < low) | (points > high)).any(axis=1)
        _, nearest = self.tree.query(points, k=1)
        nearest = np.asarray(nearest).reshape(-1)
        # Voronoi cells of a square lattice are the grid squares: the nearest centroid is the own cell's, if kept.
        within = (np.abs(points - self.xy[nearest]) <= half + tolerance).all(axis=1)
        return np.where(within & inside, nearest, -1), inside

    def check_k(self, k: Any) -> None:
        """How many cells a ranking of this city may list: the one rule (and message) of every entry point that takes
        a `k` for a city (the pipeline, `model.predict`, `query`, the mixture ranking)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.num_cells:
            raise ValueError(f"k={k!r}: expected an integer from 1 to the {self.num_cells} candidate cells of city "
                             f"{self.name!r}")

    def query(self, points: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cells nearest to each projected point: `(cell_ids (M, k), distances in metres (M, k))`."""
        self.check_k(k)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(points).all():
            raise ValueError(f"points for city {self.name!r} hold NaN or inf coordinates")
        distances, rows = self.tree.query(points, k=int(k))
        rows = np.asarray(rows).reshape(len(points), int(k))
        distances = np.asarray(distances).reshape(len(points), int(k))
        return self.cell_ids[rows], distances

    def to_tensors(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = {
            f"{prefix}.cell_ids": self.cell_ids,
            f"{prefix}.xy": self.xy,
            f"{prefix}.latlon": self.latlon,
            f"{prefix}.poi_frequency": self.poi_frequency,
        }
        if self.poi_counts is not None:
            arrays[f"{prefix}.poi_counts"] = self.poi_counts
        if self.top_categories is not None:
            arrays[f"{prefix}.top_categories"] = self._category_codes[1]
        return arrays

    @cached_property
    def _category_codes(self) -> tuple[list[str], np.ndarray]:
        """`top_categories` as arrays are saved: the names (JSON) and `(N, m)` int32 indices into them, -1 padded."""
        names = sorted({name for cell in self.top_categories for name in cell})
        index = {name: code for code, name in enumerate(names)}
        codes = np.full((self.num_cells, max(map(len, self.top_categories), default=0)), -1, dtype=np.int32)
        for row, cell in enumerate(self.top_categories):
            codes[row, :len(cell)] = [index[name] for name in cell]
        return names, codes

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_cells": self.num_cells,
            "coordinate_mean": self.coordinate_mean.tolist(),
            "coordinate_std": self.coordinate_std.tolist(),
            "metadata": self.metadata,
            **({"grid": self.grid.to_dict()} if self.grid is not None else {}),
            "max_duration_hours": self.max_duration_hours,
            **({"poi_classes": self.poi_classes} if self.poi_classes is not None else {}),
            **({"category_names": self._category_codes[0]} if self.top_categories is not None else {}),
        }


def _named_cells(column: Any) -> list[list[str]] | None:
    """A cells table's `top_categories` column; None when no cell has a name (the city's POIs carry none)."""
    cells = [[] if names is None else [str(name) for name in names] for names in column]
    return cells if any(cells) else None


def _decoded_categories(codes: np.ndarray | None, names: Sequence[str] | None,
                        city: str) -> list[list[str]] | None:
    """`top_categories` from what `CityRetriever.to_tensors` and `to_json_dict` saved (None when the file has none)."""
    if codes is None:
        return None
    if names is None or (codes.size and int(codes.max()) >= len(names)):
        raise ValueError(f"{RETRIEVERS_CONFIG_NAME}: city {city!r} has top_categories codes beyond its "
                         f"category_names ({None if names is None else len(names)} names)")
    return [[names[code] for code in row if code >= 0] for row in codes]


@dataclass(frozen=True)
class CityRows:
    """The samples of one city in a batch: their row numbers and the city's retriever."""

    retriever: CityRetriever
    rows: np.ndarray  # (n,) int64, in batch order


def city_groups(city: str | Sequence[str], batch_size: int,
                retriever_of: Callable[[str], CityRetriever]) -> list[CityRows]:
    """Each city's rows in a batch (a batch may mix cities), in order of first appearance: `city` is one name for the
    whole batch or one per sample; `retriever_of` names an unknown city."""
    names = [city] * batch_size if isinstance(city, str) else list(city)
    if len(names) != batch_size:
        raise ValueError(f"city holds {len(names)} names for a batch of {batch_size}")
    rows: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        rows.setdefault(name, []).append(index)
    return [CityRows(retriever_of(name), np.array(indices, dtype=np.int64)) for name, indices in rows.items()]


def save_retrievers(retrievers: Mapping[str, CityRetriever], save_directory: str | os.PathLike) -> None:
    """Write every city's arrays into one safetensors file and their names, statistics and grids into one JSON file."""
    from safetensors.numpy import save_file

    os.makedirs(save_directory, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    cities = []
    for index, retriever in enumerate(retrievers.values()):
        arrays.update(retriever.to_tensors(f"cities.{index}"))
        cities.append(retriever.to_json_dict())
    index_json = {"format_version": RETRIEVERS_FORMAT_VERSION, "cities": cities}
    with open(os.path.join(save_directory, RETRIEVERS_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(index_json, f, indent=2)
    if arrays:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, os.path.join(save_directory, RETRIEVERS_WEIGHTS_NAME))


def load_retrievers(config_file: str, weights_file: str | None) -> dict[str, CityRetriever]:
    """Read retrievers written by `save_retrievers`; a damaged file raises a `ValueError` naming it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        with open(config_file, encoding="utf-8") as f:
            index_json = json.load(f)
        cities = index_json["cities"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{config_file}: not a valid {RETRIEVERS_CONFIG_NAME} ({error})") from error
    if not cities:
        return {}
    if weights_file is None:
        raise ValueError(f"{RETRIEVERS_CONFIG_NAME} lists {len(cities)} cities but {RETRIEVERS_WEIGHTS_NAME} is missing")
    try:
        arrays = load_file(weights_file)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{weights_file}: cannot read retriever arrays ({error})") from error
    retrievers = {}
    for index, city in enumerate(cities):
        prefix = f"cities.{index}"
        try:
            retrievers[city["name"]] = CityRetriever(
                name=city["name"],
                cell_ids=arrays[f"{prefix}.cell_ids"],
                xy=arrays[f"{prefix}.xy"],
                latlon=arrays[f"{prefix}.latlon"],
                poi_frequency=arrays[f"{prefix}.poi_frequency"],
                coordinate_mean=city["coordinate_mean"],
                coordinate_std=city["coordinate_std"],
                metadata=city.get("metadata", {}),
                grid=city.get("grid"),  # absent in files written before the grid was stored
                max_duration_hours=city.get("max_duration_hours", DEFAULT_MAX_DURATION_HOURS),  # likewise
                poi_classes=city.get("poi_classes"),  # likewise
                poi_counts=arrays.get(f"{prefix}.poi_counts"),  # likewise
                top_categories=_decoded_categories(arrays.get(f"{prefix}.top_categories"),
                                                   city.get("category_names"), city["name"]),  # likewise
            )
        except KeyError as error:
            raise ValueError(f"{weights_file}: missing array {error} of city {city.get('name')!r}") from error
    return retrievers


__all__ = ["CityRetriever", "CityRows", "city_groups", "save_retrievers", "load_retrievers", "RETRIEVERS_CONFIG_NAME", "RETRIEVERS_WEIGHTS_NAME"]
