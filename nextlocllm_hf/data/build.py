"""Build a city dataset folder from raw input: the logic behind ``dataset_scripts/build_city.py``.

Pipeline (vectorized pandas/numpy; no per-record Python loop): read (format reader) -> clean
(missing users, invalid/zero coordinates, bbox, exact duplicates) -> project to Web Mercator ->
grid -> POIs (classify, count per cell) -> candidate cells and POI frequencies -> segments,
durations -> sliding windows -> split -> train-only statistics -> parquet + city.json.

This module runs the pipeline in one process (`build_city`) and decides, in `build_and_save`, whether a city is built
here or by partitions (`partitioned.py`). Both builds run the same steps (`build_steps.py`) on the same config and
result (`build_config.py`); this module imports the partitioned one, never the reverse.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from ..locks import exclusive_output
from ..outputs import refuse_occupied
from .build_config import BuildConfig, BuildResult, read_options
from .build_steps import (city_metadata, clean_records, coordinate_moments, coordinate_statistics, fit_grid,
                          input_duration_range, kept_record_columns, poi_table, pois_and_cells, record_extent,
                          refuse_empty, refuse_no_window, split_labels, user_windows, venue_summary)
from .city_dataset import CITY_FILES, SPLITS
from .formats import READERS
from .report import BuildReport
from .windows import CityRecords, shard_bounds, windows_table


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
    recs, user_names = clean_records(raw.records, cfg, report)
    refuse_empty(len(recs), report)
    grid = fit_grid(cfg, raw.grid, record_extent(recs))
    row, col, inside = grid.locate(recs["x"].to_numpy(), recs["y"].to_numpy())
    if (~inside).any():
        report.drop("outside_grid", int((~inside).sum()))
        recs = recs[inside].reset_index(drop=True)
        row, col = row[inside], col[inside]
    rkeys = grid.key(row, col)
    report.info["records_clean"] = len(recs)
    step("clean")

    # ---------------------------------------------------------------- POIs and cells
    venues = venue_summary(recs, user_names)
    pois, poi_source = poi_table(raw.pois, raw.poi_source, [venues] if venues is not None else [], report)
    cells, ckeys, freq, city_max, poi_info = pois_and_cells(pois, poi_source, grid,
                                                            *np.unique(rkeys, return_counts=True), cfg, report)
    rcell = np.searchsorted(ckeys, rkeys)
    step("cells")

    # ---------------------------------------------------------------- segments, durations, windows
    max_gap = cfg.segment_gap_hours()
    ts = recs["ts"].to_numpy(dtype=np.int64)
    ucode = recs["ucode"].to_numpy()
    found = user_windows(ucode, ts, cfg, max_gap, report)
    if not len(found.windows):
        refuse_no_window(cfg, found.longest_segment)
    idx = found.windows
    in_samples = np.zeros(len(recs), dtype=bool)
    in_samples[idx.ravel()] = True
    report.info.update({"records_kept": int(found.kept.sum()), "users_kept": int(found.users_kept.size),
                        "segments_kept": found.segments_kept, "records_in_samples": int(in_samples.sum()),
                        "records_window_tail": int((found.kept & ~in_samples).sum())})
    step("windows")

    # ---------------------------------------------------------------- split
    sample_users = ucode[idx[:, 0]]
    labels, boundaries = split_labels(cfg, sample_users, user_names, ts[idx[:, -1]])
    split_idx = {name: idx[labels == i] for i, name in enumerate(SPLITS)}
    if len(split_idx["train"]) == 0:
        raise ValueError("the training split is empty")
    step("split")

    # ---------------------------------------------------------------- statistics (train only)
    train_recs = np.unique(split_idx["train"].ravel())
    mean, std = coordinate_statistics([coordinate_moments(recs[["x", "y"]].to_numpy()[train_recs])], report)

    # ---------------------------------------------------------------- records once, samples as windows
    # Only the records of segments long enough for a window are kept; windows start at their row among those.
    row_in_kept = np.cumsum(found.kept) - 1
    record_columns = kept_record_columns(recs, user_names, rcell, found)
    bounds = shard_bounds(ucode[found.kept], cfg.shard_rows)
    records = CityRecords.from_arrays(record_columns, bounds, freq, H, L)
    windows = {name: windows_table(cfg.city, user_names[ucode[split_idx[name][:, 0]]], row_in_kept[split_idx[name][:, 0]])
               for name in SPLITS}
    duration_range = input_duration_range(record_columns["duration"], windows["train"].column("start").to_numpy(),
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


__all__ = ["BuildConfig", "BuildResult", "build_city", "build_and_save"]
