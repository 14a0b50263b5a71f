"""Reading sample columns as numpy arrays: nested fixed-length lists become extra dimensions.

Goes through Arrow rather than `with_format("numpy")`, which in datasets 5 casts float64 to float32 and would round
Web Mercator coordinates (~1e7 m) to about a metre.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import numpy as np


def arrow_to_numpy(array, name: str) -> np.ndarray:
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        raise ValueError(f"column {name!r} holds {array.null_count} null values")
    shape = [len(array)]
    while pa.types.is_fixed_size_list(array.type) or pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        if pa.types.is_fixed_size_list(array.type):
            size = array.type.list_size
        else:
            lengths = np.asarray(array.value_lengths())
            if len(lengths) and (lengths != lengths[0]).any():
                found = sorted(set(lengths.tolist()))[:5]
                raise ValueError(f"column {name!r} holds lists of different lengths {found}")
            size = int(lengths[0]) if len(lengths) else 0
        array = array.flatten()
        if array.null_count:
            raise ValueError(f"column {name!r} holds null values")
        shape.append(size)
    return array.to_numpy(zero_copy_only=False).reshape(shape)


def _to_numpy(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object and arr.ndim >= 1 and arr.size and not isinstance(arr.flat[0], str):
        arr = np.stack([_to_numpy(v, name) for v in arr])
    return arr


def available_columns(rows: Any) -> set[str]:
    """The columns `rows_to_arrays` can read from `rows`: a dataset's, plus the sample (and past) fields of a windowed
    split."""
    from .data.windows import GATHERED_FIELDS, window_view_of

    if hasattr(rows, "column_names"):
        return {*rows.column_names, *(GATHERED_FIELDS if window_view_of(rows) is not None else ())}
    return set(rows)


def rows_to_arrays(rows: Any, columns: Iterable[str], max_past_records: int | None = None) -> dict[str, np.ndarray]:
    """The requested columns of ``rows`` as numpy arrays, nested fixed-length lists as extra dimensions.

    ``rows``: a ``datasets.Dataset`` (read through Arrow, so float64 coordinates stay float64, unlike
    ``with_format("numpy")`` which casts floats to float32), a city split of windows (its sample fields and its users'
    past records, at most ``max_past_records`` each, default the config's, gathered from the records), or a mapping of
    columns.
    """
    from .data.windows import GATHERED_FIELDS, window_view_of
    from .modeling.configuration_nextlocllm import NextLocLLMConfig

    columns = list(dict.fromkeys(columns))
    view = window_view_of(rows)
    if view is not None:
        stored = [c for c in columns if c not in GATHERED_FIELDS]
        missing = [c for c in stored if c not in rows.column_names]
        if missing:
            raise ValueError(f"rows lack columns {missing}; they have {rows.column_names} and {list(GATHERED_FIELDS)}")
        table = rows.with_format("arrow", columns=sorted({*stored, "city", "start"}))[:]
        out = {c: arrow_to_numpy(table.column(c), c) for c in stored}
        gathered = [c for c in columns if c in GATHERED_FIELDS]
        if gathered:
            out.update(view.arrays(arrow_to_numpy(table.column("city"), "city"),
                                   arrow_to_numpy(table.column("start"), "start"), gathered,
                                   max_past_records or NextLocLLMConfig.max_past_records))
        return {c: out[c] for c in columns}
    if hasattr(rows, "column_names") and hasattr(rows, "with_format"):
        missing = [c for c in columns if c not in rows.column_names]
        if missing:
            raise ValueError(f"rows lack columns {missing}; they have {rows.column_names}")
        table = rows.with_format("arrow", columns=columns)[:]
        return {c: arrow_to_numpy(table.column(c), c) for c in columns}
    if isinstance(rows, Mapping):
        missing = [c for c in columns if c not in rows]
        if missing:
            raise ValueError(f"rows lack columns {missing}; they have {sorted(rows)}")
        return {c: _to_numpy(rows[c], c) for c in columns}
    raise TypeError(f"rows must be a datasets.Dataset or a mapping of columns, got {type(rows).__name__}")


ROW_CHUNK = 65_536  # samples read at once by code that goes over a whole split (~200 MB of gathered fields)


def row_chunks(rows: Any, size: int | None = None) -> Iterator[Any]:
    """`rows` (what `rows_to_arrays` takes) in pieces of at most `size` (default `ROW_CHUNK`) samples, in order: a
    split of millions of windows is read a piece at a time, never whole."""
    size = size or ROW_CHUNK
    if isinstance(rows, Mapping):
        n = len(next(iter(rows.values()))) if rows else 0
        if n <= size:
            yield rows
            return
        for begin in range(0, n, size):
            yield {c: values[begin:begin + size] for c, values in rows.items()}
        return
    if hasattr(rows, "select") and len(rows) > size:  # a datasets.Dataset; `select` keeps a split's window view
        for begin in range(0, len(rows), size):
            yield rows.select(range(begin, min(begin + size, len(rows))))
        return
    yield rows
