"""Synthetic EPR cities: seeded, fast, different across cities, with learnable regularity."""

import time

import numpy as np
import pandas as pd

from nextlocllm_hf.data import load_city_splits
from nextlocllm_hf.data.build import BuildConfig, build_and_save
from nextlocllm_hf.data.synthetic import SyntheticCityParams, generate_synthetic_city


def test_seeded_and_cities_differ():
    a1, p1, i1 = generate_synthetic_city(SyntheticCityParams(city="alpha", seed=3, n_users=20, records_per_user=60))
    a2, p2, _ = generate_synthetic_city(SyntheticCityParams(city="alpha", seed=3, n_users=20, records_per_user=60))
    pd.testing.assert_frame_equal(a1, a2)
    pd.testing.assert_frame_equal(p1, p2)
    b, pb, ib = generate_synthetic_city(SyntheticCityParams(city="beta", seed=3, n_users=20, records_per_user=60))
    assert (i1["extent_km"], i1["n_pois"], i1["class_mix"]) != (ib["extent_km"], ib["n_pois"], ib["class_mix"])
    assert abs(a1.lat.mean() - b.lat.mean()) > 0.01
    c, *_ = generate_synthetic_city(SyntheticCityParams(city="alpha", seed=4, n_users=20, records_per_user=60))
    assert not a1[["lat", "lon"]].equals(c[["lat", "lon"]])


def test_mobility_regularities():
    r, pois, info = generate_synthetic_city(SyntheticCityParams(city="gamma", seed=0, n_users=40, records_per_user=120))
    assert r.groupby("user_id").size().between(40, 400).all()
    assert (np.diff(r.ts.to_numpy())[np.diff(r.user_id.cat.codes if hasattr(r.user_id, "cat") else
                                             pd.factorize(r.user_id)[0]) == 0] > 0).all()
    hour = (r.local_ts % 86400) // 3600
    assert (hour.between(1, 4)).mean() < 0.03  # people sleep
    top_share = r.groupby("user_id").venue_id.agg(lambda s: s.value_counts().iloc[0] / len(s))
    assert top_share.median() > 0.2  # preferential return to anchors
    assert (r.groupby("user_id").venue_id.nunique() > 5).all()  # exploration
    assert set(r.category) <= {"Entertainment", "Commercial", "Education", "Public Service", "Residential"}


def test_build_synthetic_fast(tmp_path):
    t = time.perf_counter()
    res = build_and_save(BuildConfig(city="delta", format="synthetic", seed=1, output=str(tmp_path / "d"),
                                     synthetic={"n_users": 100, "records_per_user": 150}, show_progress=False))
    assert time.perf_counter() - t < 10
    assert res.report.info["users_kept"] >= 95 and res.report.unmapped_categories == {}
    city = load_city_splits(tmp_path / "d")
    assert city.splits["train"].num_rows > 1000
    assert city.metadata["source"]["format"] == "synthetic"
    assert city.metadata["source"]["params"]["n_users"] == 100
