"""Scores of ranked next-cell predictions (Hit@k, MRR, NDCG@k, distance errors) as plain numpy functions.

The one home of the metrics' arithmetic: the package's evaluation and study (`nextlocllm_hf.metrics`) and the
self-contained `evaluate` metric (`nextlocllm_hf/evaluate_metric/`, which ships this file and
`geometry_nextlocllm.py` beside its script) both compute with it, so their numbers are the same.

Conventions used throughout:

* ``ranked_cells`` is an integer array ``(N, K)``: for each of N samples, K **distinct** candidate cell ids, best first.
  Duplicate ids inside one row are rejected (they would silently shorten the list). A negative id (``NO_CELL``) is an
  empty place: a city with fewer cells than K ranks all of them and pads the row (``pad_ranking``); it never hits and
  may repeat, so with 3 cells ranked, Hit@5 = Hit@3.
* ``target_cells`` is ``(N,)``: the true next cell of each sample.
* The *rank* of a target is its 1-based position in its row (1 = best), or "absent" when the row does not contain it.
* Positions ``predicted_xy`` / ``target_xy`` are ``(N, 2)`` Web Mercator (EPSG:3857) metres ``(x, y)``.
  For the ID/rule baselines, which predict cells rather than points, the predicted position is the centroid of their
  top-1 cell.

Two distances are reported, because the paper's "metres" are Web Mercator units, which overstate ground distance by
``1 / cos(latitude)`` (x1.16-1.21 at the paper's cities):

* ``mean_error_m`` / ``median_error_m``: great-circle (haversine) distance on a sphere of the **mean Earth radius**
  ``R = 6 371 008.8 m`` (IUGG) between the two positions after the inverse Web Mercator projection (both in
  ``geometry_nextlocllm.py``). Compared with the WGS84 ellipsoid this is within ~0.5 %.
* ``mean_projected_error_m``: plain Euclidean distance in Web Mercator units, the number the authors' code reports.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .geometry_nextlocllm import haversine_m, mercator_to_lonlat

DEFAULT_KS = (1, 5, 10, 20)
DEFAULT_NDCG_KS = (5, 10)
NO_CELL = -1  # an empty place in a ranking (past a small city's last cell): never a hit


# ------------------------------------------------------------------------------------------------------------------
# validation helpers


def _as_ranked(ranked_cells, name: str = "ranked_cells") -> np.ndarray:
    arr = np.asarray(ranked_cells)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, K), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (N=0): no samples to score")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has K=0 columns: every sample needs at least one ranked cell")
    return _as_int_ids(arr, name)


def _as_int_ids(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must hold integer cell ids, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN")
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ValueError(f"{name} must hold integer cell ids, got non-integer values")
    return arr.astype(np.int64, copy=False)


def _as_targets(target_cells, n: int, name: str = "target_cells") -> np.ndarray:
    arr = np.asarray(target_cells)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match ranked_cells, got shape {arr.shape}")
    return _as_int_ids(arr, name)


def _as_xy(xy, n: int, name: str) -> np.ndarray:
    arr = np.asarray(xy, dtype=np.float64)
    if arr.shape != (n, 2):
        raise ValueError(f"{name} must have shape ({n}, 2) to match ranked_cells, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains infinite values")
    return arr


def _check_k(k, num_columns: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name}={k!r}: expected a positive integer")
    if k > num_columns:
        raise ValueError(
            f"ranked_cells has K={num_columns} columns, fewer than {name}={int(k)}: "
            f"rank at least {int(k)} cells per sample"
        )
    return int(k)


def _check_distinct(ranked: np.ndarray, name: str = "ranked_cells") -> None:
    if ranked.shape[1] < 2:
        return
    s = np.sort(ranked, axis=1)
    dup_rows = np.flatnonzero(((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any(axis=1))  # empty places may repeat
    if len(dup_rows):
        i = int(dup_rows[0])
        raise ValueError(
            f"{name} row {i} repeats a cell id ({ranked[i].tolist()[:10]}...): each row must list distinct cells"
        )


def pad_ranking(ranked_cells, width: int) -> np.ndarray:
    """``ranked_cells`` ``(N, K)`` widened to ``(N, width)`` with ``NO_CELL``: a complete ranking of a city with fewer
    cells than the deepest cut-off, scored as it is (its Hit@k for k past its cells is its Hit@K)."""
    ranked = _as_ranked(ranked_cells)
    if ranked.shape[1] >= width:
        return ranked
    return np.concatenate([ranked, np.full((ranked.shape[0], width - ranked.shape[1]), NO_CELL, np.int64)], axis=1)


def target_ranks(ranked_cells, target_cells) -> np.ndarray:
    """1-based rank of each target in its row of ``ranked_cells`` (``(N,)`` int64), 0 when the row lacks it
    (``NO_CELL`` places never match).

    Raises ``ValueError`` when a row repeats a cell id.
    """
    ranked = _as_ranked(ranked_cells)
    _check_distinct(ranked)
    targets = _as_targets(target_cells, ranked.shape[0])
    match = (ranked == targets[:, None]) & (ranked >= 0)
    found = match.any(axis=1)
    return np.where(found, match.argmax(axis=1) + 1, 0).astype(np.int64)


# ------------------------------------------------------------------------------------------------------------------
# ranking metrics


def hit_rate_at_k(ranked_cells, target_cells, k: int) -> float:
    """Hit@k (= Recall@k / Acc@k with one relevant cell): fraction of samples whose target is in the first k cells.

    ``ranked_cells`` (N, K) with K >= k (else ``ValueError``), ``target_cells`` (N,). Returns a float in [0, 1].
    """
    ranked = _as_ranked(ranked_cells)
    k = _check_k(k, ranked.shape[1])
    return _hit_rate(target_ranks(ranked, target_cells), k)


def mrr(ranked_cells, target_cells) -> float:
    """Mean reciprocal rank **truncated at K** (the number of columns given), i.e. MRR@K.

    Each sample scores ``1 / rank`` (rank 1-based) when its target is among its K ranked cells and **0 when absent**;
    the result is the mean over samples. Since a target beyond position K counts 0 instead of ``1 / rank``, the value
    depends on K: compare methods at the same K (:func:`compute_metrics` truncates every method to ``max(ks)``).
    """
    return _mrr(target_ranks(ranked_cells, target_cells))


def ndcg_at_k(ranked_cells, target_cells, k: int) -> float:
    """NDCG@k with a single relevant cell per sample (binary relevance).

    The ideal DCG is 1 (the target at rank 1), so each sample scores ``1 / log2(rank + 1)`` when its target's rank is
    <= k and 0 otherwise (rank 1 -> 1, rank 2 -> 0.631, rank 3 -> 0.5); the result is the mean over samples.
    """
    ranked = _as_ranked(ranked_cells)
    k = _check_k(k, ranked.shape[1])
    return _ndcg(target_ranks(ranked, target_cells), k)


# The arithmetic of each score from the targets' ranks (`target_ranks`): the single functions above and
# `compute_metrics` (which finds the ranks once for all of them) both score through these.


def _hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean((ranks >= 1) & (ranks <= k)))


def _mrr(ranks: np.ndarray) -> float:
    rr = np.zeros(len(ranks), dtype=np.float64)
    hit = ranks > 0
    rr[hit] = 1.0 / ranks[hit]
    return float(rr.mean())


def _ndcg(ranks: np.ndarray, k: int) -> float:
    gain = np.zeros(len(ranks), dtype=np.float64)
    hit = (ranks >= 1) & (ranks <= k)
    gain[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
    return float(gain.mean())


# ------------------------------------------------------------------------------------------------------------------
# everything at once


def compute_metrics(
    ranked_cells,
    target_cells,
    predicted_xy,
    target_xy,
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
) -> dict[str, float]:
    """All metrics of one method on N samples, as a flat ``dict[str, float]``.

    Args:
        ranked_cells: ``(N, K)`` distinct cell ids per sample, best first; needs ``K >= max(ks + ndcg_ks)``
            (a city with fewer cells: ``pad_ranking``).
        target_cells: ``(N,)`` true next cell ids.
        predicted_xy: ``(N, 2)`` predicted positions, Web Mercator metres (for cell-ranking baselines: the centroid
            of the top-1 cell).
        target_xy: ``(N, 2)`` true positions, Web Mercator metres.
        ks: cut-offs of ``hit@k``. ndcg_ks: cut-offs of ``ndcg@k``.

    Returns keys ``hit@k`` for k in ks, ``mrr``, ``ndcg@k`` for k in ndcg_ks (ranking metrics are fractions in [0, 1]),
    ``mean_error_m`` and ``median_error_m`` (haversine metres, see the module docstring), ``mean_projected_error_m``
    (Euclidean, Web Mercator units) and ``count`` (N). The ranking metrics use only the first ``max(ks + ndcg_ks)``
    columns, so ``mrr`` is MRR@max(ks) (MRR@20 by default) whatever K each method returned: methods stay comparable.

    Raises ``ValueError`` naming the field on wrong shapes, too few columns, NaN/inf values, non-integer or repeated
    cell ids, or N = 0.
    """
    ks = tuple(ks)
    ndcg_ks = tuple(ndcg_ks)
    if not ks:
        raise ValueError("ks is empty: give at least one Hit@k cut-off")
    ranked = _as_ranked(ranked_cells)
    n, num_columns = ranked.shape
    for name, values in (("ks", ks), ("ndcg_ks", ndcg_ks)):
        for k in values:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ValueError(f"{name} holds {k!r}: cut-offs must be positive integers")
    cut = max(int(k) for k in ks + ndcg_ks)
    if cut > num_columns:
        raise ValueError(
            f"ranked_cells has K={num_columns} columns per sample, fewer than the largest cut-off {cut} "
            f"of ks={list(ks)} / ndcg_ks={list(ndcg_ks)}: rank at least {cut} cells per sample"
        )
    ranked = ranked[:, :cut]
    targets = _as_targets(target_cells, n)
    pred = _as_xy(predicted_xy, n, "predicted_xy")
    true = _as_xy(target_xy, n, "target_xy")

    ranks = target_ranks(ranked, targets)
    out = {f"hit@{int(k)}": _hit_rate(ranks, k) for k in ks}
    out["mrr"] = _mrr(ranks)
    out.update({f"ndcg@{int(k)}": _ndcg(ranks, k) for k in ndcg_ks})
    pred_lon, pred_lat = mercator_to_lonlat(pred[:, 0], pred[:, 1])
    true_lon, true_lat = mercator_to_lonlat(true[:, 0], true[:, 1])
    errors = np.asarray(haversine_m(pred_lat, pred_lon, true_lat, true_lon)).reshape(n)
    out["mean_error_m"] = float(errors.mean())
    out["median_error_m"] = float(np.median(errors))
    out["mean_projected_error_m"] = float(np.linalg.norm(pred - true, axis=1).mean())
    out["count"] = float(n)
    return out


__all__ = ["DEFAULT_KS", "DEFAULT_NDCG_KS", "NO_CELL", "compute_metrics", "hit_rate_at_k", "mrr", "ndcg_at_k",
           "pad_ranking", "target_ranks"]
