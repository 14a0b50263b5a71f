"""Generic CSV/Parquet check-ins with a column mapping (``--columns user=uid,time=ts,lat=lat,lon=lng``;
optional fields ``venue``, ``category``, ``root_category``, ``tz_offset_min``, ``local_time``,
``poi_class``).  Unmapped fields are found by common aliases.  Numeric times are epochs
(``--time-unit s|ms``); strings are ISO 8601 unless ``--time-format`` is given."""

from __future__ import annotations

from ..report import BuildReport
from .common import RawInput, ReadOptions, read_table, records_from_frame
from .pois import read_pois


def read_generic(path, pois_path, report: BuildReport, opts: ReadOptions) -> RawInput:
    df = read_table(path, low_memory=False) if not str(path).endswith((".parquet", ".pq")) else read_table(path)
    report.input_rows = len(df)
    recs = records_from_frame(df, report, opts, opts.columns, what=f"input {path}")
    pois, poi_source = (None, "")
    if pois_path:
        pois, poi_source = read_pois(pois_path, report, opts)
    return RawInput(recs, pois, source={"format": "csv", "path": str(path), "columns": opts.columns or {}},
                    poi_source=poi_source)
