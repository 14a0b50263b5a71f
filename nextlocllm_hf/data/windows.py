"""A city's records, stored once, and its samples as windows over them (city format version 2).

A sample is `H + L + 1` consecutive records of one user's segment (history, current, target). Format 1 stored every
sample's records, so each record was written about `(H + L + 1) / stride` times (15x at the defaults) and a split had
to be read whole into memory. Format 2 stores

- the records once, sorted by (user, time), in Arrow shards (`records-00000-of-00004.arrow`, the IPC stream format
  `datasets` keeps its own data in, so `datasets.Dataset.from_file` reads one), each one record batch holding whole
  users, uncompressed so that it is memory-mapped and read without a copy: `ts` (UTC seconds),
  `x`/`y` (Web Mercator metres), local `day`/`hour`, `duration` (hours to the next record of the segment, clipped;
  NaN at a segment's end) and `cell`;
- each split as windows: `city`, `user_id` and `start`, the row (over all shards, in order) of the window's first
  record.

`CityRecords.gather` assembles the sample fields of any windows (the leakage-free duration rule of
`records_nextlocllm` included) and, on request, each window's user's earlier records (`past_*`: every stored record
of the user up to the window's last input record, the most recent `max_past_records`; the store keeps the segments
long enough for a window), and `WindowView`, the `datasets` transform `load_city_splits` sets, shows a split as
the samples it stands for: `split[i]` is the same dict of fields format 1 stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..modeling.configuration_nextlocllm import NextLocLLMConfig
from ..modeling.history_nextlocllm import PAST_COLUMNS
from ..modeling.records_nextlocllm import hours_between, leakage_free_durations
from .features import SEQUENCE_FIELDS, TARGET_FIELDS

FORMAT_VERSION = 2
RECORDS_PATTERN = "records-*.arrow"
RECORDS_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("ts", pa.int64()),
    ("x", pa.float64()),
    ("y", pa.float64()),
    ("day", pa.int8()),
    ("hour", pa.int8()),
    ("duration", pa.float64()),
    ("cell", pa.int64()),
])
NUMERIC_RECORD_COLUMNS = tuple(name for name in RECORDS_SCHEMA.names if name != "user_id")
WINDOW_SCHEMA = pa.schema([("city", pa.string()), ("user_id", pa.string()), ("start", pa.int64())])
# Rows per records shard at most (whole users, so a shard may hold more when one user alone does).
DEFAULT_SHARD_ROWS = 4_000_000
SAMPLE_FIELDS = (*(f"{part}_{field}" for part in ("history", "current") for field in SEQUENCE_FIELDS), *TARGET_FIELDS)
# The user's records up to the present (the window's last input), left-padded to the longest of a gather.
PAST_FIELDS = PAST_COLUMNS
GATHERED_FIELDS = (*SAMPLE_FIELDS, *PAST_FIELDS)


def user_first_rows(new_user: np.ndarray) -> np.ndarray:
    """Per row of records sorted by user, the row of its user's first record (`new_user[i]`: row i starts a user)."""
    starts = np.flatnonzero(new_user)
    return starts[np.searchsorted(starts, np.arange(len(new_user)), side="right") - 1].astype(np.int64)


def records_file_name(index: int, count: int) -> str:
    return f"records-{index:05d}-of-{count:05d}.arrow"


def shard_bounds(user_codes: np.ndarray, max_rows: int = DEFAULT_SHARD_ROWS) -> list[tuple[int, int]]:
    """`(begin, end)` row ranges of at most `max_rows` rows (more when one user alone has more) cut between users,
    for records sorted by user: a window never crosses a shard."""
    n = len(user_codes)
    user_starts = np.flatnonzero(np.r_[True, user_codes[1:] != user_codes[:-1]]) if n else np.zeros(0, np.int64)
    bounds, begin = [], 0
    while begin < n:
        if begin + max_rows >= n:
            end = n
        else:
            last = int(user_starts[np.searchsorted(user_starts, begin + max_rows, side="right") - 1])
            later = user_starts[np.searchsorted(user_starts, begin, side="right"):]
            end = last if last > begin else (int(later[0]) if len(later) else n)
        bounds.append((begin, end))
        begin = end
    return bounds


def write_records(folder: str | os.PathLike, columns: Mapping[str, np.ndarray], bounds: Sequence[tuple[int, int]],
                  first: int = 0, count: int | None = None) -> list[str]:
    """Write the records (`RECORDS_SCHEMA` columns, `user_id` as strings) as one Arrow IPC stream file per row range
    of `bounds`, each a single record batch, numbered from `first` of `count` files (a partition writes some of a
    city's files); returns the file names."""
    folder = Path(folder)
    names = [records_file_name(first + i, count or len(bounds)) for i in range(len(bounds))]
    for name, (begin, end) in zip(names, bounds):
        arrays = [pa.array(np.asarray(columns[field.name][begin:end]), type=field.type) for field in RECORDS_SCHEMA]
        batch = pa.RecordBatch.from_arrays(arrays, schema=RECORDS_SCHEMA)
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, RECORDS_SCHEMA) as writer:
            writer.write_batch(batch)
    return names


def windows_table(city: str, user_ids: np.ndarray, starts: np.ndarray) -> pa.Table:
    """A split's windows: `city`, `user_id`, `start` (first record's row)."""
    return pa.Table.from_arrays([pa.array(np.full(len(starts), city, dtype=object), type=pa.string()),
                                 pa.array(np.asarray(user_ids, dtype=object), type=pa.string()),
                                 pa.array(np.asarray(starts, dtype=np.int64))], schema=WINDOW_SCHEMA)


class CityRecords:
    """One city's records, memory-mapped, and its cells' POI frequencies: the sample fields of any windows."""

    def __init__(self, files: Sequence[str | os.PathLike], poi_frequency: np.ndarray, history_length: int,
                 current_length: int):
        """`files`: the records shards in order; `poi_frequency`: `(max cell id + 1, C)` the POI frequencies by cell
        id (`CityRetriever.poi_table`), which is how a record's cell reads them."""
        self.files = [str(f) for f in files]
        self.poi_frequency = np.asarray(poi_frequency, dtype=np.float32)
        self.history_length, self.current_length = int(history_length), int(current_length)
        self._open()

    @classmethod
    def from_arrays(cls, columns: Mapping[str, np.ndarray], bounds: Sequence[tuple[int, int]],
                    poi_frequency: np.ndarray, history_length: int, current_length: int) -> "CityRecords":
        """Records held in memory (the builder's, before they are written), cut into the shards of `bounds`."""
        records = cls.__new__(cls)
        records.files = []
        records.poi_frequency = np.asarray(poi_frequency, dtype=np.float32)
        records.history_length, records.current_length = int(history_length), int(current_length)
        users = np.asarray(columns["user_id"])
        records._set_shards([{**{name: np.asarray(columns[name][begin:end]) for name in NUMERIC_RECORD_COLUMNS},
                              "user_first": user_first_rows(np.r_[True, users[begin + 1:end] != users[begin:end - 1]])}
                             for begin, end in bounds])
        return records

    def _open(self) -> None:
        shards = []
        for path in self.files:
            table = pa.ipc.open_stream(pa.memory_map(path, "r")).read_all()
            if table.schema.remove_metadata() != RECORDS_SCHEMA:
                raise ValueError(f"{path}: records schema {table.schema} is not {RECORDS_SCHEMA}")
            # One record batch per shard: every numeric column is one zero-copy view of the mapped file.
            shard = {name: table.column(name).combine_chunks().to_numpy(zero_copy_only=True)
                     for name in NUMERIC_RECORD_COLUMNS}
            users = table.column("user_id").combine_chunks()
            changed = pc.not_equal(users.slice(1), users.slice(0, max(len(users) - 1, 0)))
            shard["user_first"] = user_first_rows(np.r_[True, changed.to_numpy(zero_copy_only=False)][:len(users)])
            shards.append(shard)
        self._set_shards(shards)

    def _set_shards(self, shards: list[dict[str, np.ndarray]]) -> None:
        self._shards = shards
        self.offsets = np.cumsum([0, *(len(shard["ts"]) for shard in shards)]).astype(np.int64)
        self._blank = {name: np.zeros(0, dtype=RECORDS_SCHEMA.field(name).type.to_pandas_dtype())
                       for name in NUMERIC_RECORD_COLUMNS}
        self._blank["user_first"] = np.zeros(0, dtype=np.int64)

    def __getstate__(self) -> dict:  # DataLoader workers reopen the files rather than copy the arrays
        if not self.files:
            return dict(self.__dict__)
        return {key: value for key, value in self.__dict__.items() if key not in ("_shards", "offsets", "_blank")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "_shards" not in state:
            self._open()

    @property
    def window_length(self) -> int:
        return self.history_length + self.current_length + 1

    @property
    def num_records(self) -> int:
        return int(self.offsets[-1])

    def gather(self, starts: np.ndarray, fields: Iterable[str] = SAMPLE_FIELDS,
               max_past_records: int = NextLocLLMConfig.max_past_records) -> dict[str, np.ndarray]:
        """The sample `fields` (names and dtypes of `features.city_features`, and `PAST_FIELDS`: the user's most recent
        `max_past_records` records up to the last input one) of the windows starting at `starts`."""
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        fields = list(fields)
        unknown = sorted(set(fields) - set(GATHERED_FIELDS))
        if unknown:
            raise ValueError(f"unknown sample fields {unknown}; known: {list(GATHERED_FIELDS)}")
        if isinstance(max_past_records, bool) or not isinstance(max_past_records, (int, np.integer)) \
                or max_past_records < 1:
            raise ValueError(f"max_past_records={max_past_records!r}: expected a positive integer")
        if len(starts) and (starts.min() < 0 or starts.max() + self.window_length > self.num_records):
            bad = int(starts[(starts < 0) | (starts + self.window_length > self.num_records)][0])
            raise ValueError(f"window start {bad} is outside the {self.num_records} records")
        if not len(starts):
            return self._gather_shard(self._blank, starts, fields)
        shard_of = np.searchsorted(self.offsets, starts, side="right") - 1
        past_length = 0
        if any(name in PAST_FIELDS for name in fields):
            ends = starts + self.history_length + self.current_length  # one past the last input record
            firsts = np.empty(len(starts), dtype=np.int64)
            for shard in np.unique(shard_of):  # per shard, not per window: this runs for every batch
                rows, offset = shard_of == shard, self.offsets[shard]
                firsts[rows] = offset + self._shards[shard]["user_first"][starts[rows] - offset]
            past_length = int(np.minimum(ends - firsts, max_past_records).max())
        out: dict[str, np.ndarray] = {}
        for shard in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == shard)
            part = self._gather_shard(self._shards[shard], starts[rows] - self.offsets[shard], fields, past_length)
            for name, values in part.items():
                if name not in out:
                    out[name] = np.empty((len(starts), *values.shape[1:]), dtype=values.dtype)
                out[name][rows] = values
        return out

    def _gather_shard(self, records: Mapping[str, np.ndarray], local: np.ndarray, fields: list[str],
                      past_length: int = 0) -> dict:
        H, L = self.history_length, self.current_length
        if local.size and local.max() + self.window_length > len(records["ts"]):
            raise ValueError("a window crosses the end of its records shard")
        index = local[:, None] + np.arange(self.window_length, dtype=np.int64)[None, :]
        inputs, target = index[:, :H + L], index[:, -1]
        durations = fill = None
        if any(f.endswith("_duration") for f in fields):
            durations, fill = leakage_free_durations(records["duration"][inputs])
        out = {}
        for part, columns in (("history", slice(0, H)), ("current", slice(H, H + L))):
            rows = inputs[:, columns]
            for field in SEQUENCE_FIELDS:
                name = f"{part}_{field}"
                if name not in fields:
                    continue
                if field == "coordinates":
                    out[name] = np.stack([records["x"][rows], records["y"][rows]], axis=-1)
                elif field in ("day", "hour"):
                    out[name] = records[field][rows].astype(np.int64)
                elif field == "duration":
                    out[name] = durations[:, columns].astype(np.float32)
                elif field == "poi":
                    out[name] = self.poi_frequency[records["cell"][rows]]
                else:
                    out[name] = records["cell"][rows].astype(np.int64)
        if "target_coordinates" in fields:
            out["target_coordinates"] = np.stack([records["x"][target], records["y"][target]], axis=-1)
        if "target_cell" in fields:
            out["target_cell"] = records["cell"][target].astype(np.int64)
        for field in ("day", "hour"):
            if f"target_{field}" in fields:
                out[f"target_{field}"] = records[field][target].astype(np.int64)
        if "target_duration" in fields:
            own = records["duration"][target].astype(np.float64)
            unknown = np.isnan(own)  # a segment's last record: no next record, the sample's median stands in
            own[unknown] = fill[unknown]
            out["target_duration"] = own.astype(np.float32)
        if "target_time_gap" in fields:
            out["target_time_gap"] = hours_between(records["ts"][inputs[:, -1]], records["ts"][target]).astype(
                np.float32)
        if any(name in PAST_FIELDS for name in fields):
            out.update(self._past(records, inputs[:, -1], past_length))
        return out

    @staticmethod
    def _past(records: Mapping[str, np.ndarray], last: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """`PAST_FIELDS` of windows whose last input record is row `last`: the `length` rows up to it, left-padded
        where the user has fewer records (padding: mask False, cell -1, zeros)."""
        index = last[:, None] - np.arange(length - 1, -1, -1, dtype=np.int64)[None, :]
        mask = index >= records["user_first"][last][:, None]
        safe = np.where(mask, index, last[:, None])
        hours = hours_between(records["ts"][safe], records["ts"][last][:, None])
        return {
            "past_cell": np.where(mask, records["cell"][safe], -1).astype(np.int64),
            "past_day": np.where(mask, records["day"][safe], 0).astype(np.int64),
            "past_hour": np.where(mask, records["hour"][safe], 0).astype(np.int64),
            "past_hours_ago": np.where(mask, hours, 0.0).astype(np.float32),
            "past_mask": mask,
        }


class WindowView:
    """The `datasets` transform of a windowed split: rows of windows (`city`, `user_id`, `start`) in, the samples
    they stand for out, gathered from each city's `CityRecords`."""

    def __init__(self, records: Mapping[str, CityRecords]):
        self.records = dict(records)

    def arrays(self, cities: np.ndarray, starts: np.ndarray, fields: Iterable[str] = SAMPLE_FIELDS,
               max_past_records: int = NextLocLLMConfig.max_past_records) -> dict[str, np.ndarray]:
        """The sample `fields` of windows given by their city names and starts, as numpy arrays (`PAST_FIELDS` padded
        to the longest past of all the windows)."""
        cities, starts, fields = np.asarray(cities).astype(str), np.asarray(starts, dtype=np.int64), list(fields)
        unknown = sorted(set(np.unique(cities).tolist()) - set(self.records))
        if unknown:
            raise ValueError(f"windows of cities {unknown} without records; known: {sorted(self.records)}")
        if not len(starts):
            return next(iter(self.records.values())).gather(starts, fields, max_past_records)
        parts = {city: self.records[city].gather(starts[cities == city], fields, max_past_records)
                 for city in np.unique(cities)}
        past_length = max((part["past_mask"].shape[1] for part in parts.values() if "past_mask" in part), default=0)
        out: dict[str, np.ndarray] = {}
        for city, part in parts.items():
            rows = np.flatnonzero(cities == city)
            for name, values in part.items():
                if name in PAST_FIELDS:  # each city's past is padded to its own longest: pad to the batch's
                    values = _left_pad(values, past_length, -1 if name == "past_cell" else 0)
                if name not in out:
                    out[name] = np.empty((len(starts), *values.shape[1:]), dtype=values.dtype)
                out[name][rows] = values
        return out

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        arrays = self.arrays(batch["city"], batch["start"])
        return {"city": list(batch["city"]), "user_id": list(batch["user_id"]),
                **{name: arrays[name].tolist() for name in SAMPLE_FIELDS}}


def _left_pad(values: np.ndarray, length: int, fill) -> np.ndarray:
    missing = length - values.shape[1]
    if missing <= 0:
        return values
    return np.concatenate([np.full((len(values), missing), fill, dtype=values.dtype), values], axis=1)


def window_view_of(rows) -> WindowView | None:
    """The `WindowView` a `datasets.Dataset` is formatted with, if it is a windowed split."""
    fmt = getattr(rows, "format", None)
    if not isinstance(fmt, Mapping) or fmt.get("type") != "custom":
        return None
    transform = (fmt.get("format_kwargs") or {}).get("transform")
    return transform if isinstance(transform, WindowView) else None


def windowed(dataset, view: WindowView):
    """`dataset` (rows of windows) shown through `view`; `datasets` keeps it through `select`, `shuffle`..."""
    return dataset.with_transform(view)


def concatenate_windows(datasets: Sequence) -> object:
    """`datasets.concatenate_datasets` of windowed splits, shown through all their cities' records (concatenation
    alone drops the transforms)."""
    from datasets import concatenate_datasets

    views = [window_view_of(d) for d in datasets]
    if any(view is None for view in views):
        raise ValueError("concatenate_windows takes windowed splits (from load_city_splits / load_cities)")
    records: dict[str, CityRecords] = {}
    for view in views:
        records.update(view.records)
    plain = [d.with_format(None) for d in datasets]
    return windowed(concatenate_datasets(plain), WindowView(records))


__all__ = ["FORMAT_VERSION", "RECORDS_PATTERN", "RECORDS_SCHEMA", "WINDOW_SCHEMA", "SAMPLE_FIELDS", "CityRecords",
           "WindowView", "concatenate_windows", "records_file_name", "shard_bounds", "window_view_of", "windowed",
           "windows_table", "write_records"]
