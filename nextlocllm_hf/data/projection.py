"""Web Mercator (EPSG:3857) projection, vectorized with numpy.

The closed formulas (spherical Mercator on the WGS84 semi-major axis R = 6378137 m)::

    x = R * lon * pi / 180
    y = R * ln(tan(pi / 4 + lat / 2))        (lat in radians)

Web Mercator inflates ground distances by ``1 / cos(lat)``: one metre of projected x or y at
latitude ``lat`` covers ``cos(lat)`` metres on the ground.  :func:`ground_to_projected` turns a
ground length into projected units at a reference latitude.
"""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_M = 6378137.0
#: Latitude limit of Web Mercator (the projected square's edge), in degrees.
MAX_MERCATOR_LAT = 85.05112877980659


def lonlat_to_mercator(lon, lat):
    """Project WGS84 ``lon``/``lat`` (degrees, array-like) to Web Mercator ``x``/``y`` in metres.

    Raises ``ValueError`` naming the offending value when a longitude is outside [-180, 180] or a
    latitude outside the Web Mercator range (about +/-85.0511 degrees) or not finite; the record
    readers drop and count such rows before calling this.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    bad_lon = ~np.isfinite(lon) | (np.abs(lon) > 180.0)
    if bad_lon.any():
        raise ValueError(f"longitude out of range [-180, 180]: {float(lon[bad_lon].ravel()[0])!r}")
    bad_lat = ~np.isfinite(lat) | (np.abs(lat) > MAX_MERCATOR_LAT)
    if bad_lat.any():
        raise ValueError(
            f"latitude out of Web Mercator range [-{MAX_MERCATOR_LAT:.4f}, {MAX_MERCATOR_LAT:.4f}]: "
            f"{float(lat[bad_lat].ravel()[0])!r}"
        )
    x = EARTH_RADIUS_M * np.radians(lon)
    y = EARTH_RADIUS_M * np.log(np.tan(np.pi / 4.0 + np.radians(lat) / 2.0))
    return x, y


def mercator_to_lonlat(x, y):
    """Inverse of :func:`lonlat_to_mercator`: Web Mercator metres to WGS84 degrees."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    lon = np.degrees(x / EARTH_RADIUS_M)
    lat = np.degrees(2.0 * np.arctan(np.exp(y / EARTH_RADIUS_M)) - np.pi / 2.0)
    return lon, lat


def ground_to_projected(length_m: float, reference_lat: float) -> float:
    """Projected (Web Mercator) length that covers ``length_m`` metres on the ground at ``reference_lat``."""
    return float(length_m) / float(np.cos(np.radians(reference_lat)))


def valid_lonlat_mask(lon, lat):
    """Boolean mask of coordinates that Web Mercator can project (finite, |lon|<=180, |lat|<=85.0511)."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    return np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180.0) & (np.abs(lat) <= MAX_MERCATOR_LAT)
