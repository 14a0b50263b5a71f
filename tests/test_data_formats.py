"""One tiny fixture per input format, written in tmp_path."""

import numpy as np
import pandas as pd
import pytest

from nextlocllm_hf.data.build import BuildConfig, build_city
from nextlocllm_hf.data.projection import lonlat_to_mercator
from nextlocllm_hf.data.staypoints import detect_stay_points

H, L = 2, 1
FRACTIONS = (0.34, 0.33, 0.33)
VENUES = [("v0", 51.05, -114.07, "Coffee Shop", "Food"), ("v1", 51.06, -114.05, "Office", "Professional & Other Places"),
          ("v2", 51.04, -114.09, "Park", "Outdoors & Recreation"), ("v3", 51.07, -114.08, "Moon Base", "Residence")]


def rows(n_users=3, n=6, start="2012-04-03 18:00:00"):
    out = []
    for u in range(n_users):
        t0 = pd.Timestamp(start, tz="UTC") + pd.Timedelta(hours=5 * u)
        for k in range(n):
            v = VENUES[(u + k) % len(VENUES)]
            out.append((str(u + 1), t0 + pd.Timedelta(hours=3 * k), *v))
    return out


def cfg(tmp_path, **kw):
    base = dict(city="c", history_length=H, current_length=L, stride=1, split_fractions=FRACTIONS, show_progress=False)
    base.update(kw)
    return BuildConfig(**base)


def n_samples(res):
    return sum(t.num_rows for t in res.windows.values())


def test_foursquare_clean_csv_with_local_time_and_root(tmp_path):
    r = rows()
    df = pd.DataFrame({"user_id": [x[0] for x in r], "venue_id": [x[2] for x in r], "category_name": [x[5] for x in r],
                       "root_category": [x[6] for x in r], "latitude": [x[3] for x in r], "longitude": [x[4] for x in r],
                       "utc_time": [x[1].strftime("%Y-%m-%d %H:%M:%S") for x in r],
                       "local_time": [(x[1] - pd.Timedelta(hours=6)).strftime("%Y-%m-%d %H:%M:%S") for x in r]})
    df.to_csv(tmp_path / "c.csv", index=False)
    res = build_city(cfg(tmp_path, format="foursquare", input=str(tmp_path / "c.csv")))
    assert n_samples(res) == 3 * 3
    p = res.report.info["pois"]
    assert p["source"] == "distinct venues of the check-ins" and p["read"] == 4 and p["via_root"] == 1
    assert p["per_class"]["Residential"] == 1  # Moon Base via its root category "Residence"
    t = res.samples("train").to_pandas().iloc[0]
    assert t.history_hour[0] == (18 - 6 + 5 * (int(t.user_id) - 1)) % 24


def test_foursquare_raw_tsmc2014(tmp_path):
    lines = []
    for u, t, vid, lat, lon, cat, _ in rows():
        lines.append("\t".join([u, vid, "4bf58dd8d48988d1e0931735", cat, str(lat), str(lon), "-240",
                                t.strftime("%a %b %d %H:%M:%S +0000 %Y")]))
    (tmp_path / "dataset_TSMC2014_NYC.txt").write_text("\n".join(lines) + "\n")
    res = build_city(cfg(tmp_path, format="foursquare", input=str(tmp_path / "dataset_TSMC2014_NYC.txt")))
    assert n_samples(res) == 9
    assert res.metadata["source"]["format"] == "foursquare raw tsmc2014"
    assert res.report.unmapped_categories == {"Moon Base": 1}  # no root column in TSMC2014: reported
    first = res.samples("train").to_pandas().iloc[0]
    assert first.history_hour[0] == (14 + 5 * (int(first.user_id) - 1)) % 24  # 18:00 UTC - 4 h


def test_foursquare_raw_tist2015_with_poi_file(tmp_path):
    r = rows() + [("1", pd.Timestamp("2013-01-01", tz="UTC"), "unknown_venue", 0, 0, "", "")]
    (tmp_path / "ci.txt").write_text("\n".join(
        "\t".join([u, vid, t.strftime("%a %b %d %H:%M:%S +0000 %Y"), "-360"]) for u, t, vid, *_ in r) + "\n")
    (tmp_path / "pois.txt").write_text("\n".join(
        "\t".join([v, str(la), str(lo), c, "CA"]) for v, la, lo, c, _ in VENUES) + "\n")
    res = build_city(cfg(tmp_path, format="foursquare", input=str(tmp_path / "ci.txt"), pois=str(tmp_path / "pois.txt")))
    assert res.report.drops["venue_not_in_poi_file"] == 1
    assert n_samples(res) == 9
    assert res.report.info["pois"]["read"] == 4
    with pytest.raises(ValueError, match="--pois"):
        build_city(cfg(tmp_path, format="foursquare", input=str(tmp_path / "ci.txt")))


@pytest.mark.parametrize("kind", ["tsmc2014", "tist2015"])
def test_foursquare_raw_files_in_latin1(tmp_path, kind):
    """Raw TSMC2014/TIST2015 files (no header, tab-separated) are read in `encoding` too: refused as UTF-8 with
    their line, and with `encoding="latin-1"` they build what their UTF-8 copies build ('Café' is classified)."""
    r = [(u, t, vid, lat, lon, "Café" if vid == "v0" else cat, root) for u, t, vid, lat, lon, cat, root in rows()]
    if kind == "tsmc2014":
        lines = ["\t".join([u, vid, "4bf58dd8d48988d1e0931735", cat, str(lat), str(lon), "-240",
                            t.strftime("%a %b %d %H:%M:%S +0000 %Y")]) for u, t, vid, lat, lon, cat, _ in r]
        pois = None
    else:
        lines = ["\t".join([u, vid, t.strftime("%a %b %d %H:%M:%S +0000 %Y"), "-360"]) for u, t, vid, *_ in r]
        pois = "\n".join("\t".join([v, str(la), str(lo), "Café" if v == "v0" else c, "CA"])
                         for v, la, lo, c, _ in VENUES) + "\n"
    built = {}
    for encoding in ("utf-8", "latin-1"):
        folder = tmp_path / encoding
        folder.mkdir()
        (folder / "checkins.txt").write_text("\n".join(lines) + "\n", encoding=encoding)
        if pois:
            (folder / "pois.txt").write_text(pois, encoding=encoding)
        options = dict(format="foursquare", input=str(folder / "checkins.txt"),
                       pois=str(folder / "pois.txt") if pois else None)
        if encoding != "utf-8":
            wrong = folder / ("pois.txt" if pois else "checkins.txt")  # TIST2015: the POI file is read first
            line = 1 + next(i for i, text in enumerate((pois or "\n".join(lines)).split("\n")) if "é" in text)
            with pytest.raises(ValueError, match=rf"^{wrong} line {line} is not valid UTF-8 \(byte 0xe9 at byte "
                                                 rf"\d+ of the line\): pass --encoding latin-1"):
                build_city(cfg(tmp_path, **options))
        built[encoding] = build_city(cfg(tmp_path, encoding=encoding, **options))
    utf8, latin1 = built["utf-8"], built["latin-1"]
    counts = [{k: v for k, v in res.report.info["pois"].items() if k != "source"} for res in (utf8, latin1)]
    assert counts[0] == counts[1]
    assert latin1.report.unmapped_categories == utf8.report.unmapped_categories == {"Moon Base": 1}
    assert utf8.report.info["pois"]["per_class"]["Commercial"] >= 1  # Café


def test_gowalla_brightkite(tmp_path):
    r = rows()
    lines = ["\t".join([u, t.strftime("%Y-%m-%dT%H:%M:%SZ"), str(la), str(lo), vid]) for u, t, vid, la, lo, *_ in r]
    lines.append("\t".join(["2", "2013-01-01T00:00:00Z", "0.0", "0.0", "x"]))  # Brightkite's missing position
    (tmp_path / "g.txt").write_text("\n".join(lines) + "\n")
    res = build_city(cfg(tmp_path, format="gowalla", input=str(tmp_path / "g.txt"), timezone="America/Edmonton"))
    assert res.report.drops["zero_coordinates"] == 1
    assert n_samples(res) == 9
    assert any("POI vectors are zero" in n for n in res.report.notes)
    t = res.samples("train").to_pandas().iloc[0]
    assert t.history_hour[0] == (12 + 5 * (int(t.user_id) - 1)) % 24  # MDT = UTC - 6 in April
    assert np.all(np.stack(t.history_poi) == 0)


def _plt(points):
    head = "Geolife trajectory\nWGS 84\nAltitude is in Feet\nReserved 3\n0,2,255,My Track,0,0,2,8421376\n0\n"
    body = []
    for lat, lon, ts in points:
        days = (ts - pd.Timestamp("1899-12-30")).total_seconds() / 86400
        body.append(f"{lat:.6f},{lon:.6f},0,492,{days:.10f},{ts:%Y-%m-%d},{ts:%H:%M:%S}")
    return head + "\n".join(body) + "\n"


def test_geolife_stay_points(tmp_path):
    places = [(39.98, 116.31), (39.99, 116.33), (40.00, 116.30), (39.97, 116.35), (39.985, 116.32), (39.995, 116.34)]
    for u in range(3):
        pts = []
        t = pd.Timestamp("2009-03-01 01:00:00") + pd.Timedelta(hours=u)
        for k, (la, lo) in enumerate(places):
            for m in range(31):  # 30 min of points every minute, jitter < 20 m
                pts.append((la + 1e-4 * np.sin(m), lo + 1e-4 * np.cos(m), t))
                t += pd.Timedelta(minutes=1)
            for m in range(5):  # moving: 5 points far apart (no stay)
                pts.append((la + 0.01 * (m + 1), lo, t))
                t += pd.Timedelta(minutes=1)
        d = tmp_path / "Data" / f"{u:03d}" / "Trajectory"
        d.mkdir(parents=True)
        half = len(pts) // 2
        (d / "a.plt").write_text(_plt(pts[:half]))
        (d / "b.plt").write_text(_plt(pts[half:]))
    res = build_city(cfg(tmp_path, format="geolife", input=str(tmp_path / "Data")))
    assert res.report.info["stay_points"] == 18 and res.report.info["raw_points"] == 3 * 6 * 36
    assert n_samples(res) == 3 * 3
    t = res.samples("train").to_pandas().iloc[0]
    x, y = lonlat_to_mercator(116.31, 39.98)
    np.testing.assert_allclose(t.history_coordinates[0], [x, y], atol=30)
    assert t.history_hour[0] == 9 + int(t.user_id)  # 01:00 GMT + user offset -> Beijing time
    assert t.history_duration[0] == pytest.approx(36 / 60, abs=1e-3)  # arrival to next arrival


def test_stay_point_algorithm_hand_example():
    # user 0: 3 points within 50 m over 25 min (stay), 1 far point, 2 close points 5 min apart (no stay),
    # then the user's last 2 points within 10 m over 30 min (stay at the end of the user's data)
    lat = np.array([0.0, 0.0002, 0.0004, 0.05, 0.10, 0.1001, 0.2, 0.20005])
    lon = np.zeros(8)
    t = np.array([0, 600, 1500, 2000, 3000, 3300, 4000, 5800], dtype=float)
    user = np.zeros(8, dtype=int)
    sp = detect_stay_points(user, t, lat, lon, 100.0, 1200.0)
    np.testing.assert_array_equal(sp["index"], [0, 6])
    np.testing.assert_array_equal(sp["n_points"], [3, 2])
    np.testing.assert_allclose(sp["lat"], [0.0002, 0.200025])
    np.testing.assert_allclose(sp["departure"], [1500, 5800])
    # a user boundary ends a stay
    sp = detect_stay_points(np.array([0, 0, 1, 1]), np.array([0, 1300, 1400, 3000.0]), np.zeros(4), np.zeros(4), 100, 1200)
    np.testing.assert_array_equal(sp["index"], [0, 2])


def test_yjmob_virtual_grid_and_gap_cut(tmp_path):
    recs = []
    for u in range(3):
        for k in range(5):
            recs.append((u, 0, 10 + 2 * k, 1 + k, 1 + u))  # day 0, slots 10.. (05:00..)
        recs.append((u, 0, 30, 999, 999))  # masked
        for k in range(5):
            recs.append((u, 3, 20 + k, 100, 100))  # 3 days later: cut at the 24 h gap
    pd.DataFrame(recs, columns=["uid", "d", "t", "x", "y"]).to_csv(tmp_path / "y.csv", index=False)
    res = build_city(cfg(tmp_path, format="yjmob", input=str(tmp_path / "y.csv")))
    assert res.report.drops["masked_location"] == 3
    assert res.metadata["max_gap_hours"] == 24.0 and res.report.info["segments_kept"] == 6
    assert n_samples(res) == 6 * 2  # two windows per 5-record segment, none across the gap
    t = pd.concat([res.samples(split).to_pandas() for split in res.windows])
    first = t[t.history_hour.map(lambda h: h[0]) == 5].iloc[0]
    u = int(first.user_id)
    np.testing.assert_allclose(first.history_coordinates[0], [-49750.0, 49750.0 - 500.0 * u])
    assert first.history_day[0] == 0 and first.history_duration[0] == pytest.approx(1.0)
    assert res.cells.poi_frequency.map(lambda v: float(np.sum(v))).max() == 0
    later = t[t.history_day.map(lambda d: d[0]) == 3]
    np.testing.assert_allclose(np.stack(later.target_coordinates), [[-250.0, 250.0]] * len(later))


def test_generic_parquet_with_mapping_epoch_ms_and_osm_pois(tmp_path):
    r = rows()
    pd.DataFrame({"who": [x[0] for x in r], "when": [x[1].value // 10**6 for x in r], "y_deg": [x[3] for x in r],
                  "x_deg": [x[4] for x in r]}).to_parquet(tmp_path / "r.parquet")
    pd.DataFrame({"lat": [51.05, 51.06, 51.06], "lon": [-114.07, -114.05, -114.05],
                  "amenity": ["cafe", None, "unicorn_stable"], "tourism": [None, "museum", None]}).to_csv(
        tmp_path / "osm.csv", index=False)
    res = build_city(cfg(tmp_path, format="csv", input=str(tmp_path / "r.parquet"), pois=str(tmp_path / "osm.csv"),
                         columns={"user": "who", "time": "when", "lat": "y_deg", "lon": "x_deg"}, time_unit="ms",
                         timezone="America/Edmonton"))
    assert n_samples(res) == 9
    assert res.report.info["pois"]["per_class"] == {"Entertainment": 0, "Commercial": 1, "Education": 1,
                                                     "Public Service": 0, "Residential": 0}
    assert res.report.unmapped_categories == {"amenity=unicorn_stable": 1}
    t = res.samples("train").to_pandas().iloc[0]
    assert t.history_hour[0] == (12 + 5 * (int(t.user_id) - 1)) % 24
