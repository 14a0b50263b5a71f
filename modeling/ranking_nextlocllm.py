"""What every ranking of a city's cells shares, for the model's heads and the baselines alike.

Each head type ranks one city's samples its own way (`heads_nextlocllm.HEAD_TYPES`: by distance, by mixture density,
or scored candidates first); what they share lives here:
- `merge_rankings`: candidates by score, then a fallback ranking for the remaining places (the candidate ranker, the
  feature rankers); a list of cells padded with the nearest cells (`pad_with_nearest`) is the same merge with the
  list's order as the score;
- `rank_batch`: a batch that mixes cities, ranked city by city at one width; a small city's ranking stops at its
  last cell and pads with `NO_CELL`, which never hits.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from .candidates_nextlocllm import compact, first_occurrences, integer_ids, to_numpy
from .metrics_nextlocllm import NO_CELL
from .retrieval_nextlocllm import CityRetriever, CityRows


def merge_rankings(candidate_ids: Any, scores: Any, fallback_ranked: Any, k: int) -> np.ndarray:
    """Top-k cell ids per sample: candidates by descending score, then the fallback ranking's remaining cells.

    Padding (negative ids) is skipped, ties keep candidate order, and every id appears once. The fallback (e.g. the
    KD-tree's top-k) guarantees k cells where the candidate set is small; `ValueError` if even both fall short.
    Accepts numpy arrays or tensors; returns a `(B, k)` int64 numpy array.
    """
    candidate_ids = integer_ids(candidate_ids, "candidate_ids")
    fallback = integer_ids(fallback_ranked, "fallback_ranked")
    scores = to_numpy(scores).astype(np.float64, copy=False)
    if scores.shape != candidate_ids.shape:
        raise ValueError(f"scores has shape {scores.shape}, expected {candidate_ids.shape} like candidate_ids")
    if len(fallback) != len(candidate_ids):
        raise ValueError(f"fallback_ranked has {len(fallback)} rows, candidate_ids {len(candidate_ids)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r}: expected a positive integer")
    order = np.argsort(-scores, axis=1, kind="stable")
    pool = np.concatenate([np.take_along_axis(candidate_ids, order, axis=1), fallback], axis=1)
    keep = first_occurrences(pool)
    short = np.flatnonzero(keep.sum(axis=1) < k)
    if len(short):
        row = short[0]
        raise ValueError(f"sample {row} has only {keep[row].sum()} distinct cells among candidates and fallback, k={k}")
    return compact(pool, keep, int(k))[0]


def pad_with_nearest(ranked: Any, points: Any, retriever: CityRetriever, k: int) -> np.ndarray:
    """`(N, k)` cell ids: the cells of `ranked` `(N, m)` in order (negative ids = empty places, repeats dropped), then
    the cells nearest to `points` `(N, 2)` (projected metres) that are not listed yet."""
    ranked = integer_ids(ranked, "ranked")
    if len(ranked) == 0:
        return np.zeros((0, k), dtype=np.int64)
    nearest, _ = retriever.query(np.asarray(points, dtype=np.float64), k)
    order_as_score = np.broadcast_to(-np.arange(ranked.shape[1], dtype=np.float64), ranked.shape)
    return merge_rankings(ranked, order_as_score, nearest, k)


def rank_batch(
    coordinates: torch.Tensor,
    cities: Sequence[CityRows],
    k: int,
    rank_city: Callable[[CityRows, int], tuple[np.ndarray, np.ndarray]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sample's top-k cells of its city, their distances (m) from the predicted point `coordinates` `(B, 2)`, and
    what the head ranked them by (higher first), on the coordinates' device.

    `rank_city(city, depth)` is the head's ranking of one city's samples. The depth follows each city: one with fewer
    than k cells ranks all of them, and its remaining places hold `NO_CELL` at an infinite distance and a NaN score (a
    batch may mix cities, and gathering across processes needs one width).
    """
    points = coordinates.detach().cpu().numpy()
    cells = np.full((len(points), k), NO_CELL, dtype=np.int64)
    distances = np.full((len(points), k), np.inf, dtype=np.float64)
    scores = np.full((len(points), k), np.nan, dtype=np.float64)
    for city in cities:
        retriever, rows = city.retriever, city.rows
        depth = min(k, retriever.num_cells)
        cells[rows, :depth], scores[rows, :depth] = rank_city(city, depth)
        distances[rows, :depth] = np.linalg.norm(retriever.xy[retriever.rows_of(cells[rows, :depth])]
                                                 - points[rows, None], axis=-1)
    device = coordinates.device
    return tuple(torch.from_numpy(array).to(device) for array in (cells, distances, scores))


__all__ = ["merge_rankings", "pad_with_nearest", "rank_batch"]
