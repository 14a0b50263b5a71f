"""Segments, sliding windows and splits (all vectorized); `windows.py` turns windows into samples.

Definitions (see dataset_scripts/README.md):

* **Segments.** Records of a user sorted by time form one segment, optionally cut where the gap
  to the previous record exceeds ``max_gap_hours`` (default: no cut, except YJMob: 24 h as in the
  authors' follow-up code).  Segments keep their user id (splits are by user, never by segment).
* **Duration** of a record = hours to the next record of its segment, clipped to
  [0, ``max_duration_hours``] (default 24 h; 0 disables the cap).  This rule, the leakage rule below and day/hour
  live in ``nextlocllm_hf.modeling.records_nextlocllm``, shared with inference.
* **Samples.** Every window of ``W = H + L + 1`` consecutive records of a segment, starting at
  record 0 and moving by ``stride``: history = first H, current = next L, target = last.
* **No leakage.** The last current record's "time to next record" *is* the gap to the target, so
  its duration is replaced by the median of the sample's other ``H + L - 1`` input durations.  The
  gap to the target is given separately as ``target_time_gap`` (hours, not clipped), an optional
  query field.  No other input depends on the target record.
* ``target_duration`` = the target's own duration (label only); at a segment end (no next record)
  it is filled with the same median and counted in the report.
"""

from __future__ import annotations

import numpy as np


def segment_bounds(user_codes: np.ndarray, ts: np.ndarray, max_gap_s: float | None):
    """Start index and length of each segment of records sorted by (user, time)."""
    n = len(ts)
    brk = np.zeros(n, dtype=bool)
    if n:
        brk[0] = True
        brk[1:] = user_codes[1:] != user_codes[:-1]
        if max_gap_s:
            brk[1:] |= (ts[1:] - ts[:-1]) > max_gap_s
    starts = np.flatnonzero(brk)
    lengths = np.diff(np.append(starts, n))
    return starts, lengths


def window_index(seg_starts: np.ndarray, seg_lengths: np.ndarray, window: int, stride: int) -> np.ndarray:
    """``(S, window)`` record indices of all windows (segments shorter than ``window`` give none)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    n_win = np.where(seg_lengths >= window, (seg_lengths - window) // stride + 1, 0)
    total = int(n_win.sum())
    if total == 0:
        return np.zeros((0, window), dtype=np.int64)
    seg_of = np.repeat(np.arange(seg_starts.size), n_win)
    first = np.cumsum(n_win) - n_win
    k = np.arange(total) - first[seg_of]
    starts = seg_starts[seg_of] + k * stride
    return starts[:, None] + np.arange(window, dtype=np.int64)[None, :]


def split_by_user(sample_users: np.ndarray, user_names: np.ndarray, fractions, seed: int) -> np.ndarray:
    """Split label (0 train, 1 validation, 2 test) per sample: users shuffled with ``seed``, cut by fractions."""
    users = np.unique(sample_users)
    n = users.size
    f = np.asarray(fractions, dtype=np.float64)
    n_val = max(1, int(round(f[1] * n))) if f[1] > 0 else 0
    n_test = max(1, int(round(f[2] * n))) if f[2] > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"too few users with samples for a user split: {n} (need at least {1 + (f[1] > 0) + (f[2] > 0)})")
    order = users[np.argsort(user_names[users], kind="stable")]
    perm = np.random.default_rng(seed).permutation(order)
    label_of = np.empty(int(users.max()) + 1, dtype=np.int64)
    label_of[perm[:n_train]] = 0
    label_of[perm[n_train:n_train + n_val]] = 1
    label_of[perm[n_train + n_val:]] = 2
    return label_of[sample_users]


def split_by_time(target_ts: np.ndarray, fractions):
    """Split label per sample by its target's time: the earliest ``fractions[0]`` of samples train, etc.

    Returns ``(labels, boundaries)`` with the first validation and test target times (seconds).
    """
    S = target_ts.size
    f = np.asarray(fractions, dtype=np.float64)
    order = np.argsort(target_ts, kind="stable")
    n_train = int(round(f[0] * S))
    n_val = int(round(f[1] * S))
    labels = np.empty(S, dtype=np.int64)
    labels[order[:n_train]] = 0
    labels[order[n_train:n_train + n_val]] = 1
    labels[order[n_train + n_val:]] = 2
    b = [int(target_ts[order[min(n_train, S - 1)]]) if S else None,
         int(target_ts[order[min(n_train + n_val, S - 1)]]) if S else None]
    return labels, b
