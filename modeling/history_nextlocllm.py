"""The user's whole history as candidate statistics: what 45 records cannot say about a place.

A sample's window holds 45 records, but a check-in user has about 137 and a GPS user thousands; how often, at which
hours and how lately the user went to a place over months is the best single signal of where they go next. With
`NextLocLLMConfig.candidate_history` a sample also carries its user's earlier records (`past_*`: every record of the
user up to and including the last input record, the most recent `max_past_records`, left-padded), and each candidate
gets the statistics below. Nothing at or after the target is read: the past ends at the last input record, whose
time is the present; the query time of `at_time` mode only says which hour and day the statistics condition on.

    life_share              visits to the cell / past records
    life_log_visits         log1p(visits)
    life_window_fraction    visits within +-2 h of the reference hour / past records within +-2 h
    life_daytype_fraction   visits on the reference's day type (weekday/weekend) / such records
    life_window_daytype_fraction  both at once
    life_weekday_fraction   visits on the reference's weekday / such records
    life_hour_distance      smallest time-of-day distance (h) of a visit to the reference hour / 12; 1 if never
    life_log_days_since_last   log1p(days from the last visit to the present); never visited: the span + 1 day
    life_log_days_since_first  log1p(days from the first visit); 0 if never visited
    life_log_days_visited   log1p(distinct 24 h periods, counted back from the present, with a visit)
    life_markov_1           of the earlier visits to the last record's cell, the share followed by this cell
    life_log_visits_before_window  log1p(visits before the window's records)
    life_log_rank           log1p(rank of the candidate by visits), 1 = most visited
    life_log_rank_at_hour   log1p(rank by visits within +-2 h of the reference hour)
    life_poi_affinity       cosine of the cell's POI vector and the user's POI mix within +-2 h of the reference hour
    past_log_records, past_log_cells, past_log_span_days   the history's size (same for every candidate)

The `life_*` features conditioned on the reference time are left out with `time_features=False` (the ablation without
time-conditioned features). Everything is computed with one sort and `bincount`s over the (sample, record) pairs, so
the cost grows with the number of past records, never with records x candidates.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

PAST_COLUMNS = ("past_cell", "past_day", "past_hour", "past_hours_ago", "past_mask")
_TIMED = ("life_window_fraction", "life_daytype_fraction", "life_window_daytype_fraction", "life_weekday_fraction",
          "life_hour_distance", "life_log_rank_at_hour", "life_poi_affinity")
HISTORY_FEATURES = (
    "life_share", "life_log_visits", "life_window_fraction", "life_daytype_fraction", "life_window_daytype_fraction",
    "life_weekday_fraction", "life_hour_distance", "life_log_days_since_last", "life_log_days_since_first",
    "life_log_days_visited", "life_markov_1", "life_log_visits_before_window", "life_log_rank", "life_log_rank_at_hour",
    "life_poi_affinity", "past_log_records", "past_log_cells", "past_log_span_days",
)


def history_feature_names(time_features: bool = True) -> list[str]:
    """The history features in column order (after the window's candidate features)."""
    return [name for name in HISTORY_FEATURES if time_features or name not in _TIMED]


def check_past(past: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """The `past_*` arrays of a batch (numpy), checked: `(B, P)` each, the last column real in every sample (its last
    input record: the past is left-padded and ends at the present), hours ago finite and >= 0 at real records."""
    missing = [name for name in PAST_COLUMNS if past.get(name) is None]
    if missing:
        raise ValueError(f"candidate_history reads the user's earlier records: {missing} missing")
    shape = past["past_cell"].shape
    if len(shape) != 2 or shape[0] != batch_size or any(value.shape != shape for value in past.values()):
        shapes = {name: value.shape for name, value in past.items()}
        raise ValueError(f"past_* must all have shape ({batch_size}, records); got {shapes}")
    mask = past["past_mask"].astype(bool)
    if shape[1] == 0 or not mask[:, -1].all():
        raise ValueError("past_mask must be True at each sample's last past record (its last input record): "
                         "the past is left-padded and ends at the present")
    hours = past["past_hours_ago"].astype(np.float64)
    bad = mask & ~(np.isfinite(hours) & (hours >= 0))
    if bad.any():
        raise ValueError(f"past_hours_ago holds {hours[bad][0]}, expected finite hours >= 0 before the present")
    return {"cell": past["past_cell"].astype(np.int64), "day": past["past_day"].astype(np.int64),
            "hour": past["past_hour"].astype(np.int64), "hours_ago": hours, "mask": mask}


def earlier_cells_by_visits(past_rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`(B, D)` the retriever rows of each sample's past cells, most visited first (ties: lower row), -1 padded."""
    batch_size = len(past_rows)
    real = mask & (past_rows >= 0)
    sample, record = np.nonzero(real)
    if not len(sample):
        return np.full((batch_size, 0), -1, dtype=np.int64)
    width = int(past_rows.max()) + 1
    keys, counts = np.unique(sample * width + past_rows[sample, record], return_counts=True)
    owner, row = keys // width, keys % width
    order = np.lexsort((row, -counts, owner))
    owner, row = owner[order], row[order]
    starts = np.searchsorted(owner, np.arange(batch_size))
    position = np.arange(len(owner)) - starts[owner]
    out = np.full((batch_size, int(position.max()) + 1), -1, dtype=np.int64)
    out[owner, position] = row
    return out


def history_columns(
    rows: np.ndarray,
    mask: np.ndarray,
    past: Mapping[str, np.ndarray],
    past_rows: np.ndarray,
    window_counts: np.ndarray,
    poi_frequency: np.ndarray,
    query_day: np.ndarray,
    hour_distance: np.ndarray,
    window_hours: int,
    time_features: bool = True,
) -> list[np.ndarray]:
    """The history features of each candidate, `(B, M)` arrays in `history_feature_names` order.

    Args:
        rows / mask: `(B, M)` the candidates' retriever rows and which are real.
        past: `check_past`'s arrays; past_rows: `(B, P)` their cells' retriever rows (-1 unknown or padding).
        window_counts: `(B, M)` each candidate's visits among the window's records.
        poi_frequency: `(num_cells, C)` the retriever's POI vectors by row.
        query_day: `(B,)` the reference day; hour_distance: `(B, P)` each past record's time-of-day distance (h) to the
            reference hour; window_hours: the distance that counts as "around the reference hour".
    """
    batch_size, width = rows.shape
    real = past["mask"]
    flat = _candidate_of_records(rows, mask, past_rows, real)  # (B, P): b * M + m, or -1
    matched = flat >= 0
    index = flat[matched]
    size = batch_size * width

    def per_candidate(weights: np.ndarray | None = None) -> np.ndarray:
        values = None if weights is None else weights[matched].astype(np.float64)
        return np.bincount(index, weights=values, minlength=size).reshape(batch_size, width)

    def fraction(condition: np.ndarray) -> np.ndarray:
        return per_candidate(condition) / np.maximum(condition.sum(axis=1), 1)[:, None]

    num_records = real.sum(axis=1)
    counts = per_candidate()
    in_window = real & (hour_distance <= window_hours)
    same_daytype = real & ((past["day"] >= 5) == (query_day[:, None] >= 5))
    same_weekday = real & (past["day"] == query_day[:, None])
    hours_ago = np.where(real, past["hours_ago"], 0.0)
    span_days = hours_ago.max(axis=1) / 24.0

    nearest_hour = _reduce(np.minimum, index, hour_distance[matched], 12.0, size).reshape(batch_size, width) / 12.0
    last_seen = _reduce(np.minimum, index, hours_ago[matched], np.inf, size).reshape(batch_size, width) / 24.0
    first_seen = _reduce(np.maximum, index, hours_ago[matched], -np.inf, size).reshape(batch_size, width) / 24.0
    visited = counts > 0
    last_seen = np.where(visited, last_seen, span_days[:, None] + 1.0)
    first_seen = np.where(visited, first_seen, 0.0)
    day_bin = np.floor(hours_ago / 24.0).astype(np.int64)[matched]
    day_span = int(day_bin.max(initial=0)) + 1
    pairs = np.unique(index * day_span + day_bin)
    days_visited = np.bincount(pairs // day_span, minlength=size).reshape(batch_size, width)

    # Lifetime Markov: earlier visits to the last record's cell (the last past record), and the cell that followed.
    last_row = past_rows[:, -1]
    occurrence = real[:, :-1] & real[:, 1:] & (past_rows[:, :-1] == last_row[:, None]) & (last_row[:, None] >= 0)
    successor = np.where(occurrence, flat[:, 1:], -1)
    followed = np.bincount(successor[successor >= 0], minlength=size).reshape(batch_size, width)
    markov_1 = followed / np.maximum(occurrence.sum(axis=1), 1)[:, None]

    at_hour = per_candidate(in_window)
    poi = poi_frequency[np.maximum(past_rows, 0)] * (in_window & (past_rows >= 0))[..., None]
    user_mix = poi.sum(axis=1)
    cell_poi = poi_frequency[np.where(mask, rows, 0)]
    norms = np.linalg.norm(cell_poi, axis=-1) * np.linalg.norm(user_mix, axis=-1)[:, None]
    affinity = np.where(norms > 0, (cell_poi * user_mix[:, None]).sum(axis=-1) / np.maximum(norms, 1e-12), 0.0)

    distinct = _distinct_per_row(np.where(real, past_rows, -1))
    columns = {
        "life_share": counts / np.maximum(num_records, 1)[:, None],
        "life_log_visits": np.log1p(counts),
        "life_window_fraction": fraction(in_window),
        "life_daytype_fraction": fraction(same_daytype),
        "life_window_daytype_fraction": fraction(in_window & same_daytype),
        "life_weekday_fraction": fraction(same_weekday),
        "life_hour_distance": nearest_hour,
        "life_log_days_since_last": np.log1p(last_seen),
        "life_log_days_since_first": np.log1p(first_seen),
        "life_log_days_visited": np.log1p(days_visited),
        "life_markov_1": markov_1,
        "life_log_visits_before_window": np.log1p(np.maximum(counts - window_counts, 0)),
        "life_log_rank": np.log1p(_rank(counts, mask) + 1),
        "life_log_rank_at_hour": np.log1p(_rank(at_hour, mask) + 1),
        "life_poi_affinity": affinity,
        "past_log_records": np.log1p(num_records)[:, None],
        "past_log_cells": np.log1p(distinct)[:, None],
        "past_log_span_days": np.log1p(span_days)[:, None],
    }
    return [np.broadcast_to(columns[name], (batch_size, width)) for name in history_feature_names(time_features)]


def _candidate_of_records(rows: np.ndarray, mask: np.ndarray, past_rows: np.ndarray, real: np.ndarray) -> np.ndarray:
    """`(B, P)` the flat index `b * M + m` of the candidate each past record lies in, -1 where none (a sorted lookup of
    (sample, row) keys; a sample's candidates are distinct)."""
    batch_size, width = rows.shape
    span = int(max(rows.max(initial=0), past_rows.max(initial=0))) + 1
    keys = np.where(mask, np.arange(batch_size)[:, None] * span + rows, -1).ravel()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    wanted = np.arange(batch_size)[:, None] * span + past_rows
    position = np.minimum(np.searchsorted(sorted_keys, wanted), len(sorted_keys) - 1)
    found = (sorted_keys[position] == wanted) & real & (past_rows >= 0)
    return np.where(found, order[position], -1)


def _reduce(ufunc: np.ufunc, index: np.ndarray, values: np.ndarray, initial: float, size: int) -> np.ndarray:
    out = np.full(size, initial, dtype=np.float64)
    ufunc.at(out, index, values)
    return out


def _rank(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """0-based rank of each candidate by `values`, highest first (ties keep candidate order); padding ranks last."""
    order = np.argsort(-np.where(mask, values, -np.inf), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(values.shape[1])[None], axis=1)
    return rank


def _distinct_per_row(values: np.ndarray) -> np.ndarray:
    """Distinct non-negative values per row."""
    ordered = np.sort(values, axis=1)
    new = ordered >= 0
    new[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
    return new.sum(axis=1)


__all__ = ["PAST_COLUMNS", "HISTORY_FEATURES", "history_feature_names", "check_past", "earlier_cells_by_visits",
           "history_columns"]
