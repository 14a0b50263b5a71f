"""A 2-D Gaussian mixture over the next visit's position, and exact top-k cell ranking by its density.

The head predicts K diagonal Gaussians in the city's normalized coordinates (z-scored per axis with the city's own
statistics, like the point-regression head), trained by negative log-likelihood. At prediction time the mixture is
taken to projected metres and cells are ranked by the density at their centres. Unlike nearest-neighbour retrieval
of one point, a density ranking has no single query point, so `rank_cells_by_mixture_density` grows a KD-tree
neighbourhood around every mode until a bound on the density of all unseen cells proves the top-k complete.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import logsumexp
from torch import nn

from .retrieval_nextlocllm import CityRetriever

# Log standard deviations stay in [LOG_SCALE_MIN, LOG_SCALE_MAX] in normalized units (smooth floor, hard cap): sigma in
# [0.0009, 20] city standard deviations (a few metres to a few hundred kilometres for a city with a 5-10 km spread).
# The floor stops a component from collapsing onto repeated identical targets (NLL -> -inf); the ceiling keeps a
# stray component from going flat over the whole city, where it no longer ranks anything.
LOG_SCALE_MIN = -7.0
LOG_SCALE_MAX = 3.0

PARAMETERS_PER_COMPONENT = 5  # 2 means, 2 log-scales, 1 weight logit
_LOG_2PI = math.log(2.0 * math.pi)
# Largest (points x candidates x components) block evaluated at once while ranking, to bound peak memory.
_MAX_BLOCK_ELEMENTS = 1 << 21
# Relative slack on the pruning test: the bound and the densities carry rounding error, so a cell is only declared
# out of the top-k when its bound is clearly below the k-th density (a near-tie falls through to a wider search).
_BOUND_SLACK = 1e-9


def split_mixture_parameters(
    raw: torch.Tensor, num_components: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a head's `(B, 5K)` output into `means (B, K, 2)`, `log_scales (B, K, 2)` and `log_weights (B, K)`.

    The layout is blocked, `[means (2K) | log-scales (2K) | weight logits (K)]`: each group is one contiguous slice of
    the head's weight. Means are unconstrained. Log-scales get a smooth floor, `LOG_SCALE_MIN + softplus(raw -
    LOG_SCALE_MIN)` (near the identity above it, and a component squeezed onto repeated identical check-ins still gets
    a gradient to widen again), and a hard cap at `LOG_SCALE_MAX`. Log-weights are the log-softmax of the logits.
    """
    if isinstance(num_components, bool) or not isinstance(num_components, (int, np.integer)) or num_components < 1:
        raise ValueError(f"num_components={num_components!r}: expected a positive integer")
    k = int(num_components)
    expected = PARAMETERS_PER_COMPONENT * k
    if raw.dim() < 1 or raw.shape[-1] != expected:
        raise ValueError(
            f"raw has shape {tuple(raw.shape)}, expected last dimension {expected} "
            f"({PARAMETERS_PER_COMPONENT} x num_components={k})"
        )
    leading = raw.shape[:-1]
    means = raw[..., : 2 * k].reshape(*leading, k, 2)
    raw_scales = raw[..., 2 * k : 4 * k].reshape(*leading, k, 2)
    log_scales = (LOG_SCALE_MIN + nn.functional.softplus(raw_scales - LOG_SCALE_MIN)).clamp(max=LOG_SCALE_MAX)
    log_weights = torch.log_softmax(raw[..., 4 * k :], dim=-1)
    return means, log_scales, log_weights


def mixture_negative_log_likelihood(
    means: torch.Tensor, log_scales: torch.Tensor, log_weights: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Per-sample `-log sum_k w_k N(target; mu_k, diag(sigma_k^2))`, shape `(B,)`, in normalized coordinates.

    Summed in log space (logsumexp), so a target many standard deviations from every component still gives a finite
    loss and a useful gradient. Half-precision inputs are computed in float32: the squared z-scores need the range.
    """
    batch, num_components = log_weights.shape[0], log_weights.shape[-1]
    expected = {
        "means": (means, (batch, num_components, 2)),
        "log_scales": (log_scales, (batch, num_components, 2)),
        "log_weights": (log_weights, (batch, num_components)),
        "targets": (targets, (batch, 2)),
    }
    for name, (value, shape) in expected.items():
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {shape}")
    dtype = torch.promote_types(means.dtype, torch.float32)
    means, log_scales, log_weights, targets = (t.to(dtype) for t in (means, log_scales, log_weights, targets))
    z = (targets[:, None, :] - means) * torch.exp(-log_scales)
    component = log_weights - _LOG_2PI - log_scales.sum(-1) - 0.5 * z.pow(2).sum(-1)
    return -torch.logsumexp(component, dim=-1)


def mixture_log_density_np(
    points: np.ndarray, means: np.ndarray, scales: np.ndarray, log_weights: np.ndarray
) -> np.ndarray:
    """Log density of a diagonal Gaussian mixture at `points (..., P, 2)`, float64, shape `(..., P)`.

    `means`/`scales` are `(..., K, 2)` and `log_weights` `(..., K)`, with leading dimensions broadcasting against
    the points' (one mixture per sample, or one for all). Everything is element-wise per point, including the sum
    over components, so a point's value does not depend on which other points share the call: the ranking's
    candidate evaluation and a brute-force evaluation over all cells agree exactly.
    """
    points, means, scales, log_weights = (
        np.asarray(a, dtype=np.float64) for a in (points, means, scales, log_weights)
    )
    if points.shape[-1:] != (2,) or means.shape[-1:] != (2,) or scales.shape != means.shape:
        raise ValueError(
            f"points {points.shape}, means {means.shape} and scales {scales.shape} must end in 2 coordinates, "
            "with scales shaped like means"
        )
    if log_weights.shape != means.shape[:-1]:
        raise ValueError(f"log_weights has shape {log_weights.shape}, expected {means.shape[:-1]}")
    z = (points[..., :, None, :] - means[..., None, :, :]) / scales[..., None, :, :]  # (..., P, K, 2)
    normalizer = log_weights - _LOG_2PI - np.log(scales[..., 0]) - np.log(scales[..., 1])  # (..., K)
    component = normalizer[..., None, :] - 0.5 * (z[..., 0] ** 2 + z[..., 1] ** 2)  # (..., P, K)
    peak = component.max(axis=-1)
    total = np.zeros_like(peak)
    for k in range(component.shape[-1]):  # fixed order, not a reduction numpy may reorder by memory layout
        total += np.exp(component[..., k] - peak)
    return peak + np.log(total)


def rank_cells_by_mixture_density(
    retriever: CityRetriever,
    means_m: np.ndarray,
    scales_m: np.ndarray,
    log_weights: np.ndarray,
    k: int,
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cells of the city by mixture density at their centres: `(cell_ids (N, k) int64, log_density (N, k))`.

    Exact, i.e. equal to sorting every cell by density (best first, ties by cell order in the retriever), but
    usually touching few cells: the union of the `m` nearest cells of every mode is evaluated, and a cell outside it
    is at least `d_k` (mode k's m-th neighbour distance) from every mode k, so its density is at most
    `sum_k w_k / (2 pi sx_k sy_k) exp(-d_k^2 / (2 max(sx_k, sy_k)^2))`. When the k-th best density found beats that
    bound the sample is done; otherwise `m` doubles, up to all cells. Log densities are per square metre.

    Args:
        means_m / scales_m: `(N, K, 2)` component means and standard deviations in projected metres.
        log_weights: `(N, K)` log mixture weights; they need not be normalized (that only shifts every density).
        stats: if given, filled with `cells_evaluated (N,)`, the distinct cells scored in each sample's final round,
            and `rounds (N,)`, how many neighbourhood sizes it took.
    """
    means_m, scales_m, log_weights = _check_mixture(retriever, means_m, scales_m, log_weights, k)
    num_samples, num_components = log_weights.shape
    num_cells = retriever.num_cells
    top_rows = np.zeros((num_samples, k), dtype=np.int64)
    top_log_density = np.zeros((num_samples, k), dtype=np.float64)
    cells_evaluated = np.zeros(num_samples, dtype=np.int64)
    rounds = np.zeros(num_samples, dtype=np.int64)

    pending = np.arange(num_samples)
    neighbours = min(num_cells, max(2 * k, 16))
    while pending.size:
        exhaustive = neighbours == num_cells
        candidates = num_cells if exhaustive else num_components * neighbours
        block = max(1, _MAX_BLOCK_ELEMENTS // (candidates * num_components))
        still_pending = []
        for start in range(0, pending.size, block):
            samples = pending[start : start + block]
            done, rows, log_density, counts = _rank_block(
                retriever, means_m[samples], scales_m[samples], log_weights[samples], k, neighbours, exhaustive
            )
            finished = samples[done]
            top_rows[finished], top_log_density[finished] = rows[done], log_density[done]
            cells_evaluated[finished] = counts[done]
            rounds[samples] += 1
            still_pending.append(samples[~done])
        pending = np.concatenate(still_pending)
        neighbours = min(num_cells, 2 * neighbours)

    if stats is not None:
        stats.update(cells_evaluated=cells_evaluated, rounds=rounds)
    return retriever.cell_ids[top_rows], top_log_density


def _rank_block(
    retriever: CityRetriever,
    means: np.ndarray,
    scales: np.ndarray,
    log_weights: np.ndarray,
    k: int,
    neighbours: int,
    exhaustive: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One round for a block of samples: `(done, top-k rows, their log densities, distinct cells evaluated)`."""
    num_samples, num_components = log_weights.shape
    num_cells = retriever.num_cells
    if exhaustive:
        rows = np.broadcast_to(np.arange(num_cells), (num_samples, num_cells))
        duplicate = np.zeros(rows.shape, dtype=bool)
    else:
        distances, rows = retriever.tree.query(means.reshape(-1, 2), k=neighbours)
        distances = np.asarray(distances).reshape(num_samples, num_components, neighbours)
        rows = np.sort(np.asarray(rows).reshape(num_samples, num_components * neighbours), axis=1)
        duplicate = np.zeros(rows.shape, dtype=bool)
        duplicate[:, 1:] = rows[:, 1:] == rows[:, :-1]  # modes share neighbours: score each cell once
    log_density = mixture_log_density_np(retriever.xy[rows], means, scales, log_weights)
    # Primary key: duplicates last; then density, best first; then row, ascending, so ties follow cell order.
    order = np.lexsort((rows, -log_density, duplicate), axis=-1)[:, :k]
    top_rows = np.take_along_axis(rows, order, axis=1)
    top_log_density = np.take_along_axis(log_density, order, axis=1)
    counts = (~duplicate).sum(axis=1)
    if exhaustive:
        return np.ones(num_samples, dtype=bool), top_rows, top_log_density, counts
    reach = distances[:, :, -1]  # every unseen cell is at least this far from mode k
    widest = scales.max(axis=-1)
    bound = logsumexp(
        log_weights - _LOG_2PI - np.log(scales).sum(axis=-1) - 0.5 * (reach / widest) ** 2, axis=-1
    )
    kth = top_log_density[:, -1]
    done = (kth > bound + _BOUND_SLACK * (1.0 + np.abs(bound))) | (counts == num_cells)
    return done, top_rows, top_log_density, counts


def _check_mixture(
    retriever: CityRetriever, means_m, scales_m, log_weights, k
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapes and values of a mixture to rank; a `ValueError` names the field and the offending value."""
    retriever.check_k(k)
    means_m, scales_m, log_weights = (np.asarray(a, dtype=np.float64) for a in (means_m, scales_m, log_weights))
    if means_m.ndim != 3 or means_m.shape[-1] != 2 or means_m.shape[1] < 1:
        raise ValueError(f"means_m has shape {means_m.shape}, expected (N, K, 2) with K >= 1")
    if scales_m.shape != means_m.shape:
        raise ValueError(f"scales_m has shape {scales_m.shape}, expected {means_m.shape} like means_m")
    if log_weights.shape != means_m.shape[:2]:
        raise ValueError(f"log_weights has shape {log_weights.shape}, expected {means_m.shape[:2]}")
    for name, value in (("means_m", means_m), ("scales_m", scales_m), ("log_weights", log_weights)):
        if not np.isfinite(value).all():
            bad = value[~np.isfinite(value)][0]
            raise ValueError(f"{name} holds a non-finite value ({bad})")
    if not (scales_m > 0).all():
        raise ValueError(f"scales_m holds {scales_m[scales_m <= 0][0]}, expected positive standard deviations")
    return means_m, scales_m, log_weights


__all__ = [
    "LOG_SCALE_MIN",
    "LOG_SCALE_MAX",
    "split_mixture_parameters",
    "mixture_negative_log_likelihood",
    "mixture_log_density_np",
    "rank_cells_by_mixture_density",
]
