"""The steps of a city build, the shared API of both builds: `build.build_city` runs them on the whole city in this
process, `partitioned.build_partitioned` on one user partition at a time and on the combined summaries (extents,
venues, visited cells, coordinate moments), so both build the same city.

In pipeline order: clean the records -> fit the grid to their extent -> POIs (from a file or the check-ins' venues)
and candidate cells -> segments, durations and windows per user -> the records the windows keep -> split -> the
train-only statistics -> city.json's metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ..metrics import MAX_RANK
from ..modeling.records_nextlocllm import (day_and_hour, is_repeated_record, leakage_free_durations,
                                          record_durations, time_order)
from .build_config import BuildConfig
from .cells import build_cells, count_pois
from .formats.pois import OSM_KEYS
from .grid import Grid
from .projection import lonlat_to_mercator, valid_lonlat_mask
from .report import BuildReport
from .samples import segment_bounds, split_by_time, split_by_user, window_index
from .taxonomy import DEFAULT_POI_CLASSES, CategoryMapping, OsmMapping, class_index
from .windows import FORMAT_VERSION

GATHER_CHUNK = 65_536  # windows read at once for the train statistics


def clean_records(recs: pd.DataFrame, cfg: BuildConfig, report: BuildReport):
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


def refuse_empty(records: int, report: BuildReport) -> None:
    """Refuse a city with no record left after cleaning, naming what was dropped (the input is wrong, not the
    build)."""
    if records == 0:
        raise ValueError(f"nothing left after filtering the input records; drops: {dict(report.drops)}")


def fit_grid(cfg: BuildConfig, fixed, extent) -> Grid:
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


def record_extent(recs: pd.DataFrame) -> tuple:
    """(x min, x max, y min, y max, lat min, lat max) of clean records: what `fit_grid` needs, combinable over
    partitions."""
    return tuple(float(f(recs[c])) for c in ("x", "y", "lat") for f in (np.min, np.max))


def venue_summary(recs: pd.DataFrame, user_names: np.ndarray) -> pd.DataFrame | None:
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


def poi_table(pois: pd.DataFrame | None, poi_source: str, venues: list, report: BuildReport):
    """The POIs and where they come from: the POI file, else the check-ins' venues (`venue_summary` of each
    partition), else none (noted: POI vectors are zero)."""
    if pois is not None:
        return pois, poi_source or "POI file"
    if venues:
        return _pois_from_venues(venues), "distinct venues of the check-ins"
    report.note("no POI information (no --pois and no categories in the input): POI vectors are zero")
    return None, "none"


def _classify_pois(pois: pd.DataFrame, classes, cfg: BuildConfig, report: BuildReport) -> tuple[np.ndarray, int]:
    """Each POI's class index (-1: unmapped, counted in the report) by its class, category or OSM tags, and how many
    mapped through their root category."""
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


def pois_and_cells(pois: pd.DataFrame | None, poi_source: str, grid: Grid, visited: np.ndarray,
                   visited_records: np.ndarray, cfg: BuildConfig, report: BuildReport):
    """Place and classify the POIs, count them per cell, and make the candidate cells; returns
    ``(cells, sorted cell keys, POI frequencies, city-wide max per class, POI info)``."""
    classes = DEFAULT_POI_CLASSES
    C = len(classes)
    poi_info = {"source": poi_source, "read": 0, "in_area": 0, "classified": 0, "via_root": 0,
                "per_class": {c: 0 for c in classes}}
    pkeys = np.zeros(0, dtype=np.int64)
    pcounts = np.zeros((0, C), dtype=np.int64)
    categories = None  # (cell key, category name) of every POI, when the POIs carry names
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
        poi_cell_keys = grid.key(prow[pin], pcol[pin])
        pkeys, pcounts = count_pois(poi_cell_keys, pcls, C)
        if "category" in pois.columns:
            categories = (poi_cell_keys, pois["category"].to_numpy())
    if poi_info["classified"] == 0 and pois is not None:
        report.note("no POI could be classified: POI vectors are zero")
    cells, ckeys, counts, freq, city_max = build_cells(grid, visited, visited_records, pkeys, pcounts, C,
                                                        cfg.candidates, cfg.poi_normalization, categories)
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


def user_windows(ucode: np.ndarray, ts: np.ndarray, cfg: BuildConfig, max_gap: float | None,
                 report: BuildReport) -> UserWindows:
    """Cut the users' records (sorted by user, time) into segments at gaps over `max_gap` hours, with their
    durations, and the windows of the segments long enough for one (shorter ones dropped and counted)."""
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


def refuse_no_window(cfg: BuildConfig, longest: int) -> None:
    """Refuse a city without a single window, saying which options would give one."""
    raise ValueError(f"no user has a segment of at least H + L + 1 = "
                     f"{cfg.history_length + cfg.current_length + 1} records (longest: {longest}); "
                     f"lower --history-length/--current-length or check --max-gap-hours")


def kept_record_columns(recs: pd.DataFrame, user_names: np.ndarray, rcell: np.ndarray, found: UserWindows) -> dict:
    """The records of segments long enough for a window, as the records shards store them (`RECORDS_SCHEMA`)."""
    rows = np.flatnonzero(found.kept)
    day, hour = day_and_hour(recs["local_ts"].to_numpy(dtype=np.int64)[rows])
    return {"user_id": np.asarray(user_names, dtype=object)[recs["ucode"].to_numpy()[rows]],
            "ts": recs["ts"].to_numpy(dtype=np.int64)[rows], "x": recs["x"].to_numpy()[rows],
            "y": recs["y"].to_numpy()[rows], "day": day.astype(np.int8), "hour": hour.astype(np.int8),
            "duration": found.durations[rows], "cell": rcell[rows].astype(np.int64)}


def coordinate_moments(xy: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, sum of squared deviations) of points: one partition's share of the train statistics."""
    mean = xy.mean(axis=0)
    deviation = xy - mean
    return len(xy), mean, (deviation * deviation).sum(axis=0)


def coordinate_statistics(parts: list, report: BuildReport) -> tuple[np.ndarray, np.ndarray]:
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


def split_labels(cfg: BuildConfig, users: np.ndarray, user_names: np.ndarray, target_ts: np.ndarray):
    """Split label (0 train, 1 validation, 2 test) of each sample, from its user code or its target time."""
    if cfg.split == "user":
        return split_by_user(users, user_names, cfg.split_fractions, cfg.seed), None
    labels, b = split_by_time(target_ts, cfg.split_fractions)
    return labels, {"validation_from": pd.Timestamp(b[0], unit="s").isoformat(),
                    "test_from": pd.Timestamp(b[1], unit="s").isoformat()}


def input_duration_range(durations: np.ndarray, starts: np.ndarray, inputs: int) -> tuple[float, float]:
    """Smallest and largest input duration of the windows at `starts` (leakage-free rule), a chunk at a time."""
    low, high = np.inf, -np.inf
    for i in range(0, len(starts), GATHER_CHUNK):
        window = starts[i:i + GATHER_CHUNK, None] + np.arange(inputs)
        values, _ = leakage_free_durations(durations[window])
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high


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


__all__ = ["clean_records", "refuse_empty", "record_extent", "fit_grid", "venue_summary", "poi_table",
           "pois_and_cells", "UserWindows", "user_windows", "refuse_no_window", "kept_record_columns", "split_labels",
           "coordinate_moments", "coordinate_statistics", "input_duration_range", "city_metadata"]
