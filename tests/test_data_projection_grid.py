"""Web Mercator values, ground-size cells and cell assignment."""

import numpy as np
import pytest

from nextlocllm_hf.data.grid import Grid
from nextlocllm_hf.data.projection import (WEB_MERCATOR_RADIUS_M, ground_to_projected, lonlat_to_mercator,
                                           mercator_to_lonlat)


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
