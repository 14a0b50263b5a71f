"""From a head's output to a city's top-k cells: the one home of ranking, shared by the model and the baselines.

Three rankings exist, and each is a plain numpy function of the head's output and the city's retriever:
- a point (the paper's head): the cells nearest to it (KD-tree);
- a Gaussian mixture: the cells of highest density at their centres (`rank_cells_by_mixture_density`);
- scored candidates (the candidate ranker, the feature rankers): candidates by score, then the point's or the
  mixture's ranking for the remaining places (`merge_rankings`); a list of cells padded with the nearest cells
  (`pad_with_nearest`) is the same merge with the list's order as the score.

The model's ranking (`rank_cells`) stops at a small city's last cell and pads with `NO_CELL`, which never hits.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from .candidates_nextlocllm import CandidateSet, _compact, _first_occurrences, _integer_ids, _to_numpy
from .metrics_nextlocllm import NO_CELL
from .mixture_nextlocllm import mixture_log_density_np, rank_cells_by_mixture_density
from .retrieval_nextlocllm import CityRetriever


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


def pad_with_nearest(ranked: Any, points: Any, retriever: CityRetriever, k: int) -> np.ndarray:
    """`(N, k)` cell ids: the cells of `ranked` `(N, m)` in order (negative ids = empty places, repeats dropped), then
    the cells nearest to `points` `(N, 2)` (projected metres) that are not listed yet."""
    ranked = _integer_ids(ranked, "ranked")
    if len(ranked) == 0:
        return np.zeros((0, k), dtype=np.int64)
    nearest, _ = retriever.query(np.asarray(points, dtype=np.float64), k)
    order_as_score = np.broadcast_to(-np.arange(ranked.shape[1], dtype=np.float64), ranked.shape)
    return merge_rankings(ranked, order_as_score, nearest, k)


def city_groups(city: str | Sequence[str], batch_size: int) -> dict[str, np.ndarray]:
    """Sample rows of each city in a batch (a batch may mix cities), in order of first appearance."""
    names = [city] * batch_size if isinstance(city, str) else list(city)
    if len(names) != batch_size:
        raise ValueError(f"city holds {len(names)} names for a batch of {batch_size}")
    return {name: np.array([i for i, n in enumerate(names) if n == name]) for name in dict.fromkeys(names)}


def mixture_density_feature(
    candidates: CandidateSet,
    mixture: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    city: str | Sequence[str],
    retriever_of: Callable[[str], CityRetriever],
) -> np.ndarray:
    """Candidate features plus the mixture's log-density at each cell centre, in normalized units (city-agnostic),
    clipped to [-30, 10] and divided by 10; 0 at padding. A light mode then lifts its cells less than a heavy one."""
    means, log_scales, log_weights = (t.detach().double().cpu().numpy() for t in mixture)
    mean, std = mean.cpu().numpy(), std.cpu().numpy()
    centres = np.zeros((*candidates.cell_ids.shape, 2))
    for name, rows in city_groups(city, len(centres)).items():
        retriever = retriever_of(name)
        centres[rows] = retriever.xy[retriever.rows_of(np.maximum(candidates.cell_ids[rows], 0)).clip(min=0)]
    normalized = (centres - mean[:, None]) / std[:, None]
    density = mixture_log_density_np(normalized, means, np.exp(log_scales), log_weights)
    feature = np.where(candidates.mask, np.clip(density, -30.0, 10.0) / 10.0, 0.0).astype(np.float32)
    return np.concatenate([candidates.features, feature[..., None]], axis=-1)


def rank_cells(
    coordinates: torch.Tensor,
    city: str | Sequence[str],
    retriever_of: Callable[[str], CityRetriever],
    k: int,
    mixture_metres: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    candidates: CandidateSet | None = None,
    scores: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's top-k cells of its city and their distances (m) from the predicted point, on its device.

    Cells are ranked by distance to `coordinates` `(B, 2)`, or with `mixture_metres` (means, scales `(B, K, 2)` and
    log-weights `(B, K)`, projected metres) by mixture density; with `candidates` and their `scores` the scored
    candidates come first and that ranking fills the remaining places. The depth follows each city: one with fewer
    than k cells ranks all of them, and its remaining places hold `NO_CELL` at an infinite distance (a batch may mix
    cities, and gathering across processes needs one width).
    """
    points = coordinates.detach().cpu().numpy()
    cells = np.full((len(points), k), NO_CELL, dtype=np.int64)
    distances = np.full((len(points), k), np.inf, dtype=np.float64)
    for name, rows in city_groups(city, len(points)).items():
        retriever = retriever_of(name)
        depth = min(k, retriever.num_cells)
        if mixture_metres is None:
            ranked, _ = retriever.query(points[rows], depth)
        else:
            means, scales, log_weights = (t.detach().cpu().numpy()[rows] for t in mixture_metres)
            ranked, _ = rank_cells_by_mixture_density(retriever, means, scales, log_weights, depth)
        if candidates is not None:
            ranked = merge_rankings(candidates.cell_ids[rows], scores.detach()[rows].float().cpu().numpy(), ranked,
                                    depth)
        cells[rows, :depth] = ranked
        distances[rows, :depth] = np.linalg.norm(retriever.xy[retriever.rows_of(ranked)] - points[rows, None], axis=-1)
    device = coordinates.device
    return torch.from_numpy(cells).to(device), torch.from_numpy(distances).to(device)


__all__ = ["merge_rankings", "pad_with_nearest", "city_groups", "mixture_density_feature", "rank_cells"]
