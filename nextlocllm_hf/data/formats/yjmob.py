"""YJMob100K / HuMob (``uid,d,t,x,y``): day index ``d`` (0..74), 30-minute slot ``t`` (0..47) and
cell ``x, y`` (1..200) of a 200 x 200 grid of 500 m cells; ``999`` marks masked positions
(dropped as ``masked_location``).  No real coordinates: records use the virtual Mercator grid of
the authors' follow-up code (method.md 1.1), cell (x, y) -> centre (-49 750 + 500 (x - 1),
49 750 - 500 (y - 1)) m; lat/lon columns are the inverse Web Mercator of those virtual metres.
Day of week = ``d mod 7`` (day 0 taken as a Monday), hour = ``t // 2``.  No POIs (zeros, noted)
unless ``--pois`` gives a table with ``x, y`` cell columns -- not supported yet.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from ..grid import Grid
from ..projection import mercator_to_lonlat
from ..report import BuildReport
from .common import RawInput, ReadOptions
from .tables import RecordsTable, read_whole_table

MONDAY_OFFSET_S = 4 * 86400  # 1970-01-05 was a Monday


def yjmob_table(path, opts: ReadOptions) -> RecordsTable:
    return RecordsTable(str(path), {}, partial(_records, path=path), source={"format": "yjmob", "path": str(path)},
                        grid=Grid.yjmob_virtual(), notes=("YJMob: no POI categories, POI vectors are zero",),
                        encoding=opts.encoding)


def _records(df: pd.DataFrame, report: BuildReport, opts: ReadOptions, path) -> pd.DataFrame:
    FIELD = {"user": ["uid"], "d": ["d"], "t": ["t"], "x": ["x"], "y": ["y"]}
    cols = {}
    for f, names in FIELD.items():
        col = (opts.columns or {}).get(f) or next((c for c in df.columns if str(c).lower() in names), None)
        if col is None or col not in df.columns:
            raise ValueError(f"YJMob file {path}: missing column {f!r} (expected uid,d,t,x,y); available: {list(df.columns)}")
        cols[f] = col
    d = pd.to_numeric(df[cols["d"]], errors="coerce").to_numpy(dtype=np.float64)
    t = pd.to_numeric(df[cols["t"]], errors="coerce").to_numpy(dtype=np.float64)
    gx = pd.to_numeric(df[cols["x"]], errors="coerce").to_numpy(dtype=np.float64)
    gy = pd.to_numeric(df[cols["y"]], errors="coerce").to_numpy(dtype=np.float64)
    bad_t = ~(np.isfinite(d) & np.isfinite(t) & (d >= 0) & (t >= 0) & (t <= 47))
    report.check_fraction("unparseable_time", int(bad_t.sum()), len(df), "d/t", (d[bad_t][:1], t[bad_t][:1]),
                          opts.max_invalid_fraction)
    masked = ~bad_t & ((gx == 999) | (gy == 999))
    report.drop("masked_location", int(masked.sum()))
    bad_c = ~bad_t & ~masked & ~(np.isfinite(gx) & np.isfinite(gy) & (gx >= 1) & (gx <= 200) & (gy >= 1) & (gy <= 200))
    report.check_fraction("invalid_coordinates", int(bad_c.sum()), len(df), "x/y", (gx[bad_c][:1], gy[bad_c][:1]),
                          opts.max_invalid_fraction)
    ok = ~(bad_t | masked | bad_c)
    x = -49750.0 + 500.0 * (gx[ok] - 1)
    y = 49750.0 - 500.0 * (gy[ok] - 1)
    lon, lat = mercator_to_lonlat(x, y)
    secs = (d[ok] * 86400 + t[ok] * 1800).astype(np.int64) + MONDAY_OFFSET_S
    recs = pd.DataFrame({"user_id": df[cols["user"]].astype("string").to_numpy()[ok], "ts": secs, "local_ts": secs,
                         "lat": lat, "lon": lon, "x": x, "y": y})
    report.info["local_time_from"] = "virtual days (d mod 7, t // 2)"
    return recs


def read_yjmob(path, pois_path, report: BuildReport, opts: ReadOptions) -> RawInput:
    if pois_path:
        raise ValueError("--pois is not supported for --format yjmob (its POI table uses anonymised categories)")
    return read_whole_table(yjmob_table(path, opts), None, report, opts)
