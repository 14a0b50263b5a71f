"""POI tables: the cleaned Foursquare POI CSV, raw TIST2015 ``dataset_TIST2015_POIs.txt``, or any
CSV/Parquet with latitude/longitude plus a category name column, a ``poi_class`` column (taxonomy
class names) or OSM tag columns (``amenity``, ``shop``, ``tourism``, ``leisure``, ...)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..report import BuildReport
from .common import ReadOptions, decoding, first_line, read_table, resolve_columns, sniff_sep, text_codec

OSM_KEYS = ("amenity", "shop", "tourism", "leisure", "office", "craft", "healthcare", "railway", "public_transport",
            "building")
TIST_POI_COLUMNS = ["venue_id", "lat", "lon", "category", "country_code"]


def _looks_like_raw_tist_pois(path, encoding: str) -> bool:
    if Path(path).suffix.lower() in (".parquet", ".pq") or sniff_sep(path, encoding) != "\t":
        return False
    parts = first_line(path, encoding).split("\t")
    if len(parts) != 5:
        return False
    try:
        float(parts[1]), float(parts[2])
        return True
    except ValueError:
        return False


def read_pois(path, report: BuildReport, opts: ReadOptions) -> tuple[pd.DataFrame, str]:
    """Return the canonical POI frame and a description of its source."""
    if _looks_like_raw_tist_pois(path, opts.encoding):
        with decoding(path, opts.encoding):
            df = pd.read_csv(path, sep="\t", header=None, names=TIST_POI_COLUMNS, dtype=str, quoting=3,
                             encoding=text_codec(opts.encoding))
        df["lat"] = pd.to_numeric(df["lat"], errors="coerce")
        df["lon"] = pd.to_numeric(df["lon"], errors="coerce")
        return df[["venue_id", "lat", "lon", "category"]], f"TIST2015 POI file {path}"
    parquet = Path(path).suffix.lower() in (".parquet", ".pq")
    df = read_table(path) if parquet else read_table(path, opts.encoding, low_memory=False)
    cols = resolve_columns(df.columns, opts.poi_columns, ("lat", "lon"), ("venue", "category", "root_category", "poi_class"),
                           what=f"POI file {path}")
    out = pd.DataFrame({
        "lat": pd.to_numeric(df[cols["lat"]], errors="coerce"),
        "lon": pd.to_numeric(df[cols["lon"]], errors="coerce"),
    })
    for f, name in (("venue", "venue_id"), ("category", "category"), ("root_category", "root_category"),
                    ("poi_class", "poi_class")):
        if f in cols:
            out[name] = df[cols[f]].astype("string")
    osm = [c for c in df.columns if str(c).lower() in OSM_KEYS]
    for c in osm:
        out[str(c).lower()] = df[c].astype("string")
    if not ({"category", "poi_class"} & set(out.columns)) and not osm:
        raise ValueError(
            f"POI file {path}: no category information: expected a category name column "
            f"(category_name/category), a poi_class column or OSM tag columns {list(OSM_KEYS)}; "
            f"available columns: {list(df.columns)}"
        )
    kind = ("taxonomy classes" if "poi_class" in out.columns else "category names" if "category" in out.columns
            else "OSM tags")
    return out, f"POI file {path} ({kind})"
