"""Candidate ranking: the one home of the candidate set, its id-free features and the scorer.

A single regressed point ranked by nearest cells is capped near "copy the last place", because a person's places are
not spatial neighbours. Ranking works on a small candidate set per sample instead: the cells of the sample's own
records (most recent first) and the cells nearest the last record's point. Each candidate is described by features
computed from the sample's records and, in the `at_time` task, the query time ("where will this user be at t?").
No feature or parameter refers to a cell id: offsets are divided by the city's coordinate standard deviation and
visit statistics are shares of the input records, so the same features serve a city with any number of cells and any
id range, which is what makes zero-shot ranking work. The same features feed the model's scorer and the
`gbdt_ranker` baseline, so the two are compared on equal information.

The reference time of the time-conditioned features is the query in `at_time` mode (the target's local day and
hour, and the gap since the last record), and the last record's day and hour in `next` mode (the present; the gap is
then unknown and not a feature). `candidate_feature_names` lists the features in order:

    dx_last, dy_last       centre - last input point, divided by the city's coordinate_std
    distance_last          the norm of that offset
    distance_gyration      log1p(distance to the last point / radius of gyration of the inputs, at least 50 m)
    poi_0 .. poi_{C-1}     the cell's POI frequency vector
    visit_share            records in the cell / all input records
    log_visits             log1p(records in the cell)
    current_share          current records in the cell / current records
    recency                1 / (1 + records after its last visit); 0 if never visited
    visited, is_last       1 if visited in the inputs / if it is the last record's cell
    markov_1               of the earlier visits to the last cell, the share followed by this cell
    markov_2               the same for the last two cells as a pair
    log_rule_rank          log1p(rank by 0.5 markov_1 + 0.5 visit_share), the Markov + frequency rule
  time-conditioned (unless `time_features=False`):
    window_share           records in the cell within +-2 h of the reference hour / all input records
    window_fraction        the same / records within +-2 h (0 when there are none)
    daytype_fraction       records in the cell on the reference's day type (weekday/weekend) / such records
    window_daytype_fraction  both conditions at once
    hour_distance          smallest time-of-day distance (h) of a visit to the reference hour / 12; 1 if never visited
    hour_sin, hour_cos, weekend   the reference time itself (same for every candidate of a sample)
    log_gap                log1p(hours from the last record to the query), `at_time` only
  whole history (with `history=True`, `NextLocLLMConfig.candidate_history`): the `life_*` and `past_*` statistics of
  `history_nextlocllm.py`, over the user's records up to the last input one (`past_*` batch fields); the cells of
  that history then also become candidates, after the window's cells and the neighbours, most visited first.

Unknown cell ids: a record whose cell id is not one of the retriever's cells (negative ids included, e.g. padding)
has no centre or POI vector, so it never becomes a candidate and matches no candidate. It still counts as a record:
shares are over all input records and recency counts positions, so a sample's features do not depend on which of its
records happen to be known. `CandidateSet.num_unknown_records` reports how many records of each sample were skipped.

One file (~490 lines, a third of it this documentation) on purpose: the feature list above, the code computing it and
the scorer reading it change together. Ranking the scored candidates into top-k cells is `ranking_nextlocllm.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from transformers import initialization as init

from .configuration_nextlocllm import TASK_MODES
from .history_nextlocllm import PAST_COLUMNS, check_past, earlier_cells_by_visits, history_columns, history_feature_names
from .retrieval_nextlocllm import CityRetriever

TIME_WINDOW_HOURS = 2  # "around the reference hour": a circular distance of at most this many hours
RULE_ALPHA = 0.5  # weight of markov_1 in the rule whose rank is a feature (the Markov + frequency rule's weight)
MIN_GYRATION_M = 50.0  # floor of the radius of gyration: a user who never moved still has a finite scale

_GEOMETRY = ("dx_last", "dy_last", "distance_last", "distance_gyration")
_VISITS = ("visit_share", "log_visits", "current_share", "recency", "visited", "is_last", "markov_1", "markov_2",
           "log_rule_rank")
_TIME = ("window_share", "window_fraction", "daytype_fraction", "window_daytype_fraction", "hour_distance",
         "hour_sin", "hour_cos", "weekend")

# Columns `build_candidates` reads from a batch (model inputs and dataset rows use the same names).
RECORD_COLUMNS = tuple(f"{part}_{field}" for part in ("history", "current")
                       for field in ("cell", "coordinates", "day", "hour"))
QUERY_COLUMNS = ("target_day", "target_hour", "target_time_gap")


def candidate_feature_names(num_poi_classes: int, task_mode: str, time_features: bool = True,
                            history: bool = False) -> list[str]:
    """The features of a candidate, in column order (see the module docstring)."""
    _check_mode(task_mode)
    names = [*_GEOMETRY, *(f"poi_{i}" for i in range(int(num_poi_classes))), *_VISITS]
    if time_features:
        names += [*_TIME, *(("log_gap",) if task_mode == "at_time" else ())]
    if history:
        names += history_feature_names(time_features)
    return names


def candidate_feature_size(num_poi_classes: int, task_mode: str, time_features: bool = True,
                           history: bool = False) -> int:
    return len(candidate_feature_names(num_poi_classes, task_mode, time_features, history))


def _check_mode(task_mode: str) -> None:
    if task_mode not in TASK_MODES:
        raise ValueError(f"task_mode={task_mode!r}: expected one of {TASK_MODES}")


@dataclass
class CandidateSet:
    """Candidate cells per sample, padded to a common width.

    Args:
        cell_ids: `(B, M)` int64 candidate cell ids, -1 at padding.
        mask: `(B, M)` bool, True at real candidates (they come first in each row).
        features: `(B, M, F)` float32 city-agnostic features (see `candidate_feature_names`), zeros at padding.
        record_weights: `(B, M, T)` float32, each candidate's visits among the T input records (history then
            current) as weights summing to 1 (all zero for a candidate never visited): pools per-record states.
        num_unknown_records: `(B,)` int64 input records whose cell id the retriever does not know (skipped).
    """

    cell_ids: np.ndarray
    mask: np.ndarray
    features: np.ndarray
    record_weights: np.ndarray
    num_unknown_records: np.ndarray


def to_numpy(value: Any) -> np.ndarray:
    """Arrays or tensors on any device; bfloat16 (which numpy lacks) becomes float32."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def integer_ids(value: Any, name: str) -> np.ndarray:
    ids = to_numpy(value)
    if ids.ndim != 2:
        raise ValueError(f"{name} has shape {ids.shape}, expected (batch, length)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must hold integer cell ids, got dtype {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def first_occurrences(values: np.ndarray) -> np.ndarray:
    """`(B, L)` bool: non-negative entries whose value does not appear earlier in the same row (negatives = padding)."""
    valid = values >= 0
    # Padding shares one value below every valid one, so it never counts as an earlier duplicate.
    keyed = np.where(valid, values, -1)
    order = np.argsort(keyed, axis=1, kind="stable")
    ordered = np.take_along_axis(keyed, order, axis=1)
    starts = np.ones_like(valid)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = np.empty_like(valid)
    np.put_along_axis(first, order, starts, axis=1)
    return first & valid


def compact(values: np.ndarray, keep: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Kept entries of each row moved to the front in order, cut or padded (-1) to `width` columns."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    out = np.full((len(values), width), -1, dtype=np.int64)
    mask = np.zeros((len(values), width), dtype=bool)
    columns = order.shape[1]
    mask[:, :columns] = np.take_along_axis(keep, order, axis=1)
    out[:, :columns] = np.where(mask[:, :columns], np.take_along_axis(values, order, axis=1), -1)
    return out, mask


def hour_distance(hours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Circular time-of-day distance in whole hours (0..12)."""
    difference = np.abs(np.asarray(hours, dtype=np.int64) - np.asarray(reference, dtype=np.int64)) % 24
    return np.minimum(difference, 24 - difference)


def reference_time(batch: Mapping[str, Any], task_mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`(day, hour, gap_hours)` the time-conditioned features refer to: the query in `at_time` mode, the last record's
    day and hour in `next` mode (gap None: the time of the next visit is what is not known)."""
    _check_mode(task_mode)
    if task_mode == "next":
        return (to_numpy(batch["current_day"])[:, -1].astype(np.int64),
                to_numpy(batch["current_hour"])[:, -1].astype(np.int64), None)
    missing = [name for name in QUERY_COLUMNS if batch.get(name) is None]
    if missing:
        raise ValueError(f"task_mode='at_time' needs the query time: {missing} missing")
    day = to_numpy(batch["target_day"]).reshape(-1).astype(np.int64)
    hour = to_numpy(batch["target_hour"]).reshape(-1).astype(np.int64)
    gap = to_numpy(batch["target_time_gap"]).reshape(-1).astype(np.float64)
    if not (np.isfinite(gap).all() and (gap >= 0).all()):
        bad = gap[~(np.isfinite(gap) & (gap >= 0))][0]
        raise ValueError(f"target_time_gap holds {bad}, expected finite hours >= 0")
    return day, hour, gap


def build_candidates(
    retriever: CityRetriever,
    batch: Mapping[str, Any],
    task_mode: str,
    neighbors: int,
    max_candidates: int,
    time_features: bool = True,
    history: bool = False,
) -> CandidateSet:
    """Candidate cells and their features for a batch of one city.

    Each row lists the distinct known cells of the sample's records, most recently visited first, then the
    `neighbors` cells nearest the last record's point (capped at the city's number of cells), then with `history` the
    cells of the user's earlier records, most visited first; duplicates keep their first place and the row is cut or
    padded to `max_candidates`.

    Args:
        batch: `history_*` / `current_*` `cell` `(B, L)` integer ids, `coordinates` `(B, L, 2)` projected metres,
            `day` and `hour` `(B, L)`, oldest first; in `at_time` mode also `target_day`, `target_hour` and
            `target_time_gap` `(B,)` (the query; never the target's cell or position); with `history` also the
            `past_*` fields `(B, P)` (`history_nextlocllm.PAST_COLUMNS`).
    """
    missing = [name for name in RECORD_COLUMNS if batch.get(name) is None]
    if missing:
        raise ValueError(f"candidate features need the records' {missing}")
    history_ids = integer_ids(batch["history_cell"], "history_cell")
    current = integer_ids(batch["current_cell"], "current_cell")
    batch_size = len(history_ids)
    if len(current) != batch_size:
        raise ValueError(f"history_cell has {batch_size} rows but current_cell {len(current)}")
    if current.shape[1] == 0:
        raise ValueError("current_cell has no records: the last record's cell is a feature")
    xy = np.concatenate([to_numpy(batch["history_coordinates"]), to_numpy(batch["current_coordinates"])], axis=1)
    xy = xy.astype(np.float64, copy=False)
    records = np.concatenate([history_ids, current], axis=1)
    num_records = records.shape[1]
    if xy.shape != (batch_size, num_records, 2) or not np.isfinite(xy).all():
        raise ValueError(f"record coordinates have shape {xy.shape}, expected ({batch_size}, {num_records}, 2) finite")
    day = np.concatenate([to_numpy(batch["history_day"]), to_numpy(batch["current_day"])], axis=1)
    hour = np.concatenate([to_numpy(batch["history_hour"]), to_numpy(batch["current_hour"])], axis=1)
    if day.shape != records.shape or hour.shape != records.shape:
        raise ValueError(f"record day {day.shape} / hour {hour.shape} must match the cell ids {records.shape}")
    query_day, query_hour, gap = reference_time(batch, task_mode)
    if len(query_day) != batch_size:
        raise ValueError(f"the query time has {len(query_day)} rows for a batch of {batch_size}")
    if isinstance(neighbors, bool) or not isinstance(neighbors, (int, np.integer)) or neighbors < 0:
        raise ValueError(f"neighbors={neighbors!r}: expected a non-negative integer")
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, (int, np.integer)) or max_candidates < 1:
        raise ValueError(f"max_candidates={max_candidates!r}: expected a positive integer")

    record_rows = retriever.rows_of(records)
    known = record_rows >= 0
    last_point = xy[:, -1]
    k = min(int(neighbors), retriever.num_cells)
    if k > 0:
        neighbor_rows = retriever.rows_of(retriever.query(last_point, k)[0])
    else:
        neighbor_rows = np.zeros((batch_size, 0), dtype=np.int64)
    pool = [record_rows[:, ::-1], neighbor_rows]
    if history:
        past = check_past({name: to_numpy(batch[name]) for name in PAST_COLUMNS if batch.get(name) is not None},
                          batch_size)
        past_rows = np.where(past["mask"], retriever.rows_of(past["cell"]), -1)
        pool.append(earlier_cells_by_visits(past_rows, past["mask"]))
    pool = np.concatenate(pool, axis=1)
    rows, mask = compact(pool, first_occurrences(pool), int(max_candidates))

    safe_rows = np.where(mask, rows, 0)
    std = retriever.coordinate_std
    from_last = retriever.xy[safe_rows] - last_point[:, None]  # (B, M, 2) metres
    offset = from_last / std
    distance = np.linalg.norm(offset, axis=-1)
    metres = np.linalg.norm(from_last, axis=-1)
    gyration = np.sqrt(((xy - xy.mean(axis=1, keepdims=True)) ** 2).sum(axis=-1).mean(axis=1))
    distance_gyration = np.log1p(metres / np.maximum(gyration, MIN_GYRATION_M)[:, None])

    # visits[b, m, t]: record t of sample b lies in candidate m (unknown records and padding match nothing).
    visits = (rows[:, :, None] == record_rows[:, None, :]) & mask[:, :, None] & known[:, None, :]
    counts = visits.sum(axis=-1)
    last_visit = np.where(visits, np.arange(num_records), -1).max(axis=-1)
    visited = last_visit >= 0
    recency = np.where(visited, 1.0 / (num_records - last_visit.clip(min=0)), 0.0)
    markov_1 = _successor_share(visits, record_rows, known, order=1)
    markov_2 = _successor_share(visits, record_rows, known, order=2)
    visit_share = counts / num_records
    rule = np.where(mask, RULE_ALPHA * markov_1 + (1 - RULE_ALPHA) * visit_share, -np.inf)
    rule_rank = np.empty_like(rows)
    np.put_along_axis(rule_rank, np.argsort(-rule, axis=1, kind="stable"), np.arange(rows.shape[1])[None], axis=1)
    columns = [
        offset[..., 0], offset[..., 1], distance, distance_gyration,
        *np.moveaxis(retriever.poi_frequency[safe_rows], -1, 0),
        visit_share, np.log1p(counts), visits[:, :, history_ids.shape[1]:].sum(axis=-1) / current.shape[1], recency,
        visited, visits[:, :, -1], markov_1, markov_2, np.log1p(rule_rank + 1),
    ]
    if time_features:
        columns += _time_columns(visits, day, hour, query_day, query_hour, gap, num_records)
    if history:
        columns += history_columns(
            safe_rows, mask, past, past_rows, counts, retriever.poi_frequency, query_day,
            hour_distance(past["hour"], query_hour[:, None]), TIME_WINDOW_HOURS, time_features)
    features = np.stack(np.broadcast_arrays(*columns), axis=-1).astype(np.float32)
    features[~mask] = 0.0
    weights = visits / np.maximum(counts, 1)[..., None]
    return CandidateSet(
        cell_ids=np.where(mask, retriever.cell_ids[safe_rows], -1),
        mask=mask,
        features=features,
        record_weights=weights.astype(np.float32),
        num_unknown_records=(~known).sum(axis=1).astype(np.int64),
    )


def merge_candidate_sets(parts: Mapping[str, CandidateSet], rows: Mapping[str, np.ndarray], total: int) -> CandidateSet:
    """One batch's candidate sets built per city (`parts[name]` for the batch rows `rows[name]`), in batch order."""
    first = next(iter(parts.values()))
    if len(parts) == 1 and len(next(iter(rows.values()))) == total:
        return first
    merged = {}
    for field in ("cell_ids", "mask", "features", "record_weights", "num_unknown_records"):
        template = getattr(first, field)
        merged[field] = np.zeros((total, *template.shape[1:]), dtype=template.dtype)
        for name, part_rows in rows.items():
            merged[field][part_rows] = getattr(parts[name], field)
    return CandidateSet(**merged)


def _successor_share(visits: np.ndarray, record_rows: np.ndarray, known: np.ndarray, order: int) -> np.ndarray:
    """`(B, M)`: of the earlier occurrences of the last `order` cells (as a sequence), the share followed by each
    candidate (within-sample Markov chain of that order; 0 where the pattern never occurred before)."""
    num_records = record_rows.shape[1]
    if num_records <= order:
        return np.zeros(visits.shape[:2])
    # pattern_end[b, t]: records t-order+1 .. t equal the last `order` records, for t < T-1 (so t+1 is a record).
    pattern_end = known[:, -order:].all(axis=1, keepdims=True).repeat(num_records - order, axis=1)
    for lag in range(order):
        window = slice(order - 1 - lag, num_records - 1 - lag)
        pattern_end &= (record_rows[:, window] == record_rows[:, num_records - 1 - lag, None]) & known[:, window]
    followed = (visits[:, :, order:] & pattern_end[:, None, :]).sum(axis=-1)
    return followed / np.maximum(pattern_end.sum(axis=-1, keepdims=True), 1)


def _time_columns(visits, day, hour, query_day, query_hour, gap, num_records) -> list[np.ndarray]:
    distance = hour_distance(hour, query_hour[:, None])  # (B, T)
    in_window = distance <= TIME_WINDOW_HOURS
    same_daytype = (day >= 5) == (query_day[:, None] >= 5)

    def fraction(condition: np.ndarray) -> np.ndarray:
        return (visits & condition[:, None]).sum(axis=-1) / np.maximum(condition.sum(axis=-1), 1)[:, None]

    nearest_hour = np.where(visits, distance[:, None], 12).min(axis=-1) / 12.0
    angle = 2 * np.pi * query_hour / 24.0
    columns = [
        (visits & in_window[:, None]).sum(axis=-1) / num_records,
        fraction(in_window),
        fraction(same_daytype),
        fraction(in_window & same_daytype),
        nearest_hour,
        np.sin(angle)[:, None],
        np.cos(angle)[:, None],
        (query_day >= 5).astype(np.float64)[:, None],
    ]
    if gap is not None:
        columns.append(np.log1p(gap)[:, None])
    return columns


class CandidateScorer(nn.Module):
    """Scores each candidate from its features and, optionally, the sample's context and the candidate's own records.

    `context` is the backbone's state at the readout position (it has read the whole sequence and, in `at_time`
    mode, the query); `record_states` are the backbone's states at each input record, pooled per candidate with
    `CandidateSet.record_weights`, so a candidate is also described by what the language model made of its visits.
    Their product lets the query state select candidates by those visits (as in pointer / attention models of
    returns). The context path starts at zero, so an untrained context adds nothing and a scorer warm-started from a
    features-only one (`warm_start_from`) first scores exactly like it; training then adds what the states know.

    Each feature enters twice: standardized, and as a piecewise-linear encoding over `feature_bins` quantile bins
    (Gorishniy et al., 2022, "On Embeddings for Numerical Features in Tabular Deep Learning"): component b is 0 below
    bin b, 1 above it and linear inside. The features are shares, counts and distances with heavy tails and point
    masses, on which a plain MLP learns thresholds slowly and a boosted tree learns them at once; the encoding hands
    the MLP those thresholds (on NYC `at_time` it lifts the features-only ranker by about one Hit@1 point, see
    docs/results.md). Statistics and bin edges are fitted on training candidates (`fit_feature_encoding`) and are
    persistent buffers, so they travel with the weights; a bin of zero width (a point mass) encodes as 0.

    The same MLP runs on every candidate independently, so scores are permutation-equivariant over candidates, any
    number of candidates works, and no parameter belongs to a cell. Masked candidates get the dtype's lowest finite
    value rather than -inf: a row without candidates then gives a uniform softmax instead of NaN, and the value stays
    representable in bfloat16 and float16.
    """

    def __init__(self, num_features: int, context_size: int, width: int, feature_bins: int = 8):
        super().__init__()
        self.register_buffer("feature_shift", torch.zeros(num_features))
        self.register_buffer("feature_scale", torch.ones(num_features))
        self.register_buffer("bin_edges", torch.zeros(num_features, feature_bins + 1))
        self.feature_projection = nn.Linear(num_features * (1 + feature_bins), width)
        if context_size:
            self.context_projection = nn.Linear(context_size, width, bias=False)
            self.record_projection = nn.Linear(context_size, width, bias=False)
            self.query_projection = nn.Linear(context_size, width, bias=False)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))
        self.reset_context_path()

    @property
    def num_features(self) -> int:
        return len(self.feature_shift)

    @property
    def feature_bins(self) -> int:
        return self.bin_edges.shape[1] - 1

    def init_head_weights(self) -> None:
        """The model's initialization, after its layers' (children come first): the context path starts at zero."""
        if hasattr(self, "context_projection"):
            init.zeros_(self.context_projection.weight)
            init.zeros_(self.record_projection.weight)

    @torch.no_grad()
    def reset_context_path(self) -> None:
        """Zero the context's and the records' projections (the query's stays random, else their product would
        have no gradient)."""
        if hasattr(self, "context_projection"):
            self.context_projection.weight.zero_()
            self.record_projection.weight.zero_()

    @torch.no_grad()
    def warm_start_from(self, features_only: "CandidateScorer") -> None:
        """Copy a features-only scorer (same width and bins, the same leading features) into this one's feature path
        and MLP; extra features of this scorer start with zero weight."""
        source, target = features_only.feature_projection, self.feature_projection
        count = features_only.num_features
        if (source.out_features != target.out_features or count > self.num_features
                or features_only.feature_bins != self.feature_bins):
            raise ValueError(
                f"cannot warm-start a scorer of {self.num_features} features, width {target.out_features} and "
                f"{self.feature_bins} bins from one of {count} features, width {source.out_features} and "
                f"{features_only.feature_bins} bins")
        self.feature_shift[:count], self.feature_scale[:count] = features_only.feature_shift, features_only.feature_scale
        self.bin_edges[:count] = features_only.bin_edges
        target.weight.zero_()
        target.weight[:, :source.in_features] = source.weight  # each feature's columns are contiguous, in order
        target.bias.copy_(source.bias)
        self.mlp.load_state_dict(features_only.mlp.state_dict())
        self.reset_context_path()

    @torch.no_grad()
    def fit_feature_encoding(self, features: np.ndarray, mask: np.ndarray) -> None:
        """Mean, standard deviation and quantile bin edges of the leading `features.shape[-1]` features over real
        candidates (training data only); later features (e.g. ones that depend on an untrained head) keep the
        identity scaling and zero-width bins."""
        real = np.asarray(features, dtype=np.float64)[np.asarray(mask, dtype=bool)]
        count = real.shape[-1]
        if len(real) == 0 or count > self.num_features:
            raise ValueError(f"fit_feature_encoding got {len(real)} real candidates of {count} features "
                             f"(this scorer reads {self.num_features})")
        std = real.std(axis=0)
        self.feature_shift[:count] = torch.from_numpy(real.mean(axis=0))
        self.feature_scale[:count] = torch.from_numpy(np.where(std > 1e-6, std, 1.0))
        quantiles = np.linspace(0.0, 1.0, self.feature_bins + 1)
        self.bin_edges[:count] = torch.from_numpy(np.quantile(real, quantiles, axis=0).T.copy())

    def encode_features(self, features: torch.Tensor) -> torch.Tensor:
        """`(B, M, F)` raw features -> `(B, M, F * (1 + bins))`: per feature, its standardized value then its bins."""
        dtype = self.feature_projection.weight.dtype
        features = features.to(dtype)
        standardized = (features - self.feature_shift.to(dtype)) / self.feature_scale.to(dtype)
        lower, upper = self.bin_edges[:, :-1].to(dtype), self.bin_edges[:, 1:].to(dtype)
        bin_width = upper - lower
        inside = (features[..., None] - lower) / bin_width.clamp_min(torch.finfo(dtype).tiny)
        bins = torch.where(bin_width > 0, inside.clamp(0.0, 1.0), torch.zeros_like(inside))
        return torch.cat([standardized[..., None], bins], dim=-1).flatten(-2)

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor | None = None,
        record_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """features `(B, M, F)`, mask `(B, M)` bool, context `(B, H)`, record_states `(B, M, H)` -> scores `(B, M)`."""
        dtype = self.feature_projection.weight.dtype
        hidden = self.feature_projection(self.encode_features(features))
        if hasattr(self, "context_projection"):
            if context is None or record_states is None:
                raise ValueError("this scorer reads the backbone's states: pass context and record_states")
            context = context.to(dtype)
            records = self.record_projection(record_states.to(dtype))
            hidden = hidden + self.context_projection(context)[:, None] + records
            hidden = hidden + self.query_projection(context)[:, None] * records
        scores = self.mlp(hidden).squeeze(-1)
        return scores.masked_fill(~mask.bool(), torch.finfo(scores.dtype).min)


def candidate_listwise_loss(
    scores: torch.Tensor, cell_ids: torch.Tensor, target_cells: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy of the true cell among each sample's candidates, in float32.

    Only samples whose true cell is among their candidates (`covered`) contribute: the others carry no signal for
    ranking. Padding (`cell_ids < 0`) is excluded whatever its score. With no covered sample the loss is a zero that
    still depends on `scores`, so a training step can call backward unconditionally.

    Returns:
        `(loss, covered)`: the mean over covered samples, and `(B,)` bool.
    """
    cell_ids = torch.as_tensor(cell_ids, device=scores.device)
    target_cells = torch.as_tensor(target_cells, device=scores.device)
    padding = cell_ids < 0
    hits = (cell_ids == target_cells[:, None]) & ~padding
    covered = hits.any(dim=1)
    if not covered.any():
        return scores.float()[covered].sum(), covered
    logits = scores.float().masked_fill(padding, torch.finfo(torch.float32).min)
    loss = nn.functional.cross_entropy(logits[covered], hits[covered].int().argmax(dim=1))
    return loss, covered


__all__ = [
    "QUERY_COLUMNS",
    "RECORD_COLUMNS",
    "CandidateSet",
    "CandidateScorer",
    "build_candidates",
    "candidate_feature_names",
    "candidate_feature_size",
    "hour_distance",
    "merge_candidate_sets",
    "reference_time",
    "candidate_listwise_loss",
]
