"""The sample assembly of city format 1, kept as the reference that format 2's window gathering must equal:
every window's records copied into one row of fixed-length lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from nextlocllm_hf.modeling.records_nextlocllm import hours_between, leakage_free_durations


def _fixed_list(values: np.ndarray, *sizes: int) -> pa.Array:
    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(sizes):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


def assemble_samples(idx: np.ndarray, city: str, rec: dict, H: int, L: int, features) -> tuple[pa.Table, dict]:
    """Arrow table (schema of ``features``) for windows ``idx`` (S, H+L+1) over record arrays ``rec``.

    ``rec`` holds per-record arrays ``user`` (str), ``x``, ``y``, ``day``, ``hour``, ``duration``
    (NaN at segment ends), ``ts``, ``cell`` and the per-record ``poi`` matrix (n, C).
    """
    S = idx.shape[0]
    C = rec["poi"].shape[1]
    inp = idx[:, :H + L]
    tgt = idx[:, -1]
    xy = np.stack([rec["x"], rec["y"]], axis=1)
    dur, fill = leakage_free_durations(rec["duration"][inp])
    tdur = rec["duration"][tgt].astype(np.float64)
    unknown = np.isnan(tdur)
    tdur[unknown] = fill[unknown]
    gap = hours_between(rec["ts"][inp[:, -1]], rec["ts"][tgt])
    cols = {"city": pa.array([city] * S, type=pa.string()), "user_id": pa.array(rec["user"][idx[:, 0]], type=pa.string())}
    for prefix, sl, n in (("history", slice(0, H), H), ("current", slice(H, H + L), L)):
        ii = inp[:, sl]
        cols[f"{prefix}_coordinates"] = _fixed_list(xy[ii].astype(np.float64), n, 2)
        cols[f"{prefix}_day"] = _fixed_list(rec["day"][ii].astype(np.int64), n)
        cols[f"{prefix}_hour"] = _fixed_list(rec["hour"][ii].astype(np.int64), n)
        cols[f"{prefix}_duration"] = _fixed_list(dur[:, sl].astype(np.float32), n)
        cols[f"{prefix}_poi"] = _fixed_list(rec["poi"][ii].astype(np.float32), n, C)
        cols[f"{prefix}_cell"] = _fixed_list(rec["cell"][ii].astype(np.int64), n)
    cols["target_coordinates"] = _fixed_list(xy[tgt].astype(np.float64), 2)
    cols["target_cell"] = pa.array(rec["cell"][tgt].astype(np.int64))
    cols["target_day"] = pa.array(rec["day"][tgt].astype(np.int64))
    cols["target_hour"] = pa.array(rec["hour"][tgt].astype(np.int64))
    cols["target_duration"] = pa.array(tdur.astype(np.float32))
    cols["target_time_gap"] = pa.array(gap.astype(np.float32))
    schema = features.arrow_schema
    table = pa.Table.from_arrays([cols[name] for name in schema.names], schema=schema)
    return table, {"target_duration_unknown": int(unknown.sum()), "input_durations": dur}
