"""Build a NextLocLLM city dataset folder from raw check-ins / trajectories (the `nextlocllm-build-city` command).

    nextlocllm-build-city --format foursquare --input nyc_checkins.csv --pois nyc_pois.csv --city nyc --output data/nyc
    python dataset_scripts/build_city.py ...   # the same command from a checkout

See dataset_scripts/README.md for the formats, the output and every choice. The logic lives in
``nextlocllm_hf.data.build``; this command only parses arguments and prints the report.
"""

from __future__ import annotations

import argparse
import sys
import time

from .cli import entry_point, non_negative_float, positive_float, positive_int
from .data.build import BuildConfig, build_and_save
from .data.cells import CANDIDATE_RULES, POI_NORMALIZATIONS
from .data.formats import READERS, encoding_option, parse_mapping


def _floats(text: str, n: int, what: str):
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise ValueError(f"{what} must be {n} comma-separated numbers, got {text!r}")
    return vals


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B = BuildConfig  # the defaults are the builder's own, so the CLI and the API build the same city
    g = p.add_argument_group("input")
    g.add_argument("--format", required=True, choices=sorted(READERS))
    g.add_argument("--input", help="input file (or folder for geolife); not used by synthetic")
    g.add_argument("--pois", help="POI file: Foursquare POI CSV, raw TIST2015 POIs, or CSV/Parquet with lat/lon and "
                                  "category names, poi_class or OSM tags")
    g.add_argument("--city", required=True, help="city name (stored in every row)")
    g.add_argument("--output", required=True, help="output folder (new or empty; a city already there only with "
                                                   "--overwrite)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the city in --output (and its config in the --push_to_hub repo)")
    g.add_argument("--columns", help="column mapping for csv/foursquare, e.g. user=uid,time=ts,lat=lat,lon=lng "
                                     "(fields: user,time,lat,lon,venue,category,root_category,tz_offset_min,"
                                     "local_time,poi_class; for yjmob: user,d,t,x,y)")
    g.add_argument("--poi-columns", help="column mapping for the POI file (fields: lat,lon,venue,category,"
                                         "root_category,poi_class)")
    g.add_argument("--time-format", help="strftime format of the time column (default ISO 8601, then mixed)")
    g.add_argument("--time-unit", help="unit of numeric epoch times: s, ms, us, ns")
    g.add_argument("--timezone", help="IANA zone for local day/hour when the input has only UTC times")
    g.add_argument("--category-map", help="JSON category map extending/replacing the shipped Foursquare mapping "
                                          "(or an OSM mapping for OSM POIs)")
    g.add_argument("--encoding", type=encoding_option, default=B.encoding,
                   help="text encoding of --input and --pois, e.g. latin-1 or cp1252 (a JSON --category-map is always "
                        "UTF-8) [%(default)s; a byte-order mark is allowed]")
    g.add_argument("--bbox", help="lat_min,lon_min,lat_max,lon_max: keep records inside; also fixes the grid")
    g.add_argument("--max-invalid-fraction", type=non_negative_float, default=B.max_invalid_fraction,
                   help="above this fraction of unparseable times / invalid coordinates, stop with an error "
                        "(below it, drop and count) [%(default)s]")
    g = p.add_argument_group("processing")
    g.add_argument("--cell-size-m", type=positive_float, default=B.cell_size_m,
                   help="ground size of a square cell [%(default)s]")
    g.add_argument("--history-length", "--history", type=positive_int, default=B.history_length,
                   help="records in a sample's history H [%(default)s]")
    g.add_argument("--current-length", "--current", type=positive_int, default=B.current_length,
                   help="records in a sample's current trajectory L [%(default)s]")
    g.add_argument("--stride", type=positive_int, default=B.stride, help="window stride [%(default)s]")
    g.add_argument("--shard-rows", type=positive_int, default=B.shard_rows,
                   help="records per records file at most (whole users) [%(default)s]")
    g.add_argument("--split", choices=["user", "time"], default=B.split, help="user-disjoint or temporal [%(default)s]")
    g.add_argument("--split-fractions", default=",".join(map(str, B.split_fractions)),
                   help="train,validation,test [%(default)s]")
    g.add_argument("--seed", type=int, default=B.seed)
    g.add_argument("--candidates", choices=CANDIDATE_RULES, default=B.candidates,
                   help="candidate cells: poi = visited or holding a POI, visited, all-in-bbox [%(default)s]")
    g.add_argument("--poi-normalization", choices=POI_NORMALIZATIONS, default=B.poi_normalization,
                   help="max = count / city-wide class max (paper), sum, log-max, none [%(default)s]")
    g.add_argument("--max-gap-hours", type=positive_float, default=B.max_gap_hours,
                   help="cut a user's sequence where the gap exceeds this (default: no cut; yjmob 24)")
    g.add_argument("--max-duration-hours", type=non_negative_float, default=B.max_duration_hours,
                   help="clip durations; 0 = no clip [%(default)s]")
    g.add_argument("--keep-duplicates", action="store_true", help="keep exact duplicate records (same user, time, place)")
    g.add_argument("--stay-distance-m", type=positive_float, default=B.stay_distance_m,
                   help="geolife stay-point radius [%(default)s]")
    g.add_argument("--stay-min-minutes", type=positive_float, default=B.stay_min_minutes,
                   help="geolife stay-point minimum stay [%(default)s]")
    g = p.add_argument_group("scale: the partitioned build (csv, foursquare, gowalla, brightkite, yjmob)")
    g.add_argument("--partitions", type=int, default=B.partitions,
                   help="0: build in this process; N: by N user partitions on Dask, one partition per worker at a "
                        "time (memory per worker ~ city / N) [%(default)s]")
    g.add_argument("--scheduler", default=B.scheduler,
                   help="Dask scheduler of the partitioned build: synchronous, threads, processes, or a "
                        "dask.distributed scheduler address such as tcp://host:8786 [%(default)s]")
    g.add_argument("--workers", type=positive_int, default=B.workers,
                   help="processes (or threads) of the partitioned build (default: the cores)")
    g.add_argument("--block-size", default=B.block_size,
                   help="bytes of input per read task of the partitioned build [%(default)s]")
    g = p.add_argument_group("synthetic")
    g.add_argument("--users", type=positive_int, default=100, help="synthetic: number of users [100]")
    g.add_argument("--records-per-user", type=positive_int, default=150, help="synthetic: mean records per user [150]")
    g.add_argument("--n-pois", type=positive_int, default=None, help="synthetic: POIs (default drawn per city)")
    g.add_argument("--extent-km", type=positive_float, default=None, help="synthetic: side of the city square (default drawn)")
    g.add_argument("--center", help="synthetic: lat,lon of the centre (default drawn)")
    g = p.add_argument_group("terms of the source data (for the dataset card)")
    g.add_argument("--license", default=B.license,
                   help="the source data's license as a Hub license id (cc-by-4.0, odbl, other...) [%(default)s]")
    g.add_argument("--license-terms", help="the source's terms in words, as it states them")
    g.add_argument("--citation", help="the citation the source asks for (BibTeX)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("hub")
    g.add_argument("--push_to_hub", "--push-to-hub", dest="push_to_hub", metavar="ORG/NAME",
                   help="then push the city to this dataset repo as config --city (token: HF_TOKEN or hf auth login)")
    g.add_argument("--hub_revision", "--hub-revision", dest="hub_revision", help="branch to push to (default main)")
    g.add_argument("--hub_private", "--hub-private", dest="hub_private", action="store_true",
                   help="create the dataset repo private")
    return p.parse_args(argv)


def config_from_args(a) -> BuildConfig:
    syn = {"n_users": a.users, "records_per_user": a.records_per_user, "n_pois": a.n_pois, "extent_km": a.extent_km}
    if a.center:
        syn["center_lat"], syn["center_lon"] = _floats(a.center, 2, "--center")
    return BuildConfig(
        city=a.city, format=a.format, input=a.input, pois=a.pois, output=a.output, cell_size_m=a.cell_size_m,
        history_length=a.history_length, current_length=a.current_length, stride=a.stride,
        shard_rows=a.shard_rows, partitions=a.partitions, scheduler=a.scheduler, workers=a.workers,
        block_size=a.block_size, split=a.split,
        split_fractions=_floats(a.split_fractions, 3, "--split-fractions"), seed=a.seed, candidates=a.candidates,
        poi_normalization=a.poi_normalization, max_gap_hours=a.max_gap_hours,
        max_duration_hours=a.max_duration_hours, drop_duplicates=not a.keep_duplicates,
        bbox=_floats(a.bbox, 4, "--bbox") if a.bbox else None, columns=parse_mapping(a.columns),
        poi_columns=parse_mapping(a.poi_columns), time_format=a.time_format, time_unit=a.time_unit,
        timezone=a.timezone, category_map=a.category_map, encoding=a.encoding,
        max_invalid_fraction=a.max_invalid_fraction,
        stay_distance_m=a.stay_distance_m, stay_min_minutes=a.stay_min_minutes, synthetic=syn,
        show_progress=not a.no_progress, overwrite=a.overwrite, license=a.license, license_terms=a.license_terms,
        citation=a.citation,
    )


@entry_point
def main(argv=None) -> int:
    a = parse_args(argv)
    t0 = time.perf_counter()
    config = config_from_args(a)
    config.validate()
    if a.push_to_hub:  # before the build: an occupied target must not cost a build
        from nextlocllm_hf.hub_access import refuse_occupied_city

        refuse_occupied_city(a.push_to_hub, a.city, revision=a.hub_revision, overwrite=a.overwrite)
    res = build_and_save(config)
    print(res.report.render())
    print(f"wrote {a.output} (records-*.arrow, train/validation/test.parquet, cells.parquet, city.json, README.md) "
          f"in {time.perf_counter() - t0:.1f} s total")
    if a.push_to_hub:
        from nextlocllm_hf.hub import push_city_dataset

        # Checked above; `overwrite` here only lets the push replace what the check allowed.
        info = push_city_dataset(a.output, a.push_to_hub, revision=a.hub_revision,
                                 private=True if a.hub_private else None, overwrite=True)
        print(f"pushed city {a.city} to dataset {a.push_to_hub}: {info.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
