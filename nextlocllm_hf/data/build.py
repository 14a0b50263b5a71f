"""Build a city dataset folder from raw input: the logic behind ``dataset_scripts/build_city.py``.

Pipeline (vectorized pandas/numpy; no per-record Python loop): read (format reader) -> clean
(missing users, invalid/zero coordinates, bbox, exact duplicates) -> project to Web Mercator ->
grid -> POIs (classify, count per cell) -> candidate cells and POI frequencies -> segments,
durations -> sliding windows -> split -> train-only statistics -> parquet + city.json.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from ..evaluate import MAX_RANK
from ..locks import exclusive_output
from ..outputs import refuse_occupied, replacing_folder
from .cells import CANDIDATE_RULES, POI_NORMALIZATIONS, build_cells, count_pois
from ..modeling.records_nextlocllm import (DEFAULT_ENCODING, DEFAULT_MAX_DURATION_HOURS, day_and_hour,
                                          is_repeated_record, leakage_free_durations, record_durations, text_codec,
                                          time_order)
from .card import dataset_card
from .city_dataset import CITY_FILES, DATASET_CARD_NAME, SPLITS
from .features import cell_features, city_features, window_features
from .formats import READERS, ReadOptions
from .formats.pois import OSM_KEYS
from .grid import Grid
from .projection import lonlat_to_mercator, valid_lonlat_mask
from .report import BuildReport
from .samples import segment_bounds, split_by_time, split_by_user, window_index
from .taxonomy import DEFAULT_POI_CLASSES, CategoryMapping, OsmMapping, class_index
from .windows import DEFAULT_SHARD_ROWS, FORMAT_VERSION, CityRecords, shard_bounds, windows_table, write_records

GATHER_CHUNK = 65_536  # windows read at once for the train statistics
DEFAULT_MAX_GAP_HOURS = {"yjmob": 24.0}


@dataclass
class BuildConfig:
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


def _input_duration_range(durations: np.ndarray, starts: np.ndarray, inputs: int) -> tuple[float, float]:
    """Smallest and largest input duration of the windows at `starts` (leakage-free rule), a chunk at a time."""
    low, high = np.inf, -np.inf
    for i in range(0, len(starts), GATHER_CHUNK):
        window = starts[i:i + GATHER_CHUNK, None] + np.arange(inputs)
        values, _ = leakage_free_durations(durations[window])
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high


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


# ---------------------------------------------------------------------------------------------- steps
def _clean(recs: pd.DataFrame, cfg: BuildConfig, report: BuildReport):
    """Drop invalid rows (counted), project, sort by (user, time); returns ``(records, user names)``, maybe empty
    (a partition may lose all its rows; the whole city's emptiness is refused by the caller)."""
    u = recs["user_id"]
    miss = (u.isna() | (u.astype("string").str.strip() == "")).to_numpy()
    report.drop("missing_user", int(miss.sum()))
    recs = recs[~miss]
    if "x" not in recs.columns:
        lat, lon = recs["lat"].to_numpy(), recs["lon"].to_numpy()
        bad = ~valid_lonlat_mask(lon, lat)
        report.check_fraction("invalid_coordinates", int(bad.sum()), len(recs), "latitude/longitude",
                              (float(lat[bad][0]), float(lon[bad][0])) if bad.any() else None, cfg.max_invalid_fraction)
        recs = recs[~bad]
        zero = ((recs["lat"] == 0) & (recs["lon"] == 0)).to_numpy()
        report.drop("zero_coordinates", int(zero.sum()))
        recs = recs[~zero]
    if cfg.bbox:
        la0, lo0, la1, lo1 = cfg.bbox
        inside = recs["lat"].between(la0, la1) & recs["lon"].between(lo0, lo1)
        report.drop("outside_bbox", int((~inside).sum()))
        recs = recs[inside.to_numpy()]
    recs = recs.copy()
    if "x" not in recs.columns:
        recs["x"], recs["y"] = lonlat_to_mercator(recs["lon"].to_numpy(), recs["lat"].to_numpy())
    codes, names = pd.factorize(recs["user_id"].astype("string"), sort=True)
    order = time_order(recs["ts"].to_numpy(), codes)
    recs = recs.iloc[order].reset_index(drop=True)
    recs["ucode"] = codes[order]
    if cfg.drop_duplicates:
        dup = is_repeated_record(*(recs[c].to_numpy() for c in ("ucode", "ts", "lat", "lon")))
        report.drop("duplicate_record", int(dup.sum()))
        recs = recs[~dup].reset_index(drop=True)
    return recs, np.asarray(names, dtype=object)


def _refuse_empty(records: int, report: BuildReport) -> None:
    if records == 0:
        raise ValueError(f"nothing left after filtering the input records; drops: {dict(report.drops)}")


def _fit_grid(cfg: BuildConfig, fixed, extent) -> Grid:
    """The input's own grid (YJMob), the `--bbox` one, or one fitted to `extent` = (x min, x max, y min, y max,
    lat min, lat max) of the clean records."""
    if fixed is not None:
        return fixed
    if cfg.bbox:
        la0, lo0, la1, lo1 = cfg.bbox
        (x0, x1), (y0, y1) = lonlat_to_mercator([lo0, lo1], [la0, la1])
        return Grid.from_extent(x0, y0, x1, y1, cfg.cell_size_m, 0.5 * (la0 + la1))
    x0, x1, y0, y1, lat0, lat1 = extent
    return Grid.from_extent(x0, y0, x1, y1, cfg.cell_size_m, 0.5 * (lat0 + lat1))


def _extent(recs: pd.DataFrame) -> tuple:
    return tuple(float(f(recs[c])) for c in ("x", "y", "lat") for f in (np.min, np.max))


def _venue_summary(recs: pd.DataFrame, user_names: np.ndarray) -> pd.DataFrame | None:
    """Each (venue, category) of check-ins sorted by (user, time): how often it occurs, and its first occurrence
    (user name, row; coordinates): what `_pois_from_venues` needs, summed over the partitions of a partitioned build."""
    if "category" not in recs.columns and "poi_class" not in recs.columns:
        return None
    catcol = "poi_class" if "poi_class" in recs.columns else "category"
    key = ["venue_id"] if "venue_id" in recs.columns else ["lat", "lon"]
    cols = list(dict.fromkeys(key + ["lat", "lon", catcol] + (["root_category"] if "root_category" in recs else [])))
    v = recs[cols].copy()
    v[catcol] = v[catcol].astype("string").fillna("")
    if key == ["venue_id"]:  # a missing venue id: the coordinate identifies the venue
        vid = v["venue_id"].astype("string")
        miss = vid.isna() | (vid.str.strip() == "")
        v["venue_id"] = vid.where(~miss, "@" + v["lat"].astype("string") + "," + v["lon"].astype("string"))
    v["first_user"] = user_names[recs["ucode"].to_numpy()]
    v["first_row"] = np.arange(len(v), dtype=np.int64)
    groups = v.groupby(key + [catcol], sort=False, dropna=False)
    first = v.loc[groups["first_row"].idxmin().to_numpy()].reset_index(drop=True)
    first["n"] = groups.size().to_numpy()
    return first


def _pois_from_venues(summaries: list[pd.DataFrame]) -> pd.DataFrame:
    """The POI table of check-ins: each venue once, at its first-seen coordinate, with its most frequent category
    (ties: the category seen first)."""
    v = pd.concat(summaries, ignore_index=True)
    catcol = "poi_class" if "poi_class" in v.columns else "category"
    key = ["venue_id"] if "venue_id" in v.columns else ["lat", "lon"]
    v = v.sort_values(["first_user", "first_row"], kind="stable").reset_index(drop=True)
    totals = v.groupby(key + [catcol], sort=False, dropna=False)["n"].transform("sum")
    combos = v.assign(n=totals).drop_duplicates(key + [catcol])
    best = combos.sort_values("n", ascending=False, kind="stable").drop_duplicates(key)
    first = combos.drop_duplicates(key)[list(dict.fromkeys(key + ["lat", "lon"] +
                                                           (["root_category"] if "root_category" in v else [])))]
    return first.merge(best[key + [catcol]], on=key, how="left").reset_index(drop=True)


def _poi_table(pois: pd.DataFrame | None, poi_source: str, venues: list, report: BuildReport):
    if pois is not None:
        return pois, poi_source or "POI file"
    if venues:
        return _pois_from_venues(venues), "distinct venues of the check-ins"
    report.note("no POI information (no --pois and no categories in the input): POI vectors are zero")
    return None, "none"


def _classify_pois(pois: pd.DataFrame, classes, cfg: BuildConfig, report: BuildReport) -> tuple[np.ndarray, int]:
    if "poi_class" in pois.columns:
        cls = class_index(pois["poi_class"], classes)
        bad = cls < 0
        if bad.any():
            report.unmapped_categories.update(pois["poi_class"][bad].astype("string").fillna("<missing>").value_counts().to_dict())
        return cls, 0
    if "category" in pois.columns:
        mapping = CategoryMapping.foursquare()
        if cfg.category_map:
            user = CategoryMapping.from_json(cfg.category_map)
            mapping = user if tuple(user.classes) != tuple(mapping.classes) else mapping.extended(user)
        if tuple(mapping.classes) != tuple(classes):
            raise ValueError(f"category map classes {list(mapping.classes)} differ from the taxonomy {list(classes)}")
        cls, st = mapping.map(pois["category"], pois["root_category"] if "root_category" in pois.columns else None)
        report.unmapped_categories.update(st["unmapped"])
        return cls, st["via_root"]
    if any(k in pois.columns for k in OSM_KEYS):
        cls, st = OsmMapping.from_json(cfg.category_map).map(pois)
        report.unmapped_categories.update(st["unmapped"])
        return cls, 0
    raise ValueError("POI table has no category, poi_class or OSM tag column")


def read_options(cfg: BuildConfig) -> ReadOptions:
    return ReadOptions(columns=cfg.columns, poi_columns=cfg.poi_columns, time_format=cfg.time_format,
                       time_unit=cfg.time_unit, timezone=cfg.timezone, max_invalid_fraction=cfg.max_invalid_fraction,
                       stay_distance_m=cfg.stay_distance_m, stay_min_minutes=cfg.stay_min_minutes,
                       show_progress=cfg.show_progress, encoding=cfg.encoding,
                       extra={"synthetic": {"city": cfg.city, "seed": cfg.seed, **(cfg.synthetic or {})}})


def _pois_and_cells(pois: pd.DataFrame | None, poi_source: str, grid: Grid, visited: np.ndarray,
                    visited_records: np.ndarray, cfg: BuildConfig, report: BuildReport):
    """Place and classify the POIs, count them per cell, and make the candidate cells; returns
    ``(cells, sorted cell keys, POI frequencies, city-wide max per class, POI info)``."""
    classes = DEFAULT_POI_CLASSES
    C = len(classes)
    poi_info = {"source": poi_source, "read": 0, "in_area": 0, "classified": 0, "via_root": 0,
                "per_class": {c: 0 for c in classes}}
    pkeys = np.zeros(0, dtype=np.int64)
    pcounts = np.zeros((0, C), dtype=np.int64)
    if pois is not None and len(pois):
        poi_info["read"] = len(pois)
        plat = pd.to_numeric(pois["lat"], errors="coerce").to_numpy(dtype=np.float64)
        plon = pd.to_numeric(pois["lon"], errors="coerce").to_numpy(dtype=np.float64)
        ok = valid_lonlat_mask(plon, plat)
        report.drop("poi_invalid_coordinates", int((~ok).sum()), kind="pois")
        pois = pois[ok].reset_index(drop=True)
        if grid.kind == "virtual":
            raise ValueError("POIs with coordinates cannot be placed on the virtual YJMob grid")
        px, py = lonlat_to_mercator(plon[ok], plat[ok])
        prow, pcol, pin = grid.locate(px, py)
        report.drop("poi_outside_area", int((~pin).sum()), kind="pois")
        pois = pois[pin].reset_index(drop=True)
        poi_info["in_area"] = len(pois)
        pcls, via_root = _classify_pois(pois, classes, cfg, report)
        poi_info["classified"] = int((pcls >= 0).sum())
        poi_info["via_root"] = via_root
        poi_info["per_class"] = {c: int((pcls == i).sum()) for i, c in enumerate(classes)}
        pkeys, pcounts = count_pois(grid.key(prow[pin], pcol[pin]), pcls, C)
    if poi_info["classified"] == 0 and pois is not None:
        report.note("no POI could be classified: POI vectors are zero")
    cells, ckeys, counts, freq, city_max = build_cells(grid, visited, visited_records, pkeys, pcounts, C,
                                                        cfg.candidates, cfg.poi_normalization)
    report.info["pois"] = poi_info
    report.info["grid"] = grid.to_dict()
    report.info["candidates_rule"] = cfg.candidates
    report.info["cells"] = {"candidates": len(cells), "visited": int(visited.size), "with_pois": int(pkeys.size),
                            "grid_cells": grid.n_cells}
    _warn_few_cells(cfg, len(cells), report)
    return cells, ckeys, freq, city_max, poi_info


def _warn_few_cells(cfg: BuildConfig, candidates: int, report: BuildReport) -> None:
    """A city with fewer candidate cells than the deepest rank a metric reports (Hit@`MAX_RANK`) builds, but its
    ranking metrics cannot be what they are elsewhere: said now, not after a whole training run."""
    if candidates < MAX_RANK:
        report.warn(f"city {cfg.city!r} has {candidates} candidate cell{'s' if candidates != 1 else ''} (fewer than "
                    f"the {MAX_RANK} Hit@{MAX_RANK} ranks): a ranking of its cells stops at rank {candidates}, so "
                    f"Hit@k for k >= {candidates} is 1 by construction; check the input's coordinates, --bbox and "
                    f"--cell-size-m ({cfg.cell_size_m:g} m)")


@dataclass
class UserWindows:
    """Some users' segments and windows, over their records sorted by (user, time)."""

    durations: np.ndarray  # per record, hours to the next record of its segment (clipped; NaN at a segment's end)
    clipped: int
    windows: np.ndarray  # (windows, H + L + 1) record rows
    kept: np.ndarray  # per record: in a segment long enough for a window
    users_kept: np.ndarray  # codes of the users with a window
    segments_kept: int
    longest_segment: int


def _user_windows(ucode: np.ndarray, ts: np.ndarray, cfg: BuildConfig, max_gap: float | None,
                  report: BuildReport) -> UserWindows:
    W = cfg.history_length + cfg.current_length + 1
    seg_s, seg_n = segment_bounds(ucode, ts, max_gap * 3600.0 if max_gap else None)
    dur, clipped = record_durations(ts, seg_s, seg_n, cfg.max_duration_hours or None)
    long_seg = seg_n >= W
    report.drop("segment_too_short", int(seg_n[~long_seg].sum()))
    users_all = np.unique(ucode)
    users_kept = np.unique(ucode[seg_s[long_seg]]) if long_seg.any() else np.zeros(0, dtype=ucode.dtype)
    report.drop("user_too_short", int(users_all.size - users_kept.size), kind="users")
    return UserWindows(dur, clipped, window_index(seg_s, seg_n, W, cfg.stride), np.repeat(long_seg, seg_n),
                       users_kept, int(long_seg.sum()), int(seg_n.max()) if seg_n.size else 0)


def _refuse_no_window(cfg: BuildConfig, longest: int) -> None:
    raise ValueError(f"no user has a segment of at least H + L + 1 = "
                     f"{cfg.history_length + cfg.current_length + 1} records (longest: {longest}); "
                     f"lower --history-length/--current-length or check --max-gap-hours")


def _kept_record_columns(recs: pd.DataFrame, user_names: np.ndarray, rcell: np.ndarray, found: UserWindows) -> dict:
    """The records of segments long enough for a window, as the records shards store them (`RECORDS_SCHEMA`)."""
    rows = np.flatnonzero(found.kept)
    day, hour = day_and_hour(recs["local_ts"].to_numpy(dtype=np.int64)[rows])
    return {"user_id": np.asarray(user_names, dtype=object)[recs["ucode"].to_numpy()[rows]],
            "ts": recs["ts"].to_numpy(dtype=np.int64)[rows], "x": recs["x"].to_numpy()[rows],
            "y": recs["y"].to_numpy()[rows], "day": day.astype(np.int8), "hour": hour.astype(np.int8),
            "duration": found.durations[rows], "cell": rcell[rows].astype(np.int64)}


def _coordinate_moments(xy: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, sum of squared deviations) of points: one partition's share of the train statistics."""
    mean = xy.mean(axis=0)
    deviation = xy - mean
    return len(xy), mean, (deviation * deviation).sum(axis=0)


def _coordinate_statistics(parts: list, report: BuildReport) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the points of all `parts` (Chan et al.'s pairwise combination; one part gives numpy's
    `mean` and `std` exactly)."""
    parts = [part for part in parts if part[0]]
    total = sum(n for n, _, _ in parts)
    if len(parts) == 1:
        mean, squares = parts[0][1], parts[0][2]
    else:
        mean = sum(n * m for n, m, _ in parts) / total
        squares = sum(s + n * (m - mean) ** 2 for n, m, s in parts)
    std = np.sqrt(squares / total)
    if (std == 0).any():
        report.note("a coordinate axis has zero spread in train: its std is set to 1")
        std = np.where(std == 0, 1.0, std)
    return mean, std


def _split_labels(cfg: BuildConfig, users: np.ndarray, user_names: np.ndarray, target_ts: np.ndarray):
    """Split label (0 train, 1 validation, 2 test) of each sample, from its user code or its target time."""
    if cfg.split == "user":
        return split_by_user(users, user_names, cfg.split_fractions, cfg.seed), None
    labels, b = split_by_time(target_ts, cfg.split_fractions)
    return labels, {"validation_from": pd.Timestamp(b[0], unit="s").isoformat(),
                    "test_from": pd.Timestamp(b[1], unit="s").isoformat()}


def build_city(cfg: BuildConfig) -> BuildResult:
    """Run the whole pipeline in this process; returns the tables, cells, metadata and report (nothing written)."""
    cfg.validate()
    t0 = time.perf_counter()
    report = BuildReport(city=cfg.city, format=cfg.format)
    H, L = cfg.history_length, cfg.current_length
    steps = tqdm(total=6, desc=f"build {cfg.city}", disable=not cfg.show_progress)

    def step(name):
        steps.set_postfix_str(name)
        steps.update(1)

    raw = READERS[cfg.format](cfg.input, cfg.pois, report, read_options(cfg))
    report.input_users = int(raw.records["user_id"].nunique())
    step("read")

    # ---------------------------------------------------------------- clean, project, grid
    recs, user_names = _clean(raw.records, cfg, report)
    _refuse_empty(len(recs), report)
    grid = _fit_grid(cfg, raw.grid, _extent(recs))
    row, col, inside = grid.locate(recs["x"].to_numpy(), recs["y"].to_numpy())
    if (~inside).any():
        report.drop("outside_grid", int((~inside).sum()))
        recs = recs[inside].reset_index(drop=True)
        row, col = row[inside], col[inside]
    rkeys = grid.key(row, col)
    report.info["records_clean"] = len(recs)
    step("clean")

    # ---------------------------------------------------------------- POIs and cells
    venues = _venue_summary(recs, user_names)
    pois, poi_source = _poi_table(raw.pois, raw.poi_source, [venues] if venues is not None else [], report)
    cells, ckeys, freq, city_max, poi_info = _pois_and_cells(pois, poi_source, grid,
                                                             *np.unique(rkeys, return_counts=True), cfg, report)
    rcell = np.searchsorted(ckeys, rkeys)
    step("cells")

    # ---------------------------------------------------------------- segments, durations, windows
    max_gap = cfg.max_gap_hours if cfg.max_gap_hours is not None else DEFAULT_MAX_GAP_HOURS.get(cfg.format)
    ts = recs["ts"].to_numpy(dtype=np.int64)
    ucode = recs["ucode"].to_numpy()
    found = _user_windows(ucode, ts, cfg, max_gap, report)
    if not len(found.windows):
        _refuse_no_window(cfg, found.longest_segment)
    idx = found.windows
    in_samples = np.zeros(len(recs), dtype=bool)
    in_samples[idx.ravel()] = True
    report.info.update({"records_kept": int(found.kept.sum()), "users_kept": int(found.users_kept.size),
                        "segments_kept": found.segments_kept, "records_in_samples": int(in_samples.sum()),
                        "records_window_tail": int((found.kept & ~in_samples).sum())})
    step("windows")

    # ---------------------------------------------------------------- split
    sample_users = ucode[idx[:, 0]]
    labels, boundaries = _split_labels(cfg, sample_users, user_names, ts[idx[:, -1]])
    split_idx = {name: idx[labels == i] for i, name in enumerate(SPLITS)}
    if len(split_idx["train"]) == 0:
        raise ValueError("the training split is empty")
    step("split")

    # ---------------------------------------------------------------- statistics (train only)
    train_recs = np.unique(split_idx["train"].ravel())
    mean, std = _coordinate_statistics([_coordinate_moments(recs[["x", "y"]].to_numpy()[train_recs])], report)

    # ---------------------------------------------------------------- records once, samples as windows
    # Only the records of segments long enough for a window are kept; windows start at their row among those.
    row_in_kept = np.cumsum(found.kept) - 1
    record_columns = _kept_record_columns(recs, user_names, rcell, found)
    bounds = shard_bounds(ucode[found.kept], cfg.shard_rows)
    records = CityRecords.from_arrays(record_columns, bounds, freq, H, L)
    windows = {name: windows_table(cfg.city, user_names[ucode[split_idx[name][:, 0]]], row_in_kept[split_idx[name][:, 0]])
               for name in SPLITS}
    duration_range = _input_duration_range(record_columns["duration"], windows["train"].column("start").to_numpy(),
                                           H + L)
    report.info["durations"] = {"cap_hours": cfg.max_duration_hours or None, "clipped": found.clipped,
                                "target_unknown": int(np.isnan(found.durations[idx[:, -1]]).sum())}
    report.info["samples"] = {n: len(split_idx[n]) for n in SPLITS}
    report.info["split_users"] = {n: int(np.unique(sample_users[labels == i]).size) for i, n in enumerate(SPLITS)}
    step("samples")

    report.info["seconds"] = time.perf_counter() - t0
    metadata = city_metadata(cfg, report, raw.source, poi_source, poi_info, grid, city_max, mean, std, duration_range,
                             len(bounds), boundaries, max_gap)
    steps.close()
    return BuildResult(windows, records, record_columns, bounds, cells, metadata, report)


def city_metadata(cfg: BuildConfig, report: BuildReport, source: dict, poi_source: str, poi_info: dict, grid: Grid,
                  city_max: np.ndarray, mean: np.ndarray, std: np.ndarray, duration_range: tuple, records_files: int,
                  boundaries: dict | None, max_gap: float | None) -> dict:
    """What city.json holds, from a finished build's figures and report."""
    return {
        "city": cfg.city,
        "format_version": FORMAT_VERSION,
        "coordinate_mean": [float(mean[0]), float(mean[1])],
        "coordinate_std": [float(std[0]), float(std[1])],
        "duration_min_hours": duration_range[0],
        "duration_max_hours": duration_range[1],
        "statistics_from": "train split only: every record used by a train sample (inputs and targets)",
        "cell_size_m": float(cfg.cell_size_m),
        "grid": grid.to_dict(),
        "candidates": cfg.candidates,
        "poi_classes": list(DEFAULT_POI_CLASSES),
        "poi_normalization": cfg.poi_normalization,
        "poi_city_max": [int(v) for v in city_max],
        "history_length": cfg.history_length,
        "current_length": cfg.current_length,
        "window_length": cfg.history_length + cfg.current_length + 1,
        "records_files": records_files,
        "stride": cfg.stride,
        "split": cfg.split,
        "split_fractions": [float(v) for v in cfg.split_fractions],
        "split_boundaries": boundaries,
        "seed": cfg.seed,
        "max_gap_hours": max_gap,
        "max_duration_hours": cfg.max_duration_hours or None,
        "duration_definition": "hours to the same user's next record (clipped); the last current record of a "
                               "sample gets the median of the sample's other input durations; target_time_gap = "
                               "hours from the last current record to the target",
        "counts": {
            "users": {"input": report.input_users, "kept": report.info["users_kept"], **report.info["split_users"]},
            "records": {"input_rows": report.input_rows, "clean": report.info["records_clean"],
                        "kept": report.info["records_kept"], "in_samples": report.info["records_in_samples"]},
            "cells": report.info["cells"],
            "pois": poi_info,
            "samples": report.info["samples"],
            "drops": {"records": dict(report.drops), "users": dict(report.user_drops), "pois": dict(report.poi_drops)},
        },
        "source": {**source, "pois": poi_source,
                   "license": {"id": cfg.license, "terms": cfg.license_terms, "citation": cfg.citation},
                   "build": {k: v for k, v in asdict(cfg).items()
                             if k not in ("show_progress", "license", "license_terms", "citation")}},
        "report": report.to_dict(),
    }


def build_and_save(cfg: BuildConfig) -> BuildResult:
    """Build and write ``cfg.output``; the report is available as ``result.report.render()``.

    A city already in ``cfg.output`` is refused before any work unless ``cfg.overwrite``; a folder holding anything
    else is always refused (replacing it would delete those files); an output another build is writing is refused
    (`locks.exclusive_output`)."""
    if not cfg.output:
        raise ValueError("an output folder is required")
    # One writer per output: held from the check to the final rename, in process or partitioned.
    with exclusive_output(cfg.output):
        refuse_occupied(cfg.output, overwrite=cfg.overwrite, option="--output", what="city folder", owned=CITY_FILES)
        if cfg.partitions:
            from .partitioned import build_partitioned

            return build_partitioned(cfg)
        res = build_city(cfg)
        t = time.perf_counter()
        res.save(cfg.output, show_progress=cfg.show_progress)
    res.report.info["write_seconds"] = time.perf_counter() - t
    return res
