"""Gowalla / Brightkite check-ins (SNAP ``loc-gowalla_totalCheckins.txt``,
``loc-brightkite_totalCheckins.txt``): tab-separated, no header, columns ``user, check-in time
(ISO 8601 UTC, e.g. 2010-10-19T23:55:27Z), latitude, longitude, location id``.  No categories:
POI vectors are zero unless ``--pois`` is given.  Times are UTC; pass ``--timezone`` for local
day/hour.  Brightkite's missing positions (0, 0) are dropped as ``zero_coordinates``."""

from __future__ import annotations

from functools import partial

import pandas as pd

from ..report import BuildReport
from .common import RawInput, ReadOptions, local_clock, make_records, parse_times
from .tables import RecordsTable, read_whole_table

COLUMNS = ["user_id", "time", "lat", "lon", "venue_id"]


def gowalla_table(path, opts: ReadOptions) -> RecordsTable:
    read = {"sep": "\t", "header": None, "names": COLUMNS, "dtype": str, "quoting": 3}
    return RecordsTable(str(path), read, partial(_records, path=path),
                        source={"format": "gowalla/brightkite", "path": str(path)}, encoding=opts.encoding)


def _records(df: pd.DataFrame, report: BuildReport, opts: ReadOptions, path) -> pd.DataFrame:
    if df.shape[1] != 5 or (len(df) and df["venue_id"].isna().all()):
        raise ValueError(f"{path}: expected 5 tab-separated columns {COLUMNS}")
    utc = parse_times(df["time"], "time", report, opts)
    local, how = local_clock(utc, report, opts)
    report.info["local_time_from"] = how
    return make_records(report, df["user_id"], utc, local, df["lat"], df["lon"], venue_id=df["venue_id"])


def read_gowalla(path, pois_path, report: BuildReport, opts: ReadOptions) -> RawInput:
    return read_whole_table(gowalla_table(path, opts), pois_path, report, opts)
