"""Candidate cells and POI frequency vectors.

* POI counts: each classified POI inside the grid adds one to its cell's count of its class.
* Frequencies (``poi_normalization``):
  ``max`` (default, the paper's): count / the city-wide maximum count of that class over all cells
  (a class absent from the city gives 0); ``sum``: count / the cell's total (a distribution);
  ``log-max``: log1p(count) / log1p(city-wide max); ``none``: raw counts as floats.
* Candidates (``--candidates``): ``poi`` (default) = every cell holding a POI or a record of the
  city; ``visited`` = cells holding a record; ``all-in-bbox`` = every cell of the grid (the paper's
  choice, all cells of the city's area).  Cell ids are dense 0..N-1 in row-major grid order.
* Venue categories (``top_categories``): each cell's most common venue category names, most venues first, so a
  prediction can say what a cell is (e.g. Coffee Shop, Office); empty where the city's POIs carry no category names
  (a class alone, e.g. the synthetic cities) or the cell holds no POI.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

POI_NORMALIZATIONS = ("max", "sum", "log-max", "none")
CANDIDATE_RULES = ("poi", "visited", "all-in-bbox")
TOP_CATEGORIES = 5  # venue category names kept per cell


def count_pois(keys: np.ndarray, classes: np.ndarray, num_classes: int):
    """Per-cell class counts: returns ``(unique_keys, counts[len(unique_keys), C])`` for classified POIs."""
    ok = classes >= 0
    uk, inv = np.unique(keys[ok], return_inverse=True)
    counts = np.zeros((uk.size, num_classes), dtype=np.int64)
    np.add.at(counts, (inv, classes[ok]), 1)
    return uk, counts


def normalize_counts(counts: np.ndarray, method: str = "max", city_max: np.ndarray | None = None) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    if method == "max":
        m = counts.max(axis=0) if city_max is None else np.asarray(city_max, dtype=np.float64)
        out = np.divide(counts, m, out=np.zeros_like(counts), where=m > 0)
    elif method == "sum":
        s = counts.sum(axis=1, keepdims=True)
        out = np.divide(counts, s, out=np.zeros_like(counts), where=s > 0)
    elif method == "log-max":
        m = counts.max(axis=0) if city_max is None else np.asarray(city_max, dtype=np.float64)
        lm = np.log1p(m)
        out = np.divide(np.log1p(counts), lm, out=np.zeros_like(counts), where=lm > 0)
    elif method == "none":
        out = counts
    else:
        raise ValueError(f"unknown poi_normalization {method!r}; choose from {POI_NORMALIZATIONS}")
    return out.astype(np.float32)


def top_categories(cell_keys: np.ndarray, poi_keys: np.ndarray, categories: Sequence, limit: int = TOP_CATEGORIES
                   ) -> list[list[str]]:
    """Per cell of the sorted ``cell_keys``, the ``limit`` most common category names among the POIs (``poi_keys``,
    one per POI, with its ``categories``) in it: most POIs first, ties by name; empty names are skipped."""
    out: list[list[str]] = [[] for _ in range(len(cell_keys))]
    names = pd.Series(categories, dtype="string").str.strip()
    frame = pd.DataFrame({"key": np.asarray(poi_keys, dtype=np.int64), "name": names.to_numpy()})
    frame = frame[frame["name"].notna() & (frame["name"] != "")]
    if frame.empty or not len(cell_keys):
        return out
    counted = frame.value_counts(["key", "name"]).rename("n").reset_index()
    counted = counted.sort_values(["key", "n", "name"], ascending=[True, False, True], kind="stable")
    position = np.searchsorted(cell_keys, counted["key"].to_numpy())
    inside = (position < len(cell_keys)) & (cell_keys[np.minimum(position, len(cell_keys) - 1)] ==
                                            counted["key"].to_numpy())
    for row, name in zip(position[inside], counted["name"].to_numpy()[inside]):
        if len(out[row]) < limit:
            out[row].append(str(name))
    return out


def build_cells(grid, visited: np.ndarray, visited_records: np.ndarray, poi_keys: np.ndarray, poi_counts: np.ndarray,
                num_classes: int, candidates: str = "poi", normalization: str = "max",
                poi_categories: tuple[np.ndarray, Sequence] | None = None):
    """Candidate-cell table from the visited cells' sorted keys and record counts and the POI counts per cell, and
    each cell's ``top_categories`` from ``poi_categories``, ``(cell key, category name)`` of every POI (None: the POIs
    carry no names, every list is empty).

    Returns ``(cells DataFrame, sorted candidate keys, counts, frequencies, city-wide max per class)``.
    """
    if candidates not in CANDIDATE_RULES:
        raise ValueError(f"unknown candidates rule {candidates!r}; choose from {CANDIDATE_RULES}")
    n_rec = visited_records
    if candidates == "visited":
        keys = visited
    elif candidates == "poi":
        keys = np.union1d(visited, poi_keys)
    else:
        keys = np.arange(grid.n_cells, dtype=np.int64)
    counts = np.zeros((keys.size, num_classes), dtype=np.int64)
    pos = np.searchsorted(keys, poi_keys)
    inside = (pos < keys.size) & (keys[np.minimum(pos, keys.size - 1)] == poi_keys) if keys.size else np.zeros(0, bool)
    counts[pos[inside]] = poi_counts[inside]
    city_max = poi_counts.max(axis=0) if poi_counts.size else np.zeros(num_classes, dtype=np.int64)
    freq = normalize_counts(counts, normalization, city_max)
    nrec = np.zeros(keys.size, dtype=np.int64)
    rpos = np.searchsorted(keys, visited)
    nrec[rpos] = n_rec
    row, col = grid.unkey(keys)
    x, y, lat, lon = grid.centroid(row, col)
    cells = pd.DataFrame({
        "cell_id": np.arange(keys.size, dtype=np.int64), "row": row, "col": col,
        "lat": lat, "lon": lon, "x": x, "y": y,
        "poi_counts": list(counts), "poi_frequency": list(freq), "n_records": nrec,
        "top_categories": top_categories(keys, *poi_categories) if poi_categories is not None else [[] for _ in keys],
    })
    return cells, keys, counts, freq, city_max
