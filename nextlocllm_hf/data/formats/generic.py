"""Generic CSV/Parquet check-ins with a column mapping (``--columns user=uid,time=ts,lat=lat,lon=lng``;
optional fields ``venue``, ``category``, ``root_category``, ``tz_offset_min``, ``local_time``,
``poi_class``).  Unmapped fields are found by common aliases.  Numeric times are epochs
(``--time-unit s|ms``); strings are ISO 8601 unless ``--time-format`` is given.  User and venue ids are read as
text (``007`` stays ``007``)."""

from __future__ import annotations

from functools import partial

from ..report import BuildReport
from .common import RECORD_OPTIONAL, RECORD_REQUIRED, RawInput, ReadOptions, records_from_frame, resolve_columns
from .tables import RecordsTable, header_columns, read_whole_table


def generic_table(path, opts: ReadOptions) -> RecordsTable:
    columns = resolve_columns(header_columns(path, opts.encoding), opts.columns, RECORD_REQUIRED, RECORD_OPTIONAL,
                              f"input {path}")
    text = {columns[f]: str for f in ("user", "venue", "category", "root_category", "poi_class") if f in columns}
    return RecordsTable(str(path), {"low_memory": False, "dtype": text},
                        partial(records_from_frame, mapping=opts.columns, what=f"input {path}"),
                        source={"format": "csv", "path": str(path), "columns": opts.columns or {}},
                        encoding=opts.encoding)


def read_generic(path, pois_path, report: BuildReport, opts: ReadOptions) -> RawInput:
    return read_whole_table(generic_table(path, opts), pois_path, report, opts)
