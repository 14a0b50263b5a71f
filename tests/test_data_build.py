"""End-to-end build on tiny hand-made check-ins: splits, statistics, Features, leakage, loading."""

import json

import numpy as np
import pandas as pd
import pytest

from nextlocllm_hf.columns import rows_to_arrays
from nextlocllm_hf.data import load_cities, load_city_splits
from nextlocllm_hf.data.build import BuildConfig, build_and_save, build_city
from nextlocllm_hf.data.features import city_features, window_features
from nextlocllm_hf.data.projection import lonlat_to_mercator

H, L, STRIDE = 4, 2, 1
W = H + L + 1
CATS = ["Coffee Shop", "Office", "Park", "Home (private)", "University", "Subway"]


def make_checkins(n_users=10, n_per_user=12, seed=0, lat0=40.75, lon0=-73.98):
    """Check-ins at 12 venues on a ~3 km square; one row per check-in, hourly-ish times."""
    rng = np.random.default_rng(seed)
    venues = pd.DataFrame({
        "venue_id": [f"v{i}" for i in range(12)],
        "latitude": lat0 + rng.uniform(-0.015, 0.015, 12),
        "longitude": lon0 + rng.uniform(-0.02, 0.02, 12),
        "category_name": [CATS[i % len(CATS)] for i in range(12)],
    })
    rows = []
    for u in range(n_users):
        t = pd.Timestamp("2012-04-02 12:00", tz="UTC") + pd.Timedelta(hours=int(rng.integers(0, 48)))
        for _ in range(n_per_user):
            v = venues.iloc[int(rng.integers(0, 12))]
            rows.append({"user_id": str(100 + u), "venue_id": v.venue_id, "category_name": v.category_name,
                         "latitude": v.latitude, "longitude": v.longitude,
                         "utc_time": t.strftime("%Y-%m-%d %H:%M:%S"), "tz_offset_min": -240})
            t += pd.Timedelta(minutes=int(rng.integers(30, 600)))
    return pd.DataFrame(rows), venues


def write_fixture(tmp_path, **kw):
    df, venues = make_checkins(**kw)
    ci, pi = tmp_path / "checkins.csv", tmp_path / "pois.csv"
    df.to_csv(ci, index=False)
    venues.to_csv(pi, index=False)
    return ci, pi, df, venues


def cfg(ci, pi, out=None, **kw):
    base = dict(city="tiny", format="foursquare", input=str(ci), pois=str(pi) if pi else None,
                output=str(out) if out else None, history_length=H, current_length=L, stride=STRIDE,
                show_progress=False)
    base.update(kw)
    return BuildConfig(**base)


def test_user_disjoint_splits_and_fractions(tmp_path):
    ci, pi, *_ = write_fixture(tmp_path, n_users=10)
    res = build_city(cfg(ci, pi))
    users = {n: set(t.column("user_id").to_pylist()) for n, t in res.windows.items()}
    assert len(users["train"]) == 7 and len(users["validation"]) == 1 and len(users["test"]) == 2
    assert not (users["train"] & users["validation"]) and not (users["train"] & users["test"])
    assert not (users["validation"] & users["test"])
    # seeded: same seed same split, another seed another split
    again = build_city(cfg(ci, pi))
    assert set(again.windows["test"].column("user_id").to_pylist()) == users["test"]
    other = [set(build_city(cfg(ci, pi, seed=s)).windows["test"].column("user_id").to_pylist()) for s in (1, 2, 3)]
    assert any(o != users["test"] for o in other)


def test_statistics_from_train_only(tmp_path):
    # 13 records per user with W = 7, stride 1: every record of a user is in some window
    ci, pi, df, _ = write_fixture(tmp_path, n_users=10, n_per_user=13)
    res = build_city(cfg(ci, pi))
    train_users = set(res.windows["train"].column("user_id").to_pylist())
    tr = df[df.user_id.isin(train_users)]
    x, y = lonlat_to_mercator(tr.longitude.to_numpy(), tr.latitude.to_numpy())
    np.testing.assert_allclose(res.metadata["coordinate_mean"], [x.mean(), y.mean()], rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.metadata["coordinate_std"], [x.std(), y.std()], rtol=1e-9)
    # moving a test user far away does not change the statistics
    test_user = sorted(set(res.windows["test"].column("user_id").to_pylist()))[0]
    df2 = df.copy()
    m = df2.user_id == test_user
    df2.loc[m, "latitude"] += 0.01
    df2.loc[m, "longitude"] -= 0.01
    df2.to_csv(ci, index=False)
    res2 = build_city(cfg(ci, pi))
    assert res2.metadata["coordinate_mean"] == res.metadata["coordinate_mean"]
    assert res2.metadata["coordinate_std"] == res.metadata["coordinate_std"]


def test_features_preserved_through_save_and_load(tmp_path):
    ci, pi, *_ = write_fixture(tmp_path)
    out = tmp_path / "city"
    res = build_and_save(cfg(ci, pi, out))
    city = load_city_splits(out)
    expected = city_features(H, L, 5)
    for split in ("train", "validation", "test"):
        assert city.splits[split].features == window_features()  # stored: the windows
        assert city.splits[split].num_rows == res.windows[split].num_rows
        assert res.samples(split).schema == expected.arrow_schema  # shown: the samples, with these types
    assert city.name == "tiny" and city.metadata["history_length"] == H
    row = city.splits["train"][0]
    assert len(row["history_coordinates"]) == H and len(row["current_poi"]) == L and len(row["current_poi"][0]) == 5
    assert min(min(r) for r in city.splits["train"][:]["history_duration"]) >= 0
    cells = city.cells
    assert list(cells.cell_id) == list(range(len(cells)))
    for col in ("cell_id", "lat", "lon", "x", "y", "poi_frequency", "poi_counts"):
        assert col in cells.columns
    assert rows_to_arrays(city.splits["train"].select(range(2)), ["history_poi"])["history_poi"].shape == (2, H, 5)
    with open(out / "city.json") as f:
        stats = json.load(f)
    assert stats["format_version"] == 2 and stats["cell_size_m"] == 500
    assert stats["counts"]["samples"]["train"] == res.windows["train"].num_rows
    # every record's cell exists and its x/y lies inside that cell
    t = rows_to_arrays(city.splits["test"], ["target_cell", "target_coordinates"])
    size = stats["grid"]["cell_size_projected"]
    c = cells.set_index("cell_id").loc[t["target_cell"]]
    assert np.all(np.abs(t["target_coordinates"][:, 0] - c.x.to_numpy()) <= size / 2 + 1e-6)
    assert np.all(np.abs(t["target_coordinates"][:, 1] - c.y.to_numpy()) <= size / 2 + 1e-6)


def test_changing_the_target_changes_no_input(tmp_path):
    ci, pi, df, venues = write_fixture(tmp_path, n_users=10, n_per_user=12)
    res = build_city(cfg(ci, pi))
    train = res.samples("train").to_pandas()
    k = 3
    user = train.user_id.iloc[k]
    j = int((train.user_id.iloc[:k] == user).sum())  # window start (stride 1) within the user
    rows = df.index[df.user_id == user]
    target_row = rows[j + W - 1]
    old = df.loc[target_row]
    other = venues[venues.venue_id != old.venue_id].iloc[0]
    df2 = df.copy()
    df2.loc[target_row, ["venue_id", "latitude", "longitude", "category_name"]] = [
        other.venue_id, other.latitude, other.longitude, other.category_name]
    t_prev = pd.Timestamp(df.loc[rows[j + W - 2], "utc_time"])
    df2.loc[target_row, "utc_time"] = (t_prev + pd.Timedelta(minutes=7)).strftime("%Y-%m-%d %H:%M:%S")
    df2.to_csv(ci, index=False)
    train2 = build_city(cfg(ci, pi)).samples("train").to_pandas()
    assert len(train2) == len(train) and train2.user_id.iloc[k] == user
    inputs = [c for c in train.columns if c.startswith(("history_", "current_"))]
    for c in inputs:
        a, b = train[c].iloc[k], train2[c].iloc[k]
        np.testing.assert_array_equal(np.stack(list(a)) if a.dtype == object else a,
                                      np.stack(list(b)) if b.dtype == object else b, err_msg=c)
    assert not np.array_equal(train.target_coordinates.iloc[k], train2.target_coordinates.iloc[k])
    assert train2.target_time_gap.iloc[k] == pytest.approx(7 / 60, abs=1e-4)
    assert train.target_time_gap.iloc[k] != train2.target_time_gap.iloc[k]


def test_durations_and_time_gap(tmp_path):
    ci, pi, df, _ = write_fixture(tmp_path, n_users=3, n_per_user=W)
    res = build_city(cfg(ci, pi, split_fractions=(0.34, 0.33, 0.33)))
    tables = [res.samples(split).to_pandas() for split in res.windows]
    s = pd.concat(tables).set_index("user_id")
    for user, g in df.groupby("user_id"):
        t = pd.to_datetime(g.utc_time).to_numpy()
        gaps = np.diff(t).astype("timedelta64[s]").astype(float) / 3600
        row = s.loc[user]
        durs = np.concatenate([row.history_duration, row.current_duration])
        np.testing.assert_allclose(durs[:-1], np.minimum(gaps[:W - 2], 24), rtol=1e-6)
        assert durs[-1] == pytest.approx(np.median(durs[:-1]), rel=1e-6)  # not the gap to the target
        assert row.target_time_gap == pytest.approx(gaps[W - 2], rel=1e-6)
        local = pd.to_datetime(g.utc_time) - pd.Timedelta(hours=4)
        np.testing.assert_array_equal(np.concatenate([row.history_hour, row.current_hour]), local.dt.hour.to_numpy()[:-1])
        np.testing.assert_array_equal(np.concatenate([row.history_day, row.current_day]),
                                      local.dt.day_of_week.to_numpy()[:-1])


def test_time_split_orders_targets(tmp_path):
    ci, pi, *_ = write_fixture(tmp_path, n_users=6, n_per_user=20)
    res = build_city(cfg(ci, pi, split="time"))
    n = {k: v.num_rows for k, v in res.windows.items()}
    assert n["train"] > n["test"] > 0 and n["validation"] > 0
    assert res.metadata["split_boundaries"]["validation_from"] <= res.metadata["split_boundaries"]["test_from"]


def test_load_cities_concatenates(tmp_path):
    ci, pi, *_ = write_fixture(tmp_path)
    build_and_save(cfg(ci, pi, tmp_path / "all" / "a", city="a"))
    build_and_save(cfg(ci, pi, tmp_path / "all" / "b", city="b"))
    multi = load_cities([tmp_path / "all" / "a", tmp_path / "all" / "b"])
    assert set(multi.cities) == {"a", "b"}
    assert multi.splits["train"].num_rows == 2 * multi["a"].splits["train"].num_rows
    assert set(multi.splits["train"]["city"][:]) == {"a", "b"}
    same = load_cities(tmp_path / "all")  # a folder of cities
    assert set(same.cities) == {"a", "b"}
    assert set(load_cities([str(tmp_path / "all")]).cities) == {"a", "b"}
    assert load_city_splits(tmp_path / "all", city="b").name == "b"
    with pytest.raises(ValueError, match="several cities"):
        load_city_splits(tmp_path / "all")
    build_and_save(cfg(ci, pi, tmp_path / "c", city="c", history_length=3))
    with pytest.raises(ValueError, match="history_length"):
        load_cities([tmp_path / "all" / "a", tmp_path / "c"])


def test_retriever_uses_model_class(tmp_path):
    """A loaded city's retriever is the class the model ships and saves beside its weights, holding the city's cells
    and the statistics of city.json."""
    from nextlocllm_hf.modeling.retrieval_nextlocllm import CityRetriever

    ci, pi, *_ = write_fixture(tmp_path)
    build_and_save(cfg(ci, pi, tmp_path / "city"))
    city = load_city_splits(tmp_path / "city")
    retriever = city.retriever
    assert type(retriever) is CityRetriever and retriever.name == "tiny"
    cells = city.cells
    np.testing.assert_array_equal(retriever.cell_ids, cells["cell_id"].to_numpy())
    np.testing.assert_array_equal(retriever.xy, cells[["x", "y"]].to_numpy())
    np.testing.assert_array_equal(retriever.latlon, cells[["lat", "lon"]].to_numpy())
    np.testing.assert_array_equal(retriever.poi_frequency, np.stack(cells["poi_frequency"].to_list()))
    assert retriever.coordinate_mean.tolist() == city.metadata["coordinate_mean"]
    assert retriever.coordinate_std.tolist() == city.metadata["coordinate_std"]
    assert retriever.grid.to_dict() == city.metadata["grid"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_city_splits(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="city.json"):
        load_city_splits(tmp_path / "empty")
