"""GeoLife GPS trajectories (Microsoft Research Asia, v1.3): ``Data/<user>/Trajectory/*.plt``.

Each PLT file has 6 header lines, then ``latitude, longitude, 0, altitude (feet), days since
1899-12-30, date, time`` (GMT).  Points are turned into stay points
(:func:`nextlocllm_hf.data.staypoints.detect_stay_points`, 200 m / 20 min by default,
``--stay-distance-m`` / ``--stay-min-minutes``); each stay point becomes one record at its arrival
time.  Local time defaults to Asia/Shanghai (``--timezone`` overrides).  No POI categories:
pass ``--pois`` (e.g. OSM POIs of Beijing) or the POI vectors are zero.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..report import BuildReport
from ..staypoints import detect_stay_points
from .common import RawInput, ReadOptions, decoding, list_files, local_clock, make_records, text_codec
from .pois import read_pois

PLT_COLUMNS = ["lat", "lon", "zero", "alt", "days", "date", "time"]
DAY0 = pd.Timestamp("1899-12-30", tz="UTC")


def _user_of(path) -> str:
    parts = path.parts
    if "Trajectory" in parts:
        return parts[parts.index("Trajectory") - 1]
    return path.parent.name


def read_geolife(path, pois_path, report: BuildReport, opts: ReadOptions) -> RawInput:
    files = list_files(path, "*.plt")
    frames = []
    for f in tqdm(files, desc="reading PLT files", disable=not opts.show_progress, leave=False):
        with decoding(f, opts.encoding):
            d = pd.read_csv(f, skiprows=6, header=None, names=PLT_COLUMNS, usecols=["lat", "lon", "days"],
                            encoding=text_codec(opts.encoding))
        d["user_id"] = _user_of(f)
        frames.append(d)
    pts = pd.concat(frames, ignore_index=True)
    report.input_rows = len(pts)
    report.info["raw_points"] = len(pts)
    days = pd.to_numeric(pts["days"], errors="coerce").to_numpy(dtype=np.float64)
    bad_t = ~np.isfinite(days)
    if bad_t.any():
        report.check_fraction("unparseable_time", int(bad_t.sum()), len(pts), "days", pts["days"][bad_t].iloc[0],
                              opts.max_invalid_fraction)
    lat = pd.to_numeric(pts["lat"], errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(pts["lon"], errors="coerce").to_numpy(dtype=np.float64)
    bad_c = ~bad_t & ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if bad_c.any():
        report.check_fraction("invalid_coordinates", int(bad_c.sum()), len(pts), "latitude/longitude",
                              (lat[bad_c][0], lon[bad_c][0]), opts.max_invalid_fraction)
    keep = ~bad_t & ~bad_c
    sec = np.round(days[keep] * 86400.0)
    order_df = pd.DataFrame({"user_id": pts["user_id"].to_numpy()[keep], "t": sec, "lat": lat[keep], "lon": lon[keep]})
    order_df = order_df.sort_values(["user_id", "t"], kind="stable").reset_index(drop=True)
    codes, users = pd.factorize(order_df["user_id"])
    sp = detect_stay_points(codes, order_df["t"].to_numpy(), order_df["lat"].to_numpy(), order_df["lon"].to_numpy(),
                            opts.stay_distance_m, opts.stay_min_minutes * 60.0)
    n_sp = len(sp["index"])
    report.info["stay_points"] = n_sp
    report.info["stay_point_params"] = {"distance_m": opts.stay_distance_m, "min_minutes": opts.stay_min_minutes}
    report.drop("gps_point_not_in_stay", int(keep.sum()) - int(sp["n_points"].sum()))
    report.drop("gps_point_merged_into_stay", int(sp["n_points"].sum()) - n_sp)
    utc = pd.Series(DAY0 + pd.to_timedelta(sp["arrival"], unit="s"))
    local, how = local_clock(utc, report, opts, default_timezone="Asia/Shanghai")
    report.info["local_time_from"] = how
    recs = make_records(report, np.asarray(users)[sp["user"]], utc, local, sp["lat"], sp["lon"])
    pois, poi_source = (None, "")
    if pois_path:
        pois, poi_source = read_pois(pois_path, report, opts)
    return RawInput(recs, pois, source={"format": "geolife", "path": str(path), "files": len(files)},
                    poi_source=poi_source)
