"""Formats whose records are one table: how the file reads and how any block of its rows becomes canonical records.

The in-process readers read the whole table this way; the partitioned build (`..partitioned`) reads the same file in
blocks on Dask and applies the same `to_records` to each block, so both builds see the same records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..report import BuildReport
from .common import DEFAULT_ENCODING, RawInput, ReadOptions, read_table
from .pois import read_pois


@dataclass(frozen=True)
class RecordsTable:
    path: str
    read_kwargs: dict  # `pandas.read_csv` keywords (also given to `dask.dataframe.read_csv`); unused for Parquet
    to_records: Callable[[pd.DataFrame, BuildReport, ReadOptions], pd.DataFrame]
    source: dict
    grid: object | None = None  # a fixed Grid (YJMob's virtual grid); None: fitted to the records
    notes: tuple = field(default_factory=tuple)  # report notes that hold for the whole input
    encoding: str = DEFAULT_ENCODING  # of a CSV/TSV file (`--encoding`)

    @property
    def is_parquet(self) -> bool:
        return Path(self.path).suffix.lower() in (".parquet", ".pq")

    def read(self) -> pd.DataFrame:
        return read_table(self.path) if self.is_parquet else read_table(self.path, self.encoding, **self.read_kwargs)


def header_columns(path, encoding: str = DEFAULT_ENCODING) -> list[str]:
    """The column names of a CSV/TSV (separator sniffed, text in `encoding`) or Parquet file, without reading its
    rows."""
    if Path(path).suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return list(read_table(path, encoding, nrows=0).columns)


def read_whole_table(table: RecordsTable, pois_path, report: BuildReport, opts: ReadOptions) -> RawInput:
    """The in-process read: the whole table, then its records, and the POI file if one is given."""
    df = table.read()
    report.input_rows = len(df)
    records = table.to_records(df, report, opts)
    for text in table.notes:
        report.note(text)
    pois, poi_source = read_pois(pois_path, report, opts) if pois_path else (None, "")
    return RawInput(records, pois, grid=table.grid, source=table.source, poi_source=poi_source)
