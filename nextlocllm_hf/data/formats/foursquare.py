"""Foursquare check-ins.

Accepted inputs (detected from the first line):

* cleaned CSV with a header (e.g. ``shared/data`` NYC/Calgary): ``user_id, venue_id, category_name,
  [root_category], latitude, longitude, utc_time, [tz_offset_min | local_time]``;
* raw TSMC2014 (``dataset_TSMC2014_NYC.txt``/``_TKY.txt``), tab-separated, no header, 8 columns:
  user id, venue id, venue category id, venue category name, latitude, longitude, time-zone offset
  in minutes, UTC time (``Tue Apr 03 18:00:09 +0000 2012``);
* raw TIST2015 check-ins (``dataset_TIST2015_Checkins.txt``), tab-separated, 4 columns: user id,
  venue id, UTC time, time-zone offset in minutes; coordinates and categories come from the POI
  file (``--pois dataset_TIST2015_POIs.txt``: venue id, latitude, longitude, category name, country
  code).  The global file covers 415 cities: restrict it with ``--bbox``.

Local time = UTC + the per-row offset (or the ``local_time`` column).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd

from ..report import BuildReport
from .common import (RawInput, ReadOptions, decoding, first_line, local_clock, make_records, parse_times,
                     records_from_frame, text_codec)
from .pois import read_pois
from .tables import RecordsTable, read_whole_table

RAW_TIME_FORMAT = "%a %b %d %H:%M:%S %z %Y"
TSMC_COLUMNS = ["user_id", "venue_id", "category_id", "category", "lat", "lon", "tz_offset_min", "utc_time"]
TIST_COLUMNS = ["user_id", "venue_id", "utc_time", "tz_offset_min"]
RAW_READ = {"sep": "\t", "header": None, "dtype": str, "quoting": 3}


def _raw_kind(path, opts: ReadOptions) -> str | None:
    if Path(path).suffix.lower() in (".parquet", ".pq"):
        return None
    parts = first_line(path, opts.encoding).split("\t")
    if len(parts) == 8:
        return "tsmc2014"
    if len(parts) == 4:
        return "tist2015"
    return None


def foursquare_table(path, opts: ReadOptions) -> RecordsTable:
    """The check-in file as a table: a cleaned CSV with a header or raw TSMC2014 (raw TIST2015 is not one table: its
    coordinates come from the POI file, see `read_foursquare`)."""
    kind = _raw_kind(path, opts)
    if kind is None:
        return RecordsTable(str(path), {"dtype": {"user_id": str, "venue_id": str}, "low_memory": False},
                            partial(records_from_frame, mapping=opts.columns, what=f"Foursquare file {path}"),
                            source={"format": "foursquare (CSV with header)", "path": str(path)},
                            encoding=opts.encoding)
    if kind == "tist2015":
        raise ValueError(f"{path}: raw TIST2015 check-ins take their coordinates from the POI file; build them with "
                         f"the in-process build (no --partitions)")
    return RecordsTable(str(path), dict(RAW_READ, names=TSMC_COLUMNS), _raw_records,
                        source={"format": "foursquare raw tsmc2014", "path": str(path)}, encoding=opts.encoding)


def _raw_records(df: pd.DataFrame, report: BuildReport, opts: ReadOptions) -> pd.DataFrame:
    utc = parse_times(df["utc_time"], "utc_time", report, opts, fmt=opts.time_format or RAW_TIME_FORMAT)
    local, how = local_clock(utc, report, opts, tz_offset_min=df["tz_offset_min"])
    report.info["local_time_from"] = how
    return make_records(report, df["user_id"], utc, local, df["lat"], df["lon"], venue_id=df["venue_id"],
                        category=df["category"] if "category" in df.columns else None)


def read_foursquare(path, pois_path, report: BuildReport, opts: ReadOptions) -> RawInput:
    if _raw_kind(path, opts) != "tist2015":
        return read_whole_table(foursquare_table(path, opts), pois_path, report, opts)
    if not pois_path:
        raise ValueError("raw TIST2015 check-ins carry no coordinates: pass the POI file with --pois "
                         "(dataset_TIST2015_POIs.txt)")
    pois, poi_source = read_pois(pois_path, report, opts)
    if "venue_id" not in pois.columns:
        raise ValueError("the POI file has no venue id column to join the TIST2015 check-ins on")
    with decoding(path, opts.encoding):
        df = pd.read_csv(path, **RAW_READ, names=TIST_COLUMNS, encoding=text_codec(opts.encoding))
    report.input_rows = len(df)
    venues = pois.drop_duplicates("venue_id").set_index("venue_id")
    known = df["venue_id"].isin(venues.index).to_numpy()
    report.drop("venue_not_in_poi_file", int((~known).sum()), df["venue_id"][~known].iloc[0] if (~known).any() else None)
    df = df[known].reset_index(drop=True)
    v = venues.loc[df["venue_id"]]
    df["lat"], df["lon"] = v["lat"].to_numpy(), v["lon"].to_numpy()
    df["category"] = v["category"].to_numpy() if "category" in v.columns else None
    return RawInput(_raw_records(df, report, opts), pois, source={"format": "foursquare raw tist2015", "path": str(path)},
                    poi_source=poi_source)
