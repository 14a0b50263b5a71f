"""The record -> feature rule (`modeling/records_nextlocllm.py`): raw records read, ordered and turned into the training
samples' features (durations, cells, clock, the at_time query), and bad records refused by name."""

import numpy as np
import pandas as pd
import pytest
from conftest import build_model, random_cells
from helpers import H, L, latlon_in, records_frame, sample_and_records

from nextlocllm_hf import CityRetriever, NextLocLLMConfig
from nextlocllm_hf.batching import CitySamples
from nextlocllm_hf.data import load_city_splits
from nextlocllm_hf.data.projection import mercator_to_lonlat
from nextlocllm_hf.modeling.records_nextlocllm import model_inputs_from_records, prepare_records, read_records


def grid_retriever(name: str = "grid") -> CityRetriever:
    """conftest's 500 m cells with holes, lat/lon made consistent with x/y (inverse Web Mercator)."""
    cells = random_cells(40, seed=5)
    lon, lat = mercator_to_lonlat(cells["x"].to_numpy(), cells["y"].to_numpy())
    cells = cells.assign(lat=lat, lon=lon)
    return CityRetriever.from_cells(name, cells, cells[["x", "y"]].mean(), cells[["x", "y"]].std())


def hole_centre(retriever: CityRetriever) -> tuple[float, float]:
    """Projected centre of an interior 500 m grid square that is not a candidate cell."""
    present = {tuple(v) for v in np.round(retriever.xy).astype(int)}
    xs, ys = np.unique(retriever.xy[:, 0]), np.unique(retriever.xy[:, 1])
    for x in xs[1:-1]:
        for y in ys[1:-1]:
            if (round(x), round(y)) not in present:
                return float(x), float(y)
    raise AssertionError("no interior hole")


def test_durations_cells_and_clock_follow_the_training_rules():
    retriever = grid_retriever()
    config = NextLocLLMConfig(history_length=3, current_length=2)
    a, b, c, d = (retriever.xy[i] for i in range(4))
    hole = hole_centre(retriever)
    points = [a, a + [200.0, -240.0], hole, b, c, d]  # jitter stays inside a's 500 m square
    times = ["2024-01-01 07:00", "2024-01-01 08:00", "2024-01-01 09:00", "2024-01-02 15:00", "2024-01-02 17:30",
             "2024-01-02 18:00"]
    rows = [(*latlon_in(retriever, *p), t) for p, t in zip(points, times)]
    frame = pd.DataFrame(rows, columns=["Lat", "lng", "timestamp"])
    frame["duration"] = [np.nan, np.nan, np.nan, np.nan, 0.75, 9.0]  # the last record's value is never used
    frame = pd.concat([frame, frame.iloc[[3]]]).iloc[::-1]  # an exact duplicate, newest first

    prepared = prepare_records(read_records(frame), retriever, config)

    assert prepared["part"].tolist() == ["history"] * 3 + ["current"] * 2
    local = pd.to_datetime(pd.Series(times[1:]))
    assert prepared["day"].tolist() == local.dt.dayofweek.tolist()  # 0 = Monday
    assert prepared["hour"].tolist() == local.dt.hour.tolist()
    # gaps 1 h, 30 h clipped to 24 h, 2.5 h, a given 0.75 h; the last = median of those four
    np.testing.assert_allclose(prepared["duration"], [1.0, 24.0, 2.5, 0.75, 1.75])
    assert prepared["duration"].dtype == np.float32
    ids = retriever.cell_ids
    assert prepared["cell_id"].tolist() == [ids[0], -1, ids[1], ids[2], ids[3]]
    np.testing.assert_array_equal(prepared["poi"].iloc[0], retriever.poi_frequency[0])
    np.testing.assert_array_equal(prepared["poi"].iloc[1], np.zeros(5, dtype=np.float32))
    np.testing.assert_allclose(prepared[["x", "y"]].to_numpy()[2:], np.stack([b, c, d]), atol=1e-6)


def test_utc_offsets_order_by_instant_and_keep_the_wall_clock():
    retriever = grid_retriever()
    lat, lon = latlon_in(retriever, *retriever.xy[0])
    frame = pd.DataFrame({
        "latitude": [lat] * 3,
        "longitude": [lon] * 3,
        "local_time": ["2024-01-01T10:00:00+02:00", "2024-01-01T09:30:00+00:00", "2024-01-01T23:30:00-05:00"],
    })
    prepared = prepare_records(read_records(frame), retriever, NextLocLLMConfig(history_length=2, current_length=1))
    assert prepared["hour"].tolist() == [10, 9, 23]  # local clocks as written, in instant order
    np.testing.assert_allclose(prepared["duration"], [1.5, 19.0, 10.25])  # 08:00Z -> 09:30Z -> 04:30Z next day


def test_at_time_query_is_the_day_hour_and_gap_of_the_given_time(tiny_backbone, city_dir):
    model = build_model(tiny_backbone, task_mode="at_time")
    retriever = load_city_splits(city_dir).retriever
    frame = records_frame(retriever)
    prepared = prepare_records(read_records(frame), retriever, model.config)
    last = pd.Timestamp(prepared["local_time"].iloc[-1])
    at = (last + pd.Timedelta(hours=30)).floor("h")
    batch = model_inputs_from_records(prepared, model.config, str(at))
    assert batch["target_day"].item() == at.dayofweek and batch["target_hour"].item() == at.hour
    assert batch["target_time_gap"].item() == pytest.approx((at - last) / pd.Timedelta(hours=1), abs=1e-4)


# ------------------------------------------------------------------------------------------------ bad input
def with_value(column: str, value, row: int = 1):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: object})
        frame.loc[row, column] = value
        return frame

    return change


BAD_INPUTS = {
    "missing column": (lambda f: f.drop(columns="latitude"), r"missing column 'latitude' \(also accepted: lat\)"),
    "two latitude columns": (lambda f: f.assign(lat=f["latitude"]), r"columns \['latitude', 'lat'\] all name"),
    "unparseable time": (with_value("local_time", "03/04/2024 8am"),
                         r"data row 2: local_time='03/04/2024 8am' is not an ISO 8601 time"),
    "empty time": (with_value("local_time", None), r"data row 2: local_time is empty"),
    "epoch numbers": (lambda f: f.assign(local_time=np.arange(len(f)) * 3600 + 1_700_000_000),
                      r"column 'local_time' holds numbers"),
    "mixed offsets": (with_value("local_time", "2024-03-04T09:00:00+01:00"), r"mixes times with and without"),
    "latitude out of range": (with_value("latitude", 91.5), r"data row 2: latitude=91.5 is outside \[-85.0511"),
    "longitude out of range": (with_value("longitude", -190.0),
                               r"data row 2: longitude=-190.0 is outside \[-180, 180\]"),
    "latitude not a number": (with_value("latitude", "north"), r"data row 2: latitude='north' is not a finite number"),
    "zero position": (lambda f: f.assign(latitude=0.0, longitude=0.0), r"data row 1: latitude=0, longitude=0"),
    "negative duration": (lambda f: f.assign(duration_hours=-1.0), r"data row 1: duration_hours=-1.0 is negative"),
    "several users": (lambda f: f.assign(user_id=["u1", "u2"] * (len(f) // 2)),
                      r"'user_id' holds 2 users \('u1', 'u2'\)"),
    "too few records": (lambda f: f.iloc[:10],
                        r"10 records .* needs history_length \+ current_length = 8 \+ 3 = 11 records"),
    "outside the city": (with_value("latitude", 10.0, row=11),
                         r"data row 12: latitude=10.0, .* lies outside city 'grid'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_records_raise_a_value_error_naming_the_field(case):
    retriever = grid_retriever()
    change, message = BAD_INPUTS[case]
    frame = change(records_frame(retriever))
    with pytest.raises(ValueError, match=message):
        prepare_records(read_records(frame), retriever, NextLocLLMConfig(history_length=H, current_length=L))


def test_a_history_models_past_from_records_is_the_stored_past_of_the_same_window(city_dir):
    """At inference every record the user gives is read, by the same rule as the stored samples' past."""
    config = NextLocLLMConfig(history_length=H, current_length=L, candidate_history=True, max_past_records=25)
    city = load_city_splits(city_dir)
    for index in (0, 5):
        sample, raw = sample_and_records(city_dir, index)
        stored = CitySamples(city.splits["test"], {city.name: city.retriever}, history=True,
                             max_past_records=25)[index]
        frame = pd.DataFrame({"latitude": raw["lat"].to_numpy(), "longitude": raw["lon"].to_numpy(),
                              "local_time": pd.to_datetime(raw["local_ts"], unit="s").dt.strftime(
                                  "%Y-%m-%d %H:%M:%S").to_numpy()})
        prepared = prepare_records(read_records(frame), city.retriever, config)
        assert prepared["part"].tolist() == (["earlier"] * (min(len(raw), 25) - H - L) + ["history"] * H
                                             + ["current"] * L)
        batch = model_inputs_from_records(prepared, config)
        real = stored["past_mask"][0].numpy()
        assert batch["past_mask"][0].sum() == real.sum() == min(len(raw), 25)
        for name in ("past_cell", "past_day", "past_hour"):
            np.testing.assert_array_equal(batch[name][0][batch["past_mask"][0]].numpy(), stored[name][0][real].numpy())
        np.testing.assert_allclose(batch["past_hours_ago"][0][batch["past_mask"][0]].numpy(),
                                   stored["past_hours_ago"][0][real].numpy(), atol=1e-3)
