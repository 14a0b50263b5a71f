"""Web Mercator (EPSG:3857) both ways and great-circle distance: the one home of the model's geometry.

Web Mercator is spherical Mercator on the WGS84 semi-major axis, `WEB_MERCATOR_RADIUS_M = 6 378 137 m`::

    x = R * lon * pi / 180
    y = R * ln(tan(pi / 4 + lat / 2))        (lat in radians)

That radius is part of the projection's definition, not a model of the Earth: projected metres inflate ground
distances by `1 / cos(lat)`. Ground distances (`haversine_m`) use the mean Earth radius `MEAN_EARTH_RADIUS_M =
6 371 008.8 m` (IUGG, (2a + b) / 3 of WGS84), the sphere closest to the ellipsoid on average (within ~0.5 %), and the
radius the distance metrics (`mean_error_m`, `median_error_m`) and predict's `distance_m` have always reported in;
stay-point detection measures its distance threshold with the same function.
"""

from __future__ import annotations

import numpy as np

#: Sphere radius of Web Mercator (EPSG:3857), metres: the WGS84 semi-major axis.
WEB_MERCATOR_RADIUS_M = 6378137.0
#: Mean Earth radius (IUGG, (2a + b) / 3 of WGS84), metres: the sphere of every great-circle distance.
MEAN_EARTH_RADIUS_M = 6371008.8
#: Latitude limit of Web Mercator (the projected square's edge), in degrees.
MAX_MERCATOR_LAT = 85.05112877980659


def valid_lonlat_mask(lon, lat) -> np.ndarray:
    """Boolean mask of coordinates that Web Mercator can project (finite, |lon| <= 180, |lat| <= 85.0511)."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    return np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180.0) & (np.abs(lat) <= MAX_MERCATOR_LAT)


def lonlat_to_mercator(lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """Project WGS84 `lon`/`lat` (degrees, array-like) to Web Mercator `x`/`y` in metres.

    Raises `ValueError` naming the offending value when a longitude is outside [-180, 180] or a latitude outside the
    Web Mercator range (about +/-85.0511 degrees) or not finite; the record readers drop or refuse such rows first.
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
    x = WEB_MERCATOR_RADIUS_M * np.radians(lon)
    y = WEB_MERCATOR_RADIUS_M * np.log(np.tan(np.pi / 4.0 + np.radians(lat) / 2.0))
    return x, y


def mercator_to_lonlat(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `lonlat_to_mercator`: Web Mercator metres to WGS84 degrees `(lon, lat)`."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    lon = np.degrees(x / WEB_MERCATOR_RADIUS_M)
    lat = np.degrees(2.0 * np.arctan(np.exp(y / WEB_MERCATOR_RADIUS_M)) - np.pi / 2.0)
    return lon, lat


def ground_to_projected(length_m: float, reference_lat: float) -> float:
    """Projected (Web Mercator) length that covers `length_m` metres on the ground at `reference_lat`."""
    return float(length_m) / float(np.cos(np.radians(reference_lat)))


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres between points given in degrees (array-like, broadcast together).

    Haversine formula on the sphere of `MEAN_EARTH_RADIUS_M`:
    `d = 2 R asin(sqrt(sin^2(dlat / 2) + cos(lat1) cos(lat2) sin^2(dlon / 2)))`. One degree of latitude is
    `R * pi / 180 = 111 195.08 m`. Returns a float for scalar inputs, else an array.
    """
    phi1, phi2 = np.radians(np.asarray(lat1, dtype=np.float64)), np.radians(np.asarray(lat2, dtype=np.float64))
    dphi = phi2 - phi1
    dlmb = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    a = np.sin(dphi / 2.0) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2.0) ** 2
    d = 2.0 * MEAN_EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return float(d) if np.ndim(d) == 0 else d


__all__ = [
    "WEB_MERCATOR_RADIUS_M",
    "MEAN_EARTH_RADIUS_M",
    "MAX_MERCATOR_LAT",
    "valid_lonlat_mask",
    "lonlat_to_mercator",
    "mercator_to_lonlat",
    "ground_to_projected",
    "haversine_m",
]
