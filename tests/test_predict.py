"""The inference CLI: records -> the training pipeline's exact features -> the same top-k as `model.predict`. The
record -> feature rule itself is tested in test_records.py."""

import re

import numpy as np
import pandas as pd
import pytest
from conftest import build_model
from helpers import H, INFERENCE_CITY, L, great_circle_m, printed_table, records_frame, sample_and_records, write_csv
from transformers import AutoModel

from nextlocllm_hf.data import load_city_splits
from nextlocllm_hf.data.projection import mercator_to_lonlat
from nextlocllm_hf.predict import main, predict_next, prepare_records, read_records

CITY = INFERENCE_CITY["city"]  # conftest's `city_dir`
K = 5


@pytest.fixture(scope="module")
def models(tiny_backbone, city_dir, tmp_path_factory):
    """The same weights saved twice: with the city's retriever, and without any city (for --cells)."""
    model = build_model(tiny_backbone)
    folder = tmp_path_factory.mktemp("models")
    model.save_pretrained(folder / "bare")
    model.add_city(load_city_splits(city_dir).retriever)
    model.save_pretrained(folder / "with_city")
    return {"model": model, "bare": str(folder / "bare"), "with_city": str(folder / "with_city")}


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

    # Output: the model's own ranking of the builder's sample, distances from the last record.
    expected = model.predict(sample, city=CITY, k=K)
    table = printed_table(printed)
    assert table["rank"].tolist() == list(range(1, K + 1))
    assert table["cell_id"].tolist() == expected.top_k_cells[0].tolist()
    last = raw.iloc[-1]
    centres = model.retriever(CITY).latlon[model.retriever(CITY).rows_of(table["cell_id"])]
    np.testing.assert_allclose(table["distance_from_last_m"],
                               great_circle_m(last["lat"], last["lon"], centres[:, 0], centres[:, 1]), atol=0.051)
    assert f"last record: {pd.Timestamp(last['local_ts'], unit='s')} at lat {last['lat']:.6f}" in printed
    lon, lat = mercator_to_lonlat(*expected.coordinates[0].numpy())
    assert f"regressed point (the position head's, not the answer): lat {lat:.6f}, lon {lon:.6f}" in printed
    assert re.search(rf"records read \((\d+ earlier \+ )?{H} history \+ {L} current\)", printed), printed
    assert table["probability"].isna().all()  # the paper's point head: a single point is no distribution
    assert "probability: none: a single regressed point is no distribution" in printed
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
    assert list(table.columns) == ["rank", "cell_id", "probability", "score", "distance_from_last_m", "lat", "lon",
                                   "poi_mix", "top_categories"]
    assert len(table) == K and table.attrs["city"] == CITY and table.attrs["user"] is None
    assert {"last_record", "regressed_point", "probability_basis"} <= set(table.attrs)
    assert "held_out" not in table.attrs


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
    model.add_city(load_city_splits(city_dir).retriever)
    frame = records_frame(model.retriever(CITY))
    last = pd.Timestamp(frame["local_time"].max())
    with pytest.raises(ValueError, match=r"trained for task_mode='at_time'.*--at"):
        predict_next(model, CITY, frame, k=3)
    with pytest.raises(ValueError, match="at='soon' is not an ISO 8601 time"):
        predict_next(model, CITY, frame, k=3, at="soon")
    with pytest.raises(ValueError, match=r"is 2.00 h before the last record"):
        predict_next(model, CITY, frame, k=3, at=str(last - pd.Timedelta(hours=2)))
    assert len(predict_next(model, CITY, frame, k=3, at=str(last + pd.Timedelta(hours=5)))) == 3


def test_cli_at_time_builds_the_query_of_the_training_samples(tiny_backbone, city_dir, tmp_path, capsys):
    model = build_model(tiny_backbone, task_mode="at_time", head_type="point_ranker", max_candidates=16)
    model.add_city(load_city_splits(city_dir).retriever)
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
