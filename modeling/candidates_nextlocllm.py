"""History-aware candidate ranking on top of the regressed point, built to transfer across cities.

The regression head gives one point; the KD-tree ranks cells by distance alone, so a user's own frequent places lose
to whatever cell lies nearest. This module re-ranks a small candidate set per sample, the cells of the sample's own
records plus the neighbours of the predicted point(s), with a per-candidate MLP. No feature or parameter refers to a
cell id: offsets are divided by the city's coordinate standard deviation, visit statistics are shares of the input
records, so the same scorer serves a city with any number of cells and any id range.

Candidate features, in this order (`candidate_feature_size(C) == C + 11`):

    0-1    centre - last input point, divided by the city's coordinate_std
    2-3    centre - nearest anchor, divided by coordinate_std (nearest in these normalized units)
    4      that normalized distance to the nearest anchor
    5..    the cell's POI frequency vector (C)
    C+5    share of all input records (history + current) in this cell
    C+6    share of the current records in this cell
    C+7    recency 1 / (1 + number of records after its last visit); 0 if never visited
    C+8    1 if visited in the inputs, else 0
    C+9    1 if it is the last record's cell, else 0
    C+10   within-sample Markov step: share of the visits to the last record's cell (before it) followed by this cell

Unknown cell ids: a record whose cell id is not one of the retriever's cells (negative ids included, e.g. padding)
has no centre or POI vector, so it never becomes a candidate and matches no candidate. It still counts as a record:
shares are over all input records and recency counts positions, so a sample's features do not depend on which of its
records happen to be known. `CandidateSet.num_unknown_records` reports how many records of each sample were skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .retrieval_nextlocllm import CityRetriever

# Features besides the POI vector: last-point offset (2), anchor offset (2), anchor distance (1), 5 visit statistics.
_NUM_GEOMETRY_FEATURES = 5
_NUM_VISIT_FEATURES = 6


def candidate_feature_size(num_poi_classes: int) -> int:
    """Number of features per candidate for a city with `num_poi_classes` POI classes."""
    return _NUM_GEOMETRY_FEATURES + int(num_poi_classes) + _NUM_VISIT_FEATURES


@dataclass
class CandidateSet:
    """Candidate cells per sample, padded to a common width.

    Args:
        cell_ids: `(B, M)` int64 candidate cell ids, -1 at padding.
        mask: `(B, M)` bool, True at real candidates (they come first in each row).
        features: `(B, M, F)` float32 city-agnostic features (see the module docstring), zeros at padding.
        num_unknown_records: `(B,)` int64 input records whose cell id the retriever does not know (skipped).
    """

    cell_ids: np.ndarray
    mask: np.ndarray
    features: np.ndarray
    num_unknown_records: np.ndarray


def _to_numpy(value: Any) -> np.ndarray:
    """Arrays or tensors on any device; bfloat16 (which numpy lacks) becomes float32."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _integer_ids(value: Any, name: str) -> np.ndarray:
    ids = _to_numpy(value)
    if ids.ndim != 2:
        raise ValueError(f"{name} has shape {ids.shape}, expected (batch, length)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must hold integer cell ids, got dtype {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def _first_occurrences(values: np.ndarray) -> np.ndarray:
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


def _compact(values: np.ndarray, keep: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Kept entries of each row moved to the front in order, cut or padded (-1) to `width` columns."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    out = np.full((len(values), width), -1, dtype=np.int64)
    mask = np.zeros((len(values), width), dtype=bool)
    columns = order.shape[1]
    mask[:, :columns] = np.take_along_axis(keep, order, axis=1)
    out[:, :columns] = np.where(mask[:, :columns], np.take_along_axis(values, order, axis=1), -1)
    return out, mask


def build_candidates(
    retriever: CityRetriever,
    history_cell: Any,
    current_cell: Any,
    last_point: Any,
    anchors: Any,
    neighbors_per_anchor: int,
    max_candidates: int,
) -> CandidateSet:
    """Candidate cells and their features for a batch of one city.

    Each row lists the distinct known cells of the sample's records, most recently visited first, then the
    `neighbors_per_anchor` nearest cells of every anchor interleaved by rank (every anchor's nearest, then every
    anchor's second...) so that truncation keeps the closest cells of all anchors; duplicates keep their first place
    and the row is cut or padded to `max_candidates`. `neighbors_per_anchor` is capped at the city's number of cells,
    so one setting serves small and large cities.

    Args:
        history_cell / current_cell: `(B, Lh)` / `(B, Lc)` integer cell ids of the input records, oldest first.
        last_point: `(B, 2)` the last input record's position, projected metres.
        anchors: `(B, A, 2)` predicted point(s), projected metres, A >= 1.
    """
    history = _integer_ids(history_cell, "history_cell")
    current = _integer_ids(current_cell, "current_cell")
    last_point = _to_numpy(last_point).astype(np.float64, copy=False)
    anchors = _to_numpy(anchors).astype(np.float64, copy=False)
    batch_size = len(history)
    if len(current) != batch_size:
        raise ValueError(f"history_cell has {batch_size} rows but current_cell {len(current)}")
    if current.shape[1] == 0:
        raise ValueError("current_cell has no records: the last record's cell is a feature")
    if last_point.shape != (batch_size, 2) or not np.isfinite(last_point).all():
        raise ValueError(f"last_point has shape {last_point.shape}, expected ({batch_size}, 2) finite metres")
    if anchors.ndim != 3 or anchors.shape[0] != batch_size or anchors.shape[1] < 1 or anchors.shape[2] != 2:
        raise ValueError(f"anchors has shape {anchors.shape}, expected ({batch_size}, A >= 1, 2)")
    if not isinstance(neighbors_per_anchor, (int, np.integer)) or neighbors_per_anchor < 0:
        raise ValueError(f"neighbors_per_anchor={neighbors_per_anchor!r}: expected a non-negative integer")
    if not isinstance(max_candidates, (int, np.integer)) or max_candidates < 1:
        raise ValueError(f"max_candidates={max_candidates!r}: expected a positive integer")

    records = np.concatenate([history, current], axis=1)
    num_records = records.shape[1]
    record_rows = retriever.rows_of(records)
    known = record_rows >= 0

    num_anchors = anchors.shape[1]
    k = min(int(neighbors_per_anchor), retriever.num_cells)
    if k > 0:
        neighbor_ids, _ = retriever.query(anchors.reshape(-1, 2), k)
        # (B*A, k) -> (B, k, A) -> (B, k*A): rank-major, so each anchor's nearest cells come before anyone's farther.
        neighbor_rows = retriever.rows_of(neighbor_ids).reshape(batch_size, num_anchors, k).transpose(0, 2, 1)
        neighbor_rows = neighbor_rows.reshape(batch_size, k * num_anchors)
    else:
        neighbor_rows = np.zeros((batch_size, 0), dtype=np.int64)
    pool = np.concatenate([record_rows[:, ::-1], neighbor_rows], axis=1)
    rows, mask = _compact(pool, _first_occurrences(pool), int(max_candidates))

    safe_rows = np.where(mask, rows, 0)
    std = retriever.coordinate_std
    centres = retriever.xy[safe_rows]  # (B, M, 2)
    last_offset = (centres - last_point[:, None]) / std
    anchor_offsets = (centres[:, :, None] - anchors[:, None]) / std  # (B, M, A, 2)
    anchor_distances = np.linalg.norm(anchor_offsets, axis=-1)
    nearest = anchor_distances.argmin(axis=-1)[..., None]
    anchor_offset = np.take_along_axis(anchor_offsets, nearest[..., None], axis=2)[:, :, 0]
    anchor_distance = np.take_along_axis(anchor_distances, nearest, axis=2)

    # visits[b, m, t]: record t of sample b lies in candidate m (unknown records and padding match nothing).
    visits = (rows[:, :, None] == record_rows[:, None, :]) & mask[:, :, None] & known[:, None, :]
    last_visit = np.where(visits, np.arange(num_records), -1).max(axis=-1)
    visited = last_visit >= 0
    recency = np.where(visited, 1.0 / (num_records - last_visit.clip(min=0)), 0.0)
    # Within-sample Markov step: of the records that were in the last record's cell, how many were followed by this one.
    from_last = (record_rows[:, :-1] == record_rows[:, -1:]) & known[:, :-1] & known[:, -1:]  # (B, T-1)
    transitions = (visits[:, :, 1:] & from_last[:, None, :]).sum(axis=-1)
    transition_share = transitions / np.maximum(from_last.sum(axis=-1, keepdims=True), 1)
    visit_features = np.stack(
        [
            visits.sum(axis=-1) / num_records,
            visits[:, :, history.shape[1]:].sum(axis=-1) / current.shape[1],
            recency,
            visited,
            visits[:, :, -1],
            transition_share,
        ],
        axis=-1,
    )
    features = np.concatenate(
        [last_offset, anchor_offset, anchor_distance, retriever.poi_frequency[safe_rows], visit_features], axis=-1
    ).astype(np.float32)
    features[~mask] = 0.0
    return CandidateSet(
        cell_ids=np.where(mask, retriever.cell_ids[safe_rows], -1),
        mask=mask,
        features=features,
        num_unknown_records=(~known).sum(axis=1).astype(np.int64),
    )


class CandidateScorer(nn.Module):
    """Scores each candidate from its features and the sample's context (e.g. the backbone's last hidden state).

    The same MLP runs on every candidate independently, so scores are permutation-equivariant over candidates, any
    number of candidates works, and no parameter belongs to a cell. Masked candidates get the dtype's lowest finite
    value rather than -inf: a row without candidates then gives a uniform softmax instead of NaN, and the value stays
    representable in bfloat16 and float16.
    """

    def __init__(self, num_features: int, context_size: int, width: int):
        super().__init__()
        self.context_projection = nn.Linear(context_size, width)
        self.mlp = nn.Sequential(nn.Linear(num_features + width, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, features: torch.Tensor, mask: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """features `(B, M, F)`, mask `(B, M)` bool, context `(B, context_size)` -> scores `(B, M)`."""
        dtype = self.context_projection.weight.dtype
        context = self.context_projection(context.to(dtype))
        inputs = torch.cat([features.to(dtype), context[:, None].expand(-1, features.shape[1], -1)], dim=-1)
        scores = self.mlp(inputs).squeeze(-1)
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


def merge_rankings(candidate_ids: Any, scores: Any, fallback_ranked: Any, k: int) -> np.ndarray:
    """Top-k cell ids per sample: candidates by descending score, then the fallback ranking's remaining cells.

    Padding (negative ids) is skipped, ties keep candidate order, and every id appears once. The fallback (e.g. the
    KD-tree's top-k) guarantees k cells where the candidate set is small; `ValueError` if even both fall short.
    Accepts numpy arrays or tensors; returns a `(B, k)` int64 numpy array.
    """
    candidate_ids = _integer_ids(candidate_ids, "candidate_ids")
    fallback = _integer_ids(fallback_ranked, "fallback_ranked")
    scores = _to_numpy(scores).astype(np.float64, copy=False)
    if scores.shape != candidate_ids.shape:
        raise ValueError(f"scores has shape {scores.shape}, expected {candidate_ids.shape} like candidate_ids")
    if len(fallback) != len(candidate_ids):
        raise ValueError(f"fallback_ranked has {len(fallback)} rows, candidate_ids {len(candidate_ids)}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r}: expected a positive integer")
    order = np.argsort(-scores, axis=1, kind="stable")
    pool = np.concatenate([np.take_along_axis(candidate_ids, order, axis=1), fallback], axis=1)
    keep = _first_occurrences(pool)
    short = np.flatnonzero(keep.sum(axis=1) < k)
    if len(short):
        row = short[0]
        raise ValueError(f"sample {row} has only {keep[row].sum()} distinct cells among candidates and fallback, k={k}")
    return _compact(pool, keep, int(k))[0]


__all__ = [
    "CandidateSet",
    "CandidateScorer",
    "build_candidates",
    "candidate_feature_size",
    "candidate_listwise_loss",
    "merge_rankings",
]
