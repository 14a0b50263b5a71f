"""What a city build is asked for (`BuildConfig`) and what it gives back (`BuildResult`), and how a built city is
written (`write_city_tables`): shared by the in-process build (`build.py`) and the partitioned one (`partitioned.py`).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..modeling.records_nextlocllm import DEFAULT_ENCODING, DEFAULT_MAX_DURATION_HOURS, text_codec
from ..outputs import replacing_folder
from .card import dataset_card
from .cells import CANDIDATE_RULES, POI_NORMALIZATIONS
from .city_dataset import DATASET_CARD_NAME
from .features import cell_features, city_features, window_features
from .formats import READERS, ReadOptions
from .report import BuildReport
from .windows import DEFAULT_SHARD_ROWS, CityRecords, write_records

DEFAULT_MAX_GAP_HOURS = {"yjmob": 24.0}


@dataclass
class BuildConfig:
    """Everything a build is asked for (`dataset_scripts/build_city.py`'s options): `validate` refuses a bad value
    before any work."""

    city: str
    format: str = "csv"
    input: str | None = None
    pois: str | None = None
    output: str | None = None
    cell_size_m: float = 500.0
    history_length: int = 40
    current_length: int = 5
    stride: int = 3
    split: str = "user"
    split_fractions: tuple = (0.7, 0.1, 0.2)
    seed: int = 0
    candidates: str = "poi"
    poi_normalization: str = "max"
    max_gap_hours: float | None = None  # None: the format's default (no cut, YJMob 24 h)
    max_duration_hours: float = DEFAULT_MAX_DURATION_HOURS
    drop_duplicates: bool = True
    bbox: tuple | None = None  # (lat_min, lon_min, lat_max, lon_max)
    columns: dict | None = None
    poi_columns: dict | None = None
    time_format: str | None = None
    time_unit: str | None = None
    timezone: str | None = None
    category_map: str | None = None
    encoding: str = DEFAULT_ENCODING  # of the input and POI text files
    max_invalid_fraction: float = 0.05
    stay_distance_m: float = 200.0
    stay_min_minutes: float = 20.0
    synthetic: dict = field(default_factory=dict)
    show_progress: bool = True
    overwrite: bool = False  # replace a city already in `output` (never a folder holding anything else)
    # The source data's terms, as the user gives them, for the dataset card: a Hub license id, the terms in words and
    # the citation the source asks for.
    license: str = "unknown"
    license_terms: str | None = None
    citation: str | None = None
    shard_rows: int = DEFAULT_SHARD_ROWS  # records per records shard at most (whole users)
    # The partitioned build (`partitioned.py`): 0 builds in this process; N >= 1 builds by N user partitions on Dask,
    # each worker holding one partition at a time, with `scheduler` (synchronous, threads, processes or a
    # distributed scheduler's address), `workers` (processes or threads; default: the cores) and the input read in
    # blocks of `block_size`.
    partitions: int = 0
    scheduler: str = "processes"
    workers: int | None = None
    block_size: str = "64MB"

    def segment_gap_hours(self) -> float | None:
        """The gap that cuts a user's records into segments: `max_gap_hours`, or the format's default (None: none)."""
        return self.max_gap_hours if self.max_gap_hours is not None else DEFAULT_MAX_GAP_HOURS.get(self.format)

    def validate(self) -> None:
        if self.format not in READERS:
            raise ValueError(f"unknown format {self.format!r}; choose from {sorted(READERS)}")
        text_codec(self.encoding)  # an unknown encoding is refused before any work
        if self.format != "synthetic" and not self.input:
            raise ValueError(f"--input is required for --format {self.format}")
        if not self.city or any(c in self.city for c in "/\\"):
            raise ValueError(f"invalid city name {self.city!r}")
        for name in ("history_length", "current_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 1")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", self.license or ""):
            raise ValueError(f"license={self.license!r}: expected a Hub license id such as cc-by-4.0, other or unknown")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.partitions < 0:
            raise ValueError(f"partitions={self.partitions!r}: expected 0 (in process) or a number of partitions >= 1")
        if self.scheduler not in ("synchronous", "threads", "processes") and "://" not in self.scheduler:
            raise ValueError(f"scheduler={self.scheduler!r}: expected synchronous, threads, processes or a "
                             f"dask.distributed scheduler address such as tcp://host:8786")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers={self.workers!r}: expected an integer >= 1")
        if self.shard_rows < 1:
            raise ValueError(f"shard_rows={self.shard_rows!r}: expected an integer >= 1")
        if self.cell_size_m <= 0:
            raise ValueError(f"cell size must be > 0, got {self.cell_size_m}")
        if self.split not in ("user", "time"):
            raise ValueError(f"split must be 'user' or 'time', got {self.split!r}")
        f = np.asarray(self.split_fractions, dtype=np.float64)
        if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6 or f[0] <= 0:
            raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {self.split_fractions}")
        if self.candidates not in CANDIDATE_RULES:
            raise ValueError(f"unknown candidates rule {self.candidates!r}; choose from {CANDIDATE_RULES}")
        if self.poi_normalization not in POI_NORMALIZATIONS:
            raise ValueError(f"unknown POI normalization {self.poi_normalization!r}; choose from {POI_NORMALIZATIONS}")


@dataclass
class BuildResult:
    """A built city in memory: its windows per split over its records, cells, metadata (`city.json`) and report."""

    windows: dict  # split name -> pyarrow Table of windows (city, user_id, start)
    records: CityRecords  # the kept records as the windows see them (in memory; memory-mapped when partitioned)
    record_columns: dict | None  # the kept records' columns (`windows.RECORDS_SCHEMA`); None: already files
    record_bounds: list  # the records shards' row ranges
    cells: pd.DataFrame
    metadata: dict  # what city.json holds
    report: BuildReport

    def samples(self, split: str) -> pa.Table:
        """The split's samples, every field gathered (`features.city_features`): for small cities and inspection."""
        table = self.windows[split]
        fields = self.records.gather(table.column("start").to_numpy())
        H, L = self.metadata["history_length"], self.metadata["current_length"]
        schema = city_features(H, L, len(self.metadata["poi_classes"])).arrow_schema
        columns = {"city": table.column("city"), "user_id": table.column("user_id"),
                   **{name: _nested(values) for name, values in fields.items()}}
        return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)

    def save(self, output, show_progress: bool = True) -> Path:
        """Write the records shards, ``train/validation/test.parquet`` (the windows), ``cells.parquet`` (with HF
        Features), ``city.json`` and the dataset card.

        They are written into a temporary sibling that replaces ``output`` once complete: an interrupted save leaves
        the folder as it was. Whether ``output`` may be replaced is the caller's decision (``build_and_save``)."""
        import datasets

        was_disabled = datasets.utils.are_progress_bars_disabled()
        if not show_progress:
            datasets.disable_progress_bars()
        try:
            with replacing_folder(output) as partial:
                self._save(partial)
            return Path(output)
        finally:
            if not show_progress and not was_disabled:
                datasets.enable_progress_bars()

    def _save(self, out: Path) -> None:
        if self.record_columns is None:  # a partitioned build's records, written where it built
            for path in self.records.files:
                shutil.copy(path, out / Path(path).name)
        else:
            write_records(out, self.record_columns, self.record_bounds)
        write_city_tables(out, self.windows, self.cells, self.metadata)


def write_city_tables(out: Path, windows: dict, cells: pd.DataFrame, metadata: dict) -> None:
    """Everything of a city folder but its records: the splits' windows, the cells, city.json and the card."""
    from datasets import Dataset, DatasetInfo

    for name, table in windows.items():
        Dataset(table, info=DatasetInfo(features=window_features())).to_parquet(str(out / f"{name}.parquet"))
    cf = cell_features(len(metadata["poi_classes"]))
    Dataset.from_pandas(cells, features=cf, preserve_index=False).to_parquet(str(out / "cells.parquet"))
    with open(out / "city.json", "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=1, ensure_ascii=False, default=_json_default)
    dataset_card([json.loads(json.dumps(metadata, default=_json_default))]).save(out / DATASET_CARD_NAME)


def _nested(values: np.ndarray) -> pa.Array:
    """A numpy array as an Arrow array, its trailing dimensions as fixed-size lists."""
    array = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o)}")


def read_options(cfg: BuildConfig) -> ReadOptions:
    """What the format readers take of the config (both builds read with it)."""
    return ReadOptions(columns=cfg.columns, poi_columns=cfg.poi_columns, time_format=cfg.time_format,
                       time_unit=cfg.time_unit, timezone=cfg.timezone, max_invalid_fraction=cfg.max_invalid_fraction,
                       stay_distance_m=cfg.stay_distance_m, stay_min_minutes=cfg.stay_min_minutes,
                       show_progress=cfg.show_progress, encoding=cfg.encoding,
                       extra={"synthetic": {"city": cfg.city, "seed": cfg.seed, **(cfg.synthetic or {})}})


__all__ = ["BuildConfig", "BuildResult", "DEFAULT_MAX_GAP_HOURS", "read_options", "write_city_tables"]
