"""Input readers, one per format; each returns a :class:`~.common.RawInput`."""

from __future__ import annotations

from ..report import BuildReport
from .common import RawInput, ReadOptions, encoding_option, parse_mapping
from .foursquare import foursquare_table, read_foursquare
from .generic import generic_table, read_generic
from .geolife import read_geolife
from .gowalla import gowalla_table, read_gowalla
from .tables import RecordsTable
from .yjmob import read_yjmob, yjmob_table


def read_synthetic(path, pois_path, report: BuildReport, opts: ReadOptions) -> RawInput:
    from ..synthetic import SyntheticCityParams, generate_synthetic_city

    params = SyntheticCityParams(**opts.extra.get("synthetic", {}))
    records, pois, info = generate_synthetic_city(params, show_progress=opts.show_progress)
    report.input_rows = len(records)
    report.info["local_time_from"] = "synthetic local clock"
    return RawInput(records, pois, source={"format": "synthetic", "model": "EPR (Song et al. 2010) + daily routines (home, work, leisure, weekend and day anchors)",
                                           "params": info}, poi_source="synthetic POI layout")


READERS = {
    "foursquare": read_foursquare,
    "gowalla": read_gowalla,
    "brightkite": read_gowalla,
    "geolife": read_geolife,
    "yjmob": read_yjmob,
    "csv": read_generic,
    "synthetic": read_synthetic,
}

# Formats whose records are one table, readable in blocks: the ones the partitioned build takes.
TABLES = {
    "foursquare": foursquare_table,
    "gowalla": gowalla_table,
    "brightkite": gowalla_table,
    "yjmob": yjmob_table,
    "csv": generic_table,
}

__all__ = ["READERS", "TABLES", "RawInput", "ReadOptions", "RecordsTable", "encoding_option", "parse_mapping"]
