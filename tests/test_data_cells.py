"""POI counts and frequency vectors on a hand-computed example; candidate-cell rules."""

import numpy as np
import pandas as pd
import pytest

from nextlocllm_hf.data.build import BuildConfig, build_city
from nextlocllm_hf.data.cells import build_cells, count_pois, normalize_counts, top_categories
from nextlocllm_hf.data.grid import Grid
from nextlocllm_hf.data.projection import mercator_to_lonlat

S = 500.0  # projected cell size at the equator (reference latitude 0)


def test_count_and_normalize_hand_computed():
    g = Grid(0.0, 0.0, 500.0, 0.0, S, 3, 3)
    # POIs: cell (0,0): 2 Commercial + 1 Residential; cell (1,1): 1 Commercial + 4 Entertainment;
    # cell (2,2): 1 Education; one unclassified POI in (2,2) is not counted
    keys = g.key([0, 0, 0, 1, 1, 1, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
    cls = np.array([1, 1, 4, 1, 0, 0, 0, 0, 2, -1])
    pk, pc = count_pois(keys, cls, 5)
    np.testing.assert_array_equal(pk, [0, 4, 8])
    np.testing.assert_array_equal(pc, [[0, 2, 0, 0, 1], [4, 1, 0, 0, 0], [0, 0, 1, 0, 0]])
    # paper: divide by the city-wide maximum of each class (Ent 4, Com 2, Edu 1, Pub 0 -> 0, Res 1)
    np.testing.assert_allclose(normalize_counts(pc, "max"), [[0, 1, 0, 0, 1], [1, 0.5, 0, 0, 0], [0, 0, 1, 0, 0]])
    np.testing.assert_allclose(normalize_counts(pc, "sum"), [[0, 2 / 3, 0, 0, 1 / 3], [0.8, 0.2, 0, 0, 0],
                                                             [0, 0, 1, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(normalize_counts(pc, "log-max")[1], [1, np.log(2) / np.log(3), 0, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(normalize_counts(pc, "none"), pc)
    with pytest.raises(ValueError, match="poi_normalization"):
        normalize_counts(pc, "softmax")
    # records visit (0,0) and (0,2); candidate rules
    rkeys = g.key([0, 0, 0], [0, 2, 2])
    for rule, expected in (("visited", [0, 2]), ("poi", [0, 2, 4, 8]), ("all-in-bbox", list(range(9)))):
        cells, ck, counts, freq, cmax = build_cells(g, *np.unique(rkeys, return_counts=True), pk, pc, 5, rule, "max")
        np.testing.assert_array_equal(ck, expected)
        assert list(cells.cell_id) == list(range(len(expected)))
        np.testing.assert_array_equal(cmax, [4, 2, 1, 0, 1])  # city-wide, whatever the candidate rule
    cells, *_ = build_cells(g, *np.unique(rkeys, return_counts=True), pk, pc, 5, "poi", "max")
    np.testing.assert_allclose(np.stack(cells.poi_frequency), [[0, 1, 0, 0, 1], [0] * 5, [1, 0.5, 0, 0, 0],
                                                               [0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(cells.n_records, [1, 2, 0, 0])
    np.testing.assert_allclose(cells.x, [250, 1250, 750, 1250])
    np.testing.assert_allclose(cells.y, [250, 250, 750, 1250])


def test_top_categories_hand_computed():
    """Each cell's most common venue category names, most POIs first, ties by name, empty names skipped, at most
    `limit`; a cell without named POIs gets an empty list, and POIs outside the candidate cells count nowhere."""
    cell_keys = np.array([2, 5, 9])
    poi_keys = np.array([2, 2, 2, 2, 5, 5, 5, 7, 2, 2])
    names = ["Bar", "Office", "Bar", "Park", "", None, " Zoo ", "Bar", "Office", "Cafe"]
    assert top_categories(cell_keys, poi_keys, names, limit=3) == [["Bar", "Office", "Cafe"], ["Zoo"], []]
    assert top_categories(cell_keys, np.zeros(0, dtype=np.int64), []) == [[], [], []]
    g = Grid(0.0, 0.0, 500.0, 0.0, S, 3, 3)
    cells, *_ = build_cells(g, np.array([0]), np.array([1]), np.array([0, 4]), np.array([[1, 0], [0, 2]]), 2, "poi",
                            "max", poi_categories=(np.array([0, 4, 4]), ["Bar", "Park", "Park"]))
    assert cells["top_categories"].tolist() == [["Bar"], ["Park"]]
    unnamed, *_ = build_cells(g, np.array([0]), np.array([1]), np.array([0]), np.array([[1, 0]]), 2)
    assert unnamed["top_categories"].tolist() == [[]]


X0 = Y0 = 10_000.0  # away from (0, 0), which is dropped as a missing position


def _point(col, row, dx=100.0, dy=100.0):
    lon, lat = mercator_to_lonlat(X0 + col * S + dx, Y0 + row * S + dy)
    return float(lat), float(lon)


def test_record_poi_vectors_end_to_end(tmp_path):
    # records in cells (0,0), (1,1), (2,2), (2,0) of a grid whose origin is the first record
    spots = [_point(0, 0, 0, 0), _point(1, 1), _point(2, 2), _point(0, 2)]
    rows = []
    for u in range(3):
        for k in range(6):
            lat, lon = spots[(u + k) % 4]
            rows.append({"uid": f"u{u}", "ts": 1_700_000_000 + 3600 * (k + 10 * u), "la": lat, "lo": lon})
    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
    pois = [(0, 0, "Commercial"), (0, 0, "Commercial"), (0, 0, "Residential"), (1, 1, "Commercial")] + \
           [(1, 1, "Entertainment")] * 4 + [(2, 2, "Education"), (2, 2, "Spaceport")]
    pd.DataFrame([dict(zip(("lat", "lon"), _point(c, r, 200, 200)), poi_class=k) for c, r, k in pois]).to_csv(
        tmp_path / "p.csv", index=False)
    cfg = BuildConfig(city="hand", format="csv", input=str(tmp_path / "r.csv"), pois=str(tmp_path / "p.csv"),
                      columns={"user": "uid", "time": "ts", "lat": "la", "lon": "lo"}, history_length=2,
                      current_length=1, stride=1, split_fractions=(0.34, 0.33, 0.33), show_progress=False)
    res = build_city(cfg)
    assert res.report.unmapped_categories == {"Spaceport": 1}
    cells = res.cells.set_index(["row", "col"])
    expected = {(0, 0): [0, 1, 0, 0, 1], (1, 1): [1, 0.5, 0, 0, 0], (2, 2): [0, 0, 1, 0, 0], (2, 0): [0] * 5}
    for rc, vec in expected.items():
        np.testing.assert_allclose(cells.loc[rc, "poi_frequency"], vec)
    by_id = res.cells.set_index("cell_id")
    for split in res.windows:
        d = res.samples(split).to_pandas()
        for _, r in d.iterrows():
            for cell, poi in zip(r.history_cell, r.history_poi):
                np.testing.assert_allclose(poi, by_id.loc[cell, "poi_frequency"])
