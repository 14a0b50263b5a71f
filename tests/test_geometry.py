"""The geometry (`modeling/geometry_nextlocllm.py`, `modeling/grid_nextlocllm.py`; `data/projection.py` and
`data/grid.py` re-export them): Web Mercator values both ways, great-circle distances, ground-size cells and cell
assignment."""

import math

import numpy as np
import pytest
from helpers import R_MEAN, forward_mercator

from nextlocllm_hf.data.grid import Grid
from nextlocllm_hf.data.projection import (WEB_MERCATOR_RADIUS_M, ground_to_projected, lonlat_to_mercator,
                                           mercator_to_lonlat)
from nextlocllm_hf.modeling.geometry_nextlocllm import haversine_m


def test_known_web_mercator_values():
    x, y = lonlat_to_mercator([0.0, 180.0, -74.006, 0.0, -180.0], [0.0, 85.05112877980659, 40.7128, 45.0, 0.0])
    np.testing.assert_allclose(x, [0.0, 20037508.342789244, -8238310.235647, 0.0, -20037508.342789244], atol=1e-3)
    np.testing.assert_allclose(y, [0.0, 20037508.342789244, 4970071.579142, 5621521.486192, 0.0], atol=1e-3)
    # method.md 1.1: Xi'an lon 108.88 -> x ~ 1.2120e7 (R * lon in radians)
    assert lonlat_to_mercator(108.88, 34.166)[0] == pytest.approx(WEB_MERCATOR_RADIUS_M * np.radians(108.88))


def test_inverse_round_trip():
    lon = np.array([-122.4, 2.35, 139.7, 151.2])
    lat = np.array([37.77, 48.86, 35.68, -33.87])
    lo, la = mercator_to_lonlat(*lonlat_to_mercator(lon, lat))
    np.testing.assert_allclose(lo, lon, atol=1e-9)
    np.testing.assert_allclose(la, lat, atol=1e-9)


def test_haversine_known_distances():
    one_degree = R_MEAN * math.pi / 180  # 111 195.08 m
    assert one_degree == pytest.approx(111195.08, abs=0.01)
    assert haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(one_degree, rel=1e-12)
    assert haversine_m(10.0, 20.0, 11.0, 20.0) == pytest.approx(one_degree, rel=1e-12)  # along a meridian
    assert haversine_m(0.0, 0.0, 0.0, 90.0) == pytest.approx(R_MEAN * math.pi / 2, rel=1e-12)
    assert haversine_m(40.0, -74.0, 40.0, -74.0) == 0.0
    assert isinstance(haversine_m(0.0, 0.0, 1.0, 0.0), float)
    d = haversine_m(np.array([0.0, 0.0]), np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert d.shape == (2,) and np.allclose(d, one_degree)


def test_inverse_mercator_of_known_forward_values():
    # EPSG:3857 reference values: lon 180 -> x = 20 037 508.342789244, lat 45 -> y = 5 621 521.486192066
    lon, lat = mercator_to_lonlat(np.array([20037508.342789244, 0.0]), np.array([5621521.486192066, 0.0]))
    assert np.stack([lon, lat], axis=1) == pytest.approx(np.array([[180.0, 45.0], [0.0, 0.0]]), abs=1e-9)
    x, y = forward_mercator(108.88, 34.166)  # Xi'an, about (1.2120e7, 4.0508e6)
    assert mercator_to_lonlat(x, y) == pytest.approx((108.88, 34.166), abs=1e-9)


@pytest.mark.parametrize("lon,lat,word", [(181.0, 0.0, "longitude"), (0.0, 86.0, "latitude"),
                                          (0.0, float("nan"), "latitude")])
def test_out_of_range_raises(lon, lat, word):
    with pytest.raises(ValueError, match=word):
        lonlat_to_mercator([lon], [lat])


def test_cell_size_scaled_by_latitude():
    assert ground_to_projected(500, 0.0) == pytest.approx(500.0)
    assert ground_to_projected(500, 60.0) == pytest.approx(1000.0)
    g = Grid.from_extent(0, 0, 2999, 999, 500, reference_lat=60.0)
    assert g.cell_size_projected == pytest.approx(1000.0)
    assert (g.n_rows, g.n_cols) == (1, 3)


def test_cell_assignment_and_centroids():
    g = Grid.from_extent(1000.0, 2000.0, 3400.0, 3100.0, 500, reference_lat=0.0)
    assert (g.n_rows, g.n_cols) == (3, 5)
    x = np.array([1000.0, 1499.9, 1500.0, 3400.0, 999.0])
    y = np.array([2000.0, 2499.9, 2500.0, 3100.0, 2000.0])
    row, col, inside = g.locate(x, y)
    np.testing.assert_array_equal(row[:4], [0, 0, 1, 2])
    np.testing.assert_array_equal(col[:4], [0, 0, 1, 4])
    np.testing.assert_array_equal(inside, [True, True, True, True, False])
    np.testing.assert_array_equal(g.key(row[:4], col[:4]), [0, 0, 6, 14])
    cx, cy, lat, lon = g.centroid(np.array([1]), np.array([1]))
    assert (cx[0], cy[0]) == (1750.0, 2750.0)
    lo, la = mercator_to_lonlat(1750.0, 2750.0)
    assert (lat[0], lon[0]) == pytest.approx((la, lo))


def test_fit_uses_mid_latitude():
    lat = np.array([40.0, 42.0])
    lon = np.array([-74.0, -73.0])
    x, y = lonlat_to_mercator(lon, lat)
    g = Grid.fit(x, y, lat, 500)
    assert g.reference_lat == pytest.approx(41.0)
    assert g.cell_size_projected == pytest.approx(500 / np.cos(np.radians(41.0)))
    assert g.locate(x, y)[2].all()


def test_yjmob_virtual_grid():
    g = Grid.yjmob_virtual()
    # cell (i, j) = (1, 1) has centre (-49750, 49750): top-left corner of the 200 x 200 grid
    row, col, inside = g.locate(np.array([-49750.0, 49750.0]), np.array([49750.0, -49750.0]))
    np.testing.assert_array_equal(row, [199, 0])
    np.testing.assert_array_equal(col, [0, 199])
    cx, cy, *_ = g.centroid(row, col)
    np.testing.assert_allclose(cx, [-49750.0, 49750.0])
    np.testing.assert_allclose(cy, [49750.0, -49750.0])
