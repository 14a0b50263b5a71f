"""User-level uncertainty of per-sample scores (Hit@k indicators, errors).

Samples of one user are not independent, and on check-in data a few heavy users hold a large share of the test
samples, so a sample-level bootstrap understates the spread. Here users are the resampling unit (a cluster
bootstrap, via `scipy.stats.bootstrap` with the per-user sums and counts resampled together), and the pooled score is
the ratio of the resampled sums. `per_user_mean` is the other view: every user weighs the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A pooled score and its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def _per_user(values: np.ndarray, users: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-user sums (one row per value array) and sample counts."""
    values = np.asarray(values, dtype=np.float64)
    users = np.asarray(users)
    if values.ndim == 1:
        values = values[None]
    if values.shape[-1] != users.shape[0]:
        raise ValueError(f"{what}: {values.shape[-1]} values but {users.shape[0]} user ids")
    if users.shape[0] == 0:
        raise ValueError(f"{what}: no samples")
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: values contain NaN or inf")
    _, user_index = np.unique(users, return_inverse=True)
    sums = np.stack([np.bincount(user_index, weights=row) for row in values])
    counts = np.bincount(user_index).astype(np.float64)
    return sums, counts


def per_user_mean(values, users) -> float:
    """Mean over users of each user's mean score: every user counts once, however many samples they hold."""
    sums, counts = _per_user(values, users, "per_user_mean")
    return float(np.mean(sums[0] / counts))


def _bootstrap(statistic, data: tuple[np.ndarray, ...], confidence: float, n_resamples: int, seed: int):
    if len(data[0]) < 2:
        raise ValueError(f"a user-level bootstrap needs at least 2 users, got {len(data[0])}")
    result = stats.bootstrap(
        data, statistic, paired=True, vectorized=True, confidence_level=confidence,
        n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def user_bootstrap_interval(
    values, users, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> Interval:
    """Pooled mean of `values` with a percentile interval from resampling whole users."""
    sums, counts = _per_user(values, users, "user_bootstrap_interval")

    def pooled(s, c, axis=-1):
        return s.sum(axis=axis) / c.sum(axis=axis)

    low, high = _bootstrap(pooled, (sums[0], counts), confidence, n_resamples, seed)
    return Interval(float(sums[0].sum() / counts.sum()), low, high)


def paired_difference_interval(
    values_a, values_b, users, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> Interval:
    """Pooled mean of `values_a - values_b` (two methods on the same samples), resampling users."""
    sums, counts = _per_user(np.stack([np.asarray(values_a), np.asarray(values_b)]), users, "paired_difference")

    def difference(a, b, c, axis=-1):
        return (a.sum(axis=axis) - b.sum(axis=axis)) / c.sum(axis=axis)

    low, high = _bootstrap(difference, (sums[0], sums[1], counts), confidence, n_resamples, seed)
    return Interval(float((sums[0].sum() - sums[1].sum()) / counts.sum()), low, high)
