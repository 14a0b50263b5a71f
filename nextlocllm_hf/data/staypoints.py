"""Stay-point detection (Li et al. 2008, "Mining user similarity based on location history"; the
algorithm used with GeoLife), vectorized with numpy.

Standard algorithm, per user, points ordered by time: from an anchor point ``i``, find the first
later point ``j`` farther than ``distance_m`` from ``i`` (or the end of the user's points).  If the
points ``i .. j-1`` span at least ``min_duration_s`` (``t[j-1] - t[i]``), they form a stay point at
their mean coordinate with arrival ``t[i]`` and departure ``t[j-1]``, and the next anchor is ``j``;
otherwise the next anchor is ``i + 1``.  Defaults: 200 m and 20 minutes (the GeoLife papers).

Vectorization: ``end[i]`` (the first exceeding point) is computed for every point at once by
advancing all still-unresolved anchors one step per iteration (cost = sum of run lengths).  The
greedy anchor chain then only visits the selected stays (a loop over output stay points, each step
a binary search), never over the raw points.  Distances are great-circle metres on the mean Earth radius
(`haversine_m`, the metrics' sphere).
"""

from __future__ import annotations

import numpy as np

from ..modeling.geometry_nextlocllm import haversine_m


def detect_stay_points(user_codes, t, lat, lon, distance_m: float = 200.0, min_duration_s: float = 1200.0):
    """Stay points of points sorted by (user, time).

    Returns a dict of arrays: ``index`` (position of each stay's anchor = arrival point), ``user``
    (code), ``arrival``, ``departure`` (same unit as ``t``), ``lat``, ``lon`` (mean of its points),
    ``n_points``.
    """
    user_codes = np.asarray(user_codes)
    t = np.asarray(t, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    n = len(t)
    if n == 0:
        empty = np.zeros(0)
        return {"index": empty.astype(np.int64), "user": user_codes[:0], "arrival": empty, "departure": empty,
                "lat": empty, "lon": empty, "n_points": empty.astype(np.int64)}
    # exclusive end of each point's user block
    change = np.flatnonzero(user_codes[1:] != user_codes[:-1]) + 1
    block_ends = np.append(change, n)
    block_id = np.zeros(n, dtype=np.int64)
    block_id[change] = 1
    block_id = np.cumsum(block_id)
    user_end = block_ends[block_id]

    end = np.empty(n, dtype=np.int64)
    active = np.arange(n)
    k = 1
    while active.size:
        cand = active + k
        at_end = cand >= user_end[active]
        end[active[at_end]] = user_end[active[at_end]]
        active, cand = active[~at_end], cand[~at_end]
        far = haversine_m(lat[active], lon[active], lat[cand], lon[cand]) > distance_m
        end[active[far]] = cand[far]
        active = active[~far]
        k += 1
    is_stay = (t[end - 1] - t) >= min_duration_s
    starts = np.flatnonzero(is_stay)
    chosen = []
    pos = 0
    while True:
        i = np.searchsorted(starts, pos)
        if i >= starts.size:
            break
        s = int(starts[i])
        chosen.append(s)
        pos = int(end[s])
    idx = np.asarray(chosen, dtype=np.int64)
    stop = end[idx]
    cl = np.concatenate([[0.0], np.cumsum(lat)])
    co = np.concatenate([[0.0], np.cumsum(lon)])
    npts = stop - idx
    return {
        "index": idx,
        "user": user_codes[idx],
        "arrival": t[idx],
        "departure": t[stop - 1],
        "lat": (cl[stop] - cl[idx]) / np.maximum(npts, 1),
        "lon": (co[stop] - co[idx]) / np.maximum(npts, 1),
        "n_points": npts,
    }
