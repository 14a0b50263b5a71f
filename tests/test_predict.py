"""The inference CLI: records -> the training pipeline's exact features -> the same top-k as `model.predict`."""

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
from conftest import build_model, random_cells
from transformers import AutoModel

from nextlocllm_hf import CityRetriever, NextLocLLMConfig
from nextlocllm_hf.batching import CitySamples
from nextlocllm_hf.data import BuildConfig, build_and_save, load_city_splits
from nextlocllm_hf.data.projection import lonlat_to_mercator, mercator_to_lonlat
from nextlocllm_hf.data.synthetic import SyntheticCityParams, generate_synthetic_city
from nextlocllm_hf.predict import main, model_inputs_from_records, predict_next, prepare_records, read_records

CITY = "synth-p"
SEED = 3
SYNTHETIC = {"n_users": 6, "records_per_user": 40, "extent_km": 3.0}
H, L = 8, 3  # build_model's history/current lengths
K = 5


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("city")
    config = BuildConfig(city=CITY, format="synthetic", output=str(folder), seed=SEED, history_length=H,
                         current_length=L, synthetic=SYNTHETIC, show_progress=False)
    build_and_save(config)
    return str(folder)


@pytest.fixture(scope="module")
def models(tiny_backbone, city_dir, tmp_path_factory):
    """The same weights saved twice: with the city's retriever, and without any city (for --cells)."""
    model = build_model(tiny_backbone)
    folder = tmp_path_factory.mktemp("models")
    model.save_pretrained(folder / "bare")
    model.add_city(load_city_splits(city_dir).retriever())
    model.save_pretrained(folder / "with_city")
    return {"model": model, "bare": str(folder / "bare"), "with_city": str(folder / "with_city")}


def sample_and_records(city_dir: str, index: int = 0, task_mode: str = "next"):
    """A test sample of the built city and the raw records (oldest first) its H + L inputs were built from."""
    city = load_city_splits(city_dir)
    samples = CitySamples(city.splits["test"], {city.name: city.metadata}, task_mode=task_mode)
    sample = samples[index]
    user = city.splits["test"][index]["user_id"]
    raw, _, _ = generate_synthetic_city(SyntheticCityParams(city=CITY, seed=SEED, **SYNTHETIC))
    raw = raw[raw["user_id"] == user].sort_values("ts", kind="stable").drop_duplicates(["ts", "lat", "lon"])
    xy = np.stack(lonlat_to_mercator(raw["lon"].to_numpy(), raw["lat"].to_numpy()), axis=1)
    inputs = np.concatenate([sample["history_coordinates"][0].numpy(), sample["current_coordinates"][0].numpy()])
    stride = BuildConfig.stride  # windows start at the user's first record, every `stride` records
    starts = [s for s in range(0, len(raw) - H - L, stride) if np.array_equal(xy[s:s + H + L], inputs)]
    assert starts, "the sample's window was not found among its user's raw records"
    return sample, raw.iloc[: starts[0] + H + L]


def write_csv(raw: pd.DataFrame, path, older: int = 3) -> str:
    """The window's records plus a few older ones, rows shuffled, in the documented CSV format."""
    rows = raw.iloc[-(H + L + older):]
    frame = pd.DataFrame({
        "latitude": rows["lat"].to_numpy(),
        "longitude": rows["lon"].to_numpy(),
        "local_time": pd.to_datetime(rows["local_ts"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy(),
    }).sample(frac=1.0, random_state=0)
    frame.to_csv(path, index=False)
    return str(path)


def printed_table(text: str) -> pd.DataFrame:
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "cell_id"])
    body = [line.split() for line in lines[header + 1:] if line.strip() and line.split()[0].isdigit()]
    return pd.DataFrame(body, columns=lines[header].split()).astype(
        {"rank": int, "cell_id": int, "lat": float, "lon": float, "distance_m": float}
    )


def test_cli_builds_the_training_features_and_ranks_like_model_predict(models, city_dir, tmp_path, capsys):
    sample, raw = sample_and_records(city_dir)
    csv = write_csv(raw, tmp_path / "user.csv")
    plot = tmp_path / "prediction.png"
    main(["--model", models["with_city"], "--city", CITY, "--input", csv, "--k", str(K), "--plot", str(plot)])
    printed = capsys.readouterr().out

    # Features: the same numbers the dataset builder put in the sample.
    model = AutoModel.from_pretrained(models["with_city"])
    prepared = prepare_records(read_records(csv), model.retriever(CITY), model.config)
    for part, rows in (("history", slice(0, H)), ("current", slice(H, H + L))):
        part_rows = prepared.iloc[rows]
        np.testing.assert_array_equal(part_rows[["x", "y"]].to_numpy(), sample[f"{part}_coordinates"][0].numpy())
        np.testing.assert_array_equal(part_rows["day"].to_numpy(), sample[f"{part}_day"][0].numpy())
        np.testing.assert_array_equal(part_rows["hour"].to_numpy(), sample[f"{part}_hour"][0].numpy())
        np.testing.assert_array_equal(part_rows["duration"].to_numpy(), sample[f"{part}_duration"][0].numpy())
        np.testing.assert_array_equal(np.stack(part_rows["poi"].to_list()), sample[f"{part}_poi"][0].numpy())
        np.testing.assert_array_equal(part_rows["cell_id"].to_numpy(), sample[f"{part}_cell"][0].numpy())

    # Output: the model's own ranking of the builder's sample.
    expected = model.predict(sample, city=CITY, k=K)
    table = printed_table(printed)
    assert table["rank"].tolist() == list(range(1, K + 1))
    assert table["cell_id"].tolist() == expected.top_k_cells[0].tolist()
    assert (np.diff(table["distance_m"]) >= -0.1).all()  # rounding to 0.1 m; ground and Mercator order agree
    lon, lat = mercator_to_lonlat(*expected.coordinates[0].numpy())
    assert f"predicted next position: lat {lat:.6f}, lon {lon:.6f}" in printed
    assert f"{H + L} records used ({H} history + {L} current)" in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zero_shot_cells_folder_gives_the_same_table(models, city_dir, tmp_path, capsys):
    _, raw = sample_and_records(city_dir)
    csv = write_csv(raw, tmp_path / "user.csv")
    main(["--model", models["with_city"], "--city", CITY, "--input", csv, "--k", str(K)])
    known = capsys.readouterr().out
    main(["--model", models["bare"], "--city", CITY, "--input", csv, "--k", str(K), "--cells", city_dir])
    assert capsys.readouterr().out == known


def test_python_api_returns_the_table(models, city_dir, tmp_path):
    _, raw = sample_and_records(city_dir)
    csv = write_csv(raw, tmp_path / "user.csv")
    table = predict_next(models["model"], CITY, pd.read_csv(csv), k=K)
    assert list(table.columns) == ["rank", "cell_id", "lat", "lon", "distance_m"]
    assert len(table) == K and table.attrs["city"] == CITY
    assert {"predicted_lat", "predicted_lon"} <= set(table.attrs)


# --------------------------------------------------------------------------------------------- record rules
def grid_retriever(name: str = "grid") -> CityRetriever:
    """conftest's 500 m cells with holes, lat/lon made consistent with x/y (inverse Web Mercator)."""
    cells = random_cells(40, seed=5)
    lon, lat = mercator_to_lonlat(cells["x"].to_numpy(), cells["y"].to_numpy())
    cells = cells.assign(lat=lat, lon=lon)
    return CityRetriever.from_cells(name, cells, cells[["x", "y"]].mean(), cells[["x", "y"]].std())


def latlon_in(retriever: CityRetriever, x: float, y: float) -> tuple[float, float]:
    lon, lat = mercator_to_lonlat(x, y)
    return float(lat), float(lon)


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


# ------------------------------------------------------------------------------------------------ bad input
def records_frame(retriever: CityRetriever, n: int = 12) -> pd.DataFrame:
    latlon = [latlon_in(retriever, *retriever.xy[i % retriever.num_cells]) for i in range(n)]
    times = pd.date_range("2024-03-04 08:00", periods=n, freq="90min").strftime("%Y-%m-%d %H:%M:%S")
    return pd.DataFrame({"latitude": [p[0] for p in latlon], "longitude": [p[1] for p in latlon], "local_time": times})


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


def test_bad_requests_raise_before_the_model_runs(models):
    model = models["model"]
    retriever = model.retriever(CITY)
    frame = records_frame(retriever)
    with pytest.raises(ValueError, match=r"city='atlantis' is unknown to this model; known cities: \['synth-p'\]"):
        predict_next(model, "atlantis", frame)
    with pytest.raises(ValueError, match=rf"k={retriever.num_cells + 1}: expected an integer from 1 to the"):
        predict_next(model, CITY, frame, k=retriever.num_cells + 1)
    with pytest.raises(ValueError, match=r"trained for task_mode='next'.*drop --at"):
        predict_next(model, CITY, frame, at="2024-03-05 09:00")


def test_at_time_model_needs_a_time_after_the_records(tiny_backbone, city_dir):
    model = build_model(tiny_backbone, task_mode="at_time")
    model.add_city(load_city_splits(city_dir).retriever())
    frame = records_frame(model.retriever(CITY))
    last = pd.Timestamp(frame["local_time"].max())
    with pytest.raises(ValueError, match=r"trained for task_mode='at_time'.*--at"):
        predict_next(model, CITY, frame, k=3)
    with pytest.raises(ValueError, match="at='soon' is not an ISO 8601 time"):
        predict_next(model, CITY, frame, k=3, at="soon")
    with pytest.raises(ValueError, match=r"is 2.00 h before the last record"):
        predict_next(model, CITY, frame, k=3, at=str(last - pd.Timedelta(hours=2)))
    assert len(predict_next(model, CITY, frame, k=3, at=str(last + pd.Timedelta(hours=5)))) == 3


def test_at_time_query_is_the_day_hour_and_gap_of_the_given_time(tiny_backbone, city_dir):
    model = build_model(tiny_backbone, task_mode="at_time")
    retriever = load_city_splits(city_dir).retriever()
    frame = records_frame(retriever)
    prepared = prepare_records(read_records(frame), retriever, model.config)
    last = pd.Timestamp(prepared["local_time"].iloc[-1])
    at = (last + pd.Timedelta(hours=30)).floor("h")
    batch = model_inputs_from_records(prepared, model.config, str(at))
    assert batch["target_day"].item() == at.dayofweek and batch["target_hour"].item() == at.hour
    assert batch["target_time_gap"].item() == pytest.approx((at - last) / pd.Timedelta(hours=1), abs=1e-4)


def test_cli_at_time_builds_the_query_of_the_training_samples(tiny_backbone, city_dir, tmp_path, capsys):
    model = build_model(tiny_backbone, task_mode="at_time", head_type="point_ranker", max_candidates=16)
    model.add_city(load_city_splits(city_dir).retriever())
    model.save_pretrained(tmp_path / "at_time")
    sample, raw = sample_and_records(city_dir, index=1, task_mode="at_time")
    csv = write_csv(raw, tmp_path / "user.csv")
    # The time of the visit to predict, as a user would write it: the last record's local time plus the sample's gap.
    last = pd.to_datetime(raw["local_ts"].iloc[-1], unit="s")
    at = last + pd.Timedelta(seconds=round(float(sample["target_time_gap"][0]) * 3600))
    main(["--model", str(tmp_path / "at_time"), "--city", CITY, "--input", csv, "--k", str(K),
          "--at", at.strftime("%Y-%m-%d %H:%M:%S")])
    table = printed_table(capsys.readouterr().out)
    expected = AutoModel.from_pretrained(tmp_path / "at_time").predict(sample, city=CITY, k=K)
    assert table["cell_id"].tolist() == expected.top_k_cells[0].tolist()
    # the same model without --at
    assert main(["--model", str(tmp_path / "at_time"), "--city", CITY, "--input", csv]) == 2
    assert "trained for task_mode='at_time'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, content, message",
    [
        (["--city", "atlantis"], None, r"--city 'atlantis' is not a city of this model; its cities: \['synth-p'\]"),
        (["--city", CITY], "lat,lon\n40.0,-74.0\n", r"missing column 'local_time'"),
        (["--city", CITY, "--k", "0"], None, r"argument --k: expected an integer >= 1, got '0'"),
        (["--city", CITY, "--at", "2024-03-05 09:00"], None, r"trained for task_mode='next'.*drop --at"),
        (["--city", "other", "--cells", "CITY_DIR"], None, r"holds city 'synth-p', not --city 'other'"),
    ],
)
def test_cli_errors_are_usage_errors_without_traceback(models, city_dir, tmp_path, capsys, extra, content, message):
    csv = tmp_path / "user.csv"
    if content is None:
        records_frame(models["model"].retriever(CITY)).to_csv(csv, index=False)
    else:
        csv.write_text(content)
    extra = [city_dir if value == "CITY_DIR" else value for value in extra]
    assert exit_code(main, ["--model", models["with_city"], "--input", str(csv), *extra]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert re.search(message, error), error


def test_missing_input_file_is_a_usage_error(models, tmp_path, capsys):
    assert main(["--model", models["with_city"], "--city", CITY, "--input", str(tmp_path / "absent.csv")]) == 2
    assert "input file not found" in capsys.readouterr().err


def exit_code(command, argv) -> int:
    """The exit code of a CLI `main`: returned for a failed run, raised by argparse for a bad option."""
    try:
        return command(argv)
    except SystemExit as exit_info:
        return exit_info.code
