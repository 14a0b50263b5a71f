"""Answers a person can read (issue 26): rows cut from a check-in file in the project's layout (`calgary_checkins.csv`:
`user_id, venue_id, category_name, root_category, latitude, longitude, utc_time, local_time, tz_offset_min, weekday,
hour`), user column kept, go through the predict CLI and print one table per user: each cell's probability, its
distance from the last record, its POI class mix and its venue categories, checked here against brute-force counts of
the check-ins; the held-out last visit is marked; the CLI prints what the pipeline returns."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import build_model, save_tiny_backbone
from helpers import H, L, great_circle_m, printed_tables, sample_and_records, write_csv
from transformers import AutoModel, pipeline

from nextlocllm_hf import CityRetriever
from nextlocllm_hf.data import BuildConfig, build_and_save, load_city_splits
from nextlocllm_hf.data.projection import lonlat_to_mercator
from nextlocllm_hf.data.synthetic import SyntheticCityParams, generate_synthetic_city
from nextlocllm_hf.modeling.pipeline_nextlocllm import TASK
from nextlocllm_hf.modeling.records_nextlocllm import model_inputs_from_records, parse_records, prepare_records
from nextlocllm_hf.predict import format_prediction, main

CITY, K = "checkins", 5
# Foursquare category names of each POI class (nextlocllm_hf/data/mappings/foursquare.json), and a root category.
CATEGORIES = {"Entertainment": ("Bar", "Park"), "Commercial": ("Coffee Shop", "Office"), "Education": ("University",),
              "Public Service": ("Hospital", "Post Office"), "Residential": ("Home (private)",)}
ROOTS = {"Entertainment": "Nightlife Spot", "Commercial": "Food", "Education": "College & University",
         "Public Service": "Professional & Other Places", "Residential": "Residence"}
CLASS_OF = {name: poi_class for poi_class, names in CATEGORIES.items() for name in names}
CLASSES = list(CATEGORIES)


def checkin_layout(raw: pd.DataFrame) -> pd.DataFrame:
    """Synthetic check-ins in the column layout of the project's check-in files, sorted by user, then time; numeric
    user ids as there, and a category name per venue from its POI class."""
    users = {user: 500 + index for index, user in enumerate(sorted(raw["user_id"].unique()))}
    venue = raw["venue_id"].astype(int).to_numpy()
    utc, local = pd.to_datetime(raw["ts"], unit="s"), pd.to_datetime(raw["local_ts"], unit="s")
    frame = pd.DataFrame({
        "user_id": raw["user_id"].map(users).to_numpy(),
        "venue_id": ("v" + raw["venue_id"].astype(str)).to_numpy(),
        "category_name": [CATEGORIES[c][v % len(CATEGORIES[c])] for c, v in zip(raw["category"], venue)],
        "root_category": raw["category"].map(ROOTS).to_numpy(),
        "latitude": raw["lat"].round(6).to_numpy(),
        "longitude": raw["lon"].round(6).to_numpy(),
        "utc_time": utc.dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy(),
        "local_time": local.dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy(),
        "tz_offset_min": ((raw["local_ts"] - raw["ts"]) // 60).to_numpy(),
        "weekday": local.dt.weekday.to_numpy(),
        "hour": local.dt.hour.to_numpy(),
    })
    return frame.sort_values(["user_id", "utc_time"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def checkins(tmp_path_factory) -> dict:
    """A check-in file, the city built from it, and models saved with that city: the candidate ranker (point and
    offset head), the paper's point head and a mixture."""
    root = tmp_path_factory.mktemp("checkins")
    raw, _, _ = generate_synthetic_city(SyntheticCityParams(city=CITY, seed=5, n_users=5, records_per_user=40,
                                                            extent_km=3.0))
    frame = checkin_layout(raw)
    frame.to_csv(root / "checkins.csv", index=False)
    build_and_save(BuildConfig(city=CITY, format="foursquare", input=str(root / "checkins.csv"),
                               output=str(root / "city"), history_length=H, current_length=L, show_progress=False))
    backbone = save_tiny_backbone(root / "backbone")
    retriever = load_city_splits(root / "city").retriever
    models = {}
    for name, settings in {"ranker": {"head_type": "point_ranker", "max_candidates": 16,
                                      "regression_target": "offset_from_last"},
                           "point": {}, "mixture": {"head_type": "mixture"}}.items():
        model = build_model(backbone, **settings)
        model.add_city(retriever)
        model.save_pretrained(root / name)
        models[name] = str(root / name)
    return {"root": root, "frame": frame, "city": str(root / "city"), "models": models}


def cli(capsys, *argv) -> str:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def venue_cells(frame: pd.DataFrame, retriever: CityRetriever) -> pd.DataFrame:
    """Each venue once with its category name and the id of the candidate cell holding it (brute force over the
    check-ins, not the builder's cells table)."""
    venues = frame.drop_duplicates("venue_id")
    x, y = lonlat_to_mercator(venues["longitude"].to_numpy(), venues["latitude"].to_numpy())
    rows, _ = retriever.locate(np.stack([x, y], axis=1))
    return venues.assign(cell_id=retriever.cell_ids[rows])


def expected_texts(venues: pd.DataFrame, cell: int) -> tuple[str, str]:
    """The table's `poi_mix` and `top_categories` texts of `cell`, counted from its venues."""
    names = Counter(venues.loc[venues["cell_id"] == cell, "category_name"])
    classes = Counter(CLASS_OF[name] for name in names.elements())
    total = sum(classes.values())
    by_share = sorted(classes, key=lambda c: (-classes[c], CLASSES.index(c)))[:3]
    mix = ", ".join(f"{c} {classes[c] / total:.0%}" for c in by_share) or "-"
    return mix, ", ".join(sorted(names, key=lambda n: (-names[n], n))[:3]) or "-"


def test_rows_cut_from_the_checkin_file_print_the_readable_table(checkins, tmp_path, capsys):
    """The acceptance case: one user's rows as cut from the check-in file, user column kept, through the CLI."""
    frame = checkins["frame"]
    user = frame["user_id"].iloc[0]
    rows = frame[frame["user_id"] == user]
    rows.to_csv(tmp_path / "user.csv", index=False)
    plot = tmp_path / "next.png"
    printed = cli(capsys, "--model", checkins["models"]["ranker"], "--city", CITY, "--input",
                  str(tmp_path / "user.csv"), "--k", str(K), "--hold_out_last", "--plot", str(plot))
    [table] = printed_tables(printed)
    model = AutoModel.from_pretrained(checkins["models"]["ranker"])
    retriever = model.retriever(CITY)

    # Who and what: the user heads the table; the last record read is the one before the held-out visit.
    before, held = rows.iloc[:-1], rows.iloc[-1]
    assert printed.startswith(f"user {user}, city '{CITY}': ")
    assert re.search(rf"records read \((\d+ earlier \+ )?{H} history \+ {L} current\), .* \.\. "
                     rf"{before['local_time'].iloc[-1]}\n", printed), printed
    assert f"last record: {before['local_time'].iloc[-1]} at lat {before['latitude'].iloc[-1]:.6f}" in printed
    assert table["rank"].tolist() == list(range(1, K + 1))

    # Distances from the last record to the cell centres.
    centres = retriever.latlon[retriever.rows_of(table["cell_id"])]
    np.testing.assert_allclose(table["distance_from_last_m"], great_circle_m(
        before["latitude"].iloc[-1], before["longitude"].iloc[-1], centres[:, 0], centres[:, 1]), atol=0.051)

    # Probabilities: the softmax of the ranker's scores over its candidates, as model.predict gives them.
    prepared = prepare_records(parse_records(before.reset_index(drop=True)), retriever, model.config)
    output = model.predict(model_inputs_from_records(prepared, model.config), city=CITY, k=K)
    candidates, scores = output.candidate_cells[0].numpy(), output.candidate_scores[0].double().numpy()
    softmax = np.exp(scores[candidates >= 0] - scores[candidates >= 0].max())
    by_cell = dict(zip(candidates[candidates >= 0], softmax / softmax.sum()))
    assert table["cell_id"].tolist() == output.top_k_cells[0].tolist()
    np.testing.assert_allclose(table["probability"], [by_cell.get(c, 0.0) for c in table["cell_id"]], atol=5e-4)
    assert (np.diff(table["probability"]) <= 1e-3).all() and table["probability"].sum() <= 1 + 3e-3
    assert f"softmax of the candidate ranker's scores over its {len(by_cell)} candidate cells" in printed

    # Class mix and venue categories, counted from the check-ins' venues.
    venues = venue_cells(frame, retriever)
    for cell, mix, names in zip(table["cell_id"], table["poi_mix"], table["top_categories"]):
        assert (mix, names) == expected_texts(venues, cell), cell
    assert (table["top_categories"] != "-").any()

    # The held-out visit: its cell and its rank in the table.
    x, y = lonlat_to_mercator(held["longitude"], held["latitude"])
    held_cell = int(retriever.cell_ids[retriever.locate(np.array([[x, y]]))[0][0]])
    ranks = table.index[table["cell_id"] == held_cell].tolist()
    verdict = f"hit at rank {ranks[0] + 1} of {K}" if ranks else f"not in the top-{K}"
    assert (f"true next visit (held out): {held['local_time']} at lat {held['latitude']:.6f}, lon "
            f"{held['longitude']:.6f}, cell {held_cell}: {verdict}") in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_user_column_gives_one_table_per_user_as_the_pipeline_returns(checkins, tmp_path, capsys):
    """Several users' rows, interleaved: one table per user, each what that user's rows alone give, and each the
    pipeline's result as `format_prediction` writes it."""
    frame = checkins["frame"]
    users = frame["user_id"].unique()[:3]
    mixed = frame[frame["user_id"].isin(users)].sample(frac=1.0, random_state=1)
    mixed.to_csv(tmp_path / "users.csv", index=False)
    model = checkins["models"]["ranker"]
    printed = cli(capsys, "--model", model, "--city", CITY, "--input", str(tmp_path / "users.csv"), "--k", str(K))
    blocks = printed.rstrip("\n").split("\n\n")
    assert [block.split(",")[0] for block in blocks] == [f"user {user}" for user in mixed["user_id"].unique()]
    results = pipeline(TASK, model=AutoModel.from_pretrained(model))(str(tmp_path / "users.csv"), k=K)
    assert [format_prediction(result) for result in results] == blocks
    for user, result, table in zip(mixed["user_id"].unique(), results, printed_tables(printed)):
        assert result["user"] == user
        assert_same_table(pd.DataFrame(result["cells"]), table)
        frame[frame["user_id"] == user].to_csv(tmp_path / "one.csv", index=False)
        alone = cli(capsys, "--model", model, "--city", CITY, "--input", str(tmp_path / "one.csv"), "--k", str(K))
        assert alone.splitlines()[:2] == format_prediction(result).splitlines()[:2]  # who, what was read, last record
        assert_same_table(printed_tables(alone)[0], table)


def assert_same_table(cells: pd.DataFrame, table: pd.DataFrame) -> None:
    """The same cells and texts, positions and distances as printed; the model's numbers up to the last digit printed
    (a batch of one and of three may round apart)."""
    assert cells["cell_id"].tolist() == table["cell_id"].tolist()
    for column, digits in (("lat", 6), ("lon", 6), ("distance_from_last_m", 1)):
        assert [f"{v:.{digits}f}" for v in cells[column]] == [f"{v:.{digits}f}" for v in table[column]]
    for column in ("probability", "score"):
        np.testing.assert_allclose(cells[column], table[column], rtol=0, atol=1.01e-3)


def test_each_head_says_what_its_probability_is(checkins):
    """Listing every cell: the ranker's probabilities are a distribution over its candidates (0 past them), the
    mixture's over the city's cells; the paper's point head gives none."""
    rows = checkins["frame"][checkins["frame"]["user_id"] == checkins["frame"]["user_id"].iloc[0]]
    every = load_city_splits(checkins["city"]).retriever.num_cells
    results = {name: pipeline(TASK, model=AutoModel.from_pretrained(path))(rows, k=every)[0]
               for name, path in checkins["models"].items()}
    ranker = pd.DataFrame(results["ranker"]["cells"])
    assert ranker["probability"].sum() == pytest.approx(1.0)
    scored = ranker["score"].notna()  # the candidates; the rest were listed by the position head
    assert (ranker.loc[~scored, "probability"] == 0).all() and (ranker.loc[scored, "probability"] > 0).all()
    mixture = pd.DataFrame(results["mixture"]["cells"])
    assert mixture["probability"].sum() == pytest.approx(1.0)
    assert (np.diff(mixture["probability"]) <= 1e-12).all()  # ranked by density: by probability
    assert results["mixture"]["probability_basis"].startswith("the mixture's density")
    point = pd.DataFrame(results["point"]["cells"])
    assert point["probability"].isna().all() and results["point"]["probability_basis"] is None


def test_a_city_without_counts_or_category_names_shows_dashes(checkins, city_dir, tmp_path, capsys):
    """A city that keeps neither (built or saved before them; POIs with classes only) still predicts: `poi_mix` and
    `top_categories` are None, printed as `-`."""
    city = load_city_splits(city_dir)  # synthetic POIs: classes, no category names
    older = CityRetriever.from_city(city.metadata, city.cells.drop(columns=["poi_counts", "top_categories"]))
    assert older.poi_counts is None and older.top_categories is None
    model = AutoModel.from_pretrained(checkins["models"]["point"])
    model.add_city(older)
    model.save_pretrained(tmp_path / "older")
    write_csv(sample_and_records(city_dir)[1], tmp_path / "user.csv")
    printed = cli(capsys, "--model", str(tmp_path / "older"), "--city", city.name, "--input",
                  str(tmp_path / "user.csv"), "--k", "3")
    table = printed_tables(printed)[0]
    assert (table["poi_mix"] == "-").all() and (table["top_categories"] == "-").all()
    assert load_city_splits(city_dir).retriever.top_categories is None  # no names in the synthetic city


def test_hold_out_last_asks_an_at_time_model_about_the_held_out_visit(checkins, tmp_path):
    """An at_time model with `hold_out_last` predicts for the held-out visit's own time: the same cells as the
    records before it with that time as `at`; an explicit `at`, too few records and a non-boolean are refused."""
    frame = checkins["frame"]
    rows = frame[frame["user_id"] == frame["user_id"].iloc[1]].drop(columns="user_id")
    model = build_model(save_tiny_backbone(tmp_path / "backbone"), task_mode="at_time", head_type="point_ranker",
                        max_candidates=16)
    model.add_city(load_city_splits(checkins["city"]).retriever)
    predict = pipeline(TASK, model=model)
    held_out = predict(rows, k=K, hold_out_last=True)
    asked = predict(rows.iloc[:-1], k=K, at=rows["local_time"].iloc[-1])
    assert [c["cell_id"] for c in held_out["cells"]] == [c["cell_id"] for c in asked["cells"]]
    assert held_out["held_out"]["local_time"] == rows["local_time"].iloc[-1]
    assert held_out["last_record"] == asked["last_record"]
    with pytest.raises(ValueError, match=r"at='2030-01-01 08:00' \(--at\) with hold_out_last=True"):
        predict(rows, k=K, hold_out_last=True, at="2030-01-01 08:00")
    with pytest.raises(ValueError, match=rf"hold_out_last: {H + L} records .* leaves {H + L - 1}, but the model needs "
                                         rf"{H + L}; give at least {H + L + 1}"):
        predict(rows.iloc[:H + L], k=K, hold_out_last=True)
    with pytest.raises(ValueError, match=r"hold_out_last='yes': expected True or False"):
        predict(rows, k=K, hold_out_last="yes")
