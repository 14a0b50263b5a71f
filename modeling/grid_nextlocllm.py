"""Square city grid in Web Mercator coordinates: the cell of a point, for building a city and for inference.

Cells are squares of a *ground* size (default 500 m).  Web Mercator inflates distances by
``1 / cos(lat)``, so the projected cell size is ``cell_size_m / cos(reference_lat)`` where the
reference latitude is the middle of the city's latitude range (e.g. 500 m ground = 660.6 m
projected at New York, 40.77 N).  Over a city (< 1 degree of latitude) the ground size of a cell
varies by well under 1 % from the reference.  The grid's origin is the lower-left corner
(minimum x, minimum y) of the area; ``row`` counts upwards in y (northwards), ``col`` eastwards.

The YJMob100K data come on a 200 x 200 grid of 500 m cells without real coordinates;
:meth:`Grid.yjmob_virtual` reproduces the virtual Mercator grid of the authors' follow-up code
(cell (i, j), 1-based, has its centre at (-49 750 + 500 (i - 1), 49 750 - 500 (j - 1)) metres).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .geometry_nextlocllm import ground_to_projected, mercator_to_lonlat


@dataclass(frozen=True)
class Grid:
    origin_x: float
    origin_y: float
    cell_size_m: float
    reference_lat: float
    cell_size_projected: float
    n_rows: int
    n_cols: int
    kind: str = "mercator"

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_extent(cls, xmin, ymin, xmax, ymax, cell_size_m: float, reference_lat: float) -> "Grid":
        """Grid whose lower-left corner is (xmin, ymin) and that covers (xmax, ymax)."""
        if cell_size_m <= 0:
            raise ValueError(f"cell_size_m must be > 0, got {cell_size_m!r}")
        size = ground_to_projected(cell_size_m, reference_lat)
        n_cols = int(np.floor((float(xmax) - float(xmin)) / size)) + 1
        n_rows = int(np.floor((float(ymax) - float(ymin)) / size)) + 1
        return cls(float(xmin), float(ymin), float(cell_size_m), float(reference_lat), float(size), n_rows, n_cols)

    @classmethod
    def fit(cls, x, y, lat, cell_size_m: float = 500.0) -> "Grid":
        """Grid covering the points; reference latitude = middle of their latitude range."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        if x.size == 0:
            raise ValueError("cannot fit a grid: no records left")
        ref = 0.5 * (float(lat.min()) + float(lat.max()))
        return cls.from_extent(x.min(), y.min(), x.max(), y.max(), cell_size_m, ref)

    @classmethod
    def yjmob_virtual(cls, size: int = 200, cell_size_m: float = 500.0) -> "Grid":
        half = size * cell_size_m / 2.0
        return cls(-half, -half, cell_size_m, 0.0, cell_size_m, size, size, kind="virtual")

    # ------------------------------------------------------------------ geometry
    @property
    def n_cells(self) -> int:
        return self.n_rows * self.n_cols

    def locate(self, x, y):
        """Return ``(row, col, inside)`` int64 arrays for projected points."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        col = np.floor((x - self.origin_x) / self.cell_size_projected).astype(np.int64)
        row = np.floor((y - self.origin_y) / self.cell_size_projected).astype(np.int64)
        inside = (row >= 0) & (row < self.n_rows) & (col >= 0) & (col < self.n_cols)
        return row, col, inside

    def key(self, row, col):
        """Flat index of a cell in the full grid (row-major)."""
        return np.asarray(row, dtype=np.int64) * self.n_cols + np.asarray(col, dtype=np.int64)

    def unkey(self, key):
        key = np.asarray(key, dtype=np.int64)
        return key // self.n_cols, key % self.n_cols

    def centroid(self, row, col):
        """Projected (x, y) and WGS84 (lat, lon) of cell centres."""
        x = self.origin_x + (np.asarray(col, dtype=np.float64) + 0.5) * self.cell_size_projected
        y = self.origin_y + (np.asarray(row, dtype=np.float64) + 0.5) * self.cell_size_projected
        lon, lat = mercator_to_lonlat(x, y)
        return x, y, lat, lon

    def to_dict(self) -> dict:
        d = asdict(self)
        d["crs"] = "EPSG:3857" if self.kind == "mercator" else "virtual (YJMob 500 m grid, metres)"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        keys = {"origin_x", "origin_y", "cell_size_m", "reference_lat", "cell_size_projected", "n_rows", "n_cols", "kind"}
        missing = sorted(keys - {"kind"} - set(d))
        if missing:
            raise ValueError(f"grid {d!r} lacks {missing}")
        return cls(**{k: v for k, v in d.items() if k in keys})


__all__ = ["Grid"]
