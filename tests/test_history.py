"""The user's whole history as candidate statistics (`modeling/history_nextlocllm.py`): the vectorized features against
a brute-force count, earlier cells as candidates, and the stored past of a window, which ends at its last input."""

import math

import numpy as np
import pyarrow as pa
import pytest
from conftest import make_retriever

from nextlocllm_hf.columns import rows_to_arrays
from nextlocllm_hf.data import BuildConfig, build_and_save, load_city_splits
from nextlocllm_hf.modeling.candidates_nextlocllm import build_candidates, candidate_feature_names, hour_distance
from nextlocllm_hf.modeling.history_nextlocllm import HISTORY_FEATURES, PAST_COLUMNS, history_feature_names

H, L = 6, 2


def random_history_batch(retriever, seed: int, batch_size: int = 6, task_mode: str = "at_time") -> dict:
    """Samples whose past (left-padded, 8..70 records on a few favourite cells) ends with their window's records."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(H + L, 70, batch_size)
    width = int(lengths.max())
    batch = {name: np.zeros((batch_size, width), dtype=np.int64) for name in ("past_cell", "past_day", "past_hour")}
    batch["past_cell"][:] = -1
    batch["past_hours_ago"] = np.zeros((batch_size, width), dtype=np.float32)
    batch["past_mask"] = np.zeros((batch_size, width), dtype=bool)
    for part in ("history", "current"):
        for field in ("cell", "day", "hour"):
            batch[f"{part}_{field}"] = np.zeros((batch_size, H if part == "history" else L), dtype=np.int64)
        batch[f"{part}_coordinates"] = np.zeros((batch_size, H if part == "history" else L, 2))
    for b, length in enumerate(lengths):
        favourites = rng.choice(retriever.num_cells, 6, replace=False)
        rows = favourites[rng.integers(0, 6, length)]
        rows[rng.random(length) < 0.1] = rng.integers(0, retriever.num_cells)
        gaps = rng.exponential(20.0, length)
        hours_ago = np.r_[np.cumsum(gaps[::-1])[::-1][1:], 0.0]  # strictly decreasing to 0 at the last record
        columns = slice(width - length, width)
        batch["past_cell"][b, columns] = retriever.cell_ids[rows]
        batch["past_day"][b, columns] = rng.integers(0, 7, length)
        batch["past_hour"][b, columns] = rng.integers(0, 24, length)
        batch["past_hours_ago"][b, columns] = hours_ago
        batch["past_mask"][b, columns] = True
        for part, window in (("history", slice(width - H - L, width - L)), ("current", slice(width - L, width))):
            batch[f"{part}_cell"][b] = batch["past_cell"][b, window]
            batch[f"{part}_day"][b] = batch["past_day"][b, window]
            batch[f"{part}_hour"][b] = batch["past_hour"][b, window]
            batch[f"{part}_coordinates"][b] = retriever.xy[retriever.rows_of(batch[f"{part}_cell"][b])]
    if task_mode == "at_time":
        batch.update(target_day=rng.integers(0, 7, batch_size), target_hour=rng.integers(0, 24, batch_size),
                     target_time_gap=rng.exponential(3.0, batch_size))
    return batch


def brute_force(retriever, batch: dict, b: int, cell: int, query_day: int, query_hour: int) -> dict:
    """One candidate's history features, counted record by record."""
    real = batch["past_mask"][b]
    cells, days = batch["past_cell"][b][real], batch["past_day"][b][real]
    hours, ago = batch["past_hour"][b][real], batch["past_hours_ago"][b][real].astype(np.float64)
    visit = cells == cell
    near = hour_distance(hours, query_hour) <= 2
    daytype = (days >= 5) == (query_day >= 5)
    weekday = days == query_day
    span = ago.max() / 24

    def fraction(condition):
        return (visit & condition).sum() / max(condition.sum(), 1)

    successors = [cells[i + 1] for i in range(len(cells) - 1) if cells[i] == cells[-1]]
    poi = retriever.poi_frequency
    mix = sum(poi[retriever.rows_of([c])[0]] for c in cells[near]) if near.any() else np.zeros(poi.shape[1])
    own = poi[retriever.rows_of([cell])[0]]
    norm = np.linalg.norm(own) * np.linalg.norm(mix)
    window = np.r_[batch["history_cell"][b], batch["current_cell"][b]]
    return {
        "life_share": visit.sum() / len(cells),
        "life_log_visits": math.log1p(visit.sum()),
        "life_window_fraction": fraction(near),
        "life_daytype_fraction": fraction(daytype),
        "life_window_daytype_fraction": fraction(near & daytype),
        "life_weekday_fraction": fraction(weekday),
        "life_hour_distance": (hour_distance(hours[visit], query_hour).min() / 12) if visit.any() else 1.0,
        "life_log_days_since_last": math.log1p(ago[visit].min() / 24 if visit.any() else span + 1),
        "life_log_days_since_first": math.log1p(ago[visit].max() / 24 if visit.any() else 0.0),
        "life_log_days_visited": math.log1p(len(set(np.floor(ago[visit] / 24).astype(int).tolist()))),
        "life_markov_1": (sum(s == cell for s in successors) / len(successors)) if successors else 0.0,
        "life_log_visits_before_window": math.log1p(visit.sum() - (window == cell).sum()),
        "life_poi_affinity": float(own @ mix / norm) if norm > 0 else 0.0,
        "past_log_records": math.log1p(len(cells)),
        "past_log_cells": math.log1p(len(set(cells.tolist()))),
        "past_log_span_days": math.log1p(span),
    }


@pytest.mark.parametrize("task_mode", ["at_time", "next"])
def test_history_features_match_a_brute_force_count(task_mode):
    retriever = make_retriever("city", num_cells=30, seed=4)
    batch = random_history_batch(retriever, seed=5, task_mode=task_mode)
    candidates = build_candidates(retriever, batch, task_mode, neighbors=3, max_candidates=40, history=True)
    names = candidate_feature_names(5, task_mode, history=True)
    features = {name: candidates.features[..., names.index(name)] for name in HISTORY_FEATURES}
    if task_mode == "at_time":
        query_day, query_hour = batch["target_day"], batch["target_hour"]
    else:  # the present: the last record's day and hour
        query_day, query_hour = batch["current_day"][:, -1], batch["current_hour"][:, -1]
    checked = 0
    for b in range(len(query_day)):
        for m in np.flatnonzero(candidates.mask[b]):
            expected = brute_force(retriever, batch, b, candidates.cell_ids[b, m], query_day[b], query_hour[b])
            for name, value in expected.items():
                assert features[name][b, m] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, b, m)
            checked += 1
        visits = np.array([(batch["past_cell"][b][batch["past_mask"][b]] == c).sum()
                           for c in candidates.cell_ids[b][candidates.mask[b]]])
        rank = np.argsort(-visits, kind="stable").argsort()
        np.testing.assert_allclose(features["life_log_rank"][b][candidates.mask[b]], np.log1p(rank + 1), rtol=1e-6)
    assert checked > 40


def test_earlier_cells_become_candidates_after_the_window_and_the_neighbours():
    retriever = make_retriever("city", num_cells=30, seed=4)
    batch = random_history_batch(retriever, seed=6)
    window_only = build_candidates(retriever, batch, "at_time", neighbors=3, max_candidates=60)
    with_history = build_candidates(retriever, batch, "at_time", neighbors=3, max_candidates=60, history=True)
    for b in range(len(batch["past_cell"])):
        first = window_only.cell_ids[b][window_only.mask[b]]
        listed = with_history.cell_ids[b][with_history.mask[b]]
        np.testing.assert_array_equal(listed[:len(first)], first)  # the window's cells and neighbours keep their place
        past = batch["past_cell"][b][batch["past_mask"][b]]
        assert set(listed) == set(first) | set(past.tolist())
        earlier = listed[len(first):]
        counts = [(past == cell).sum() for cell in earlier]
        assert counts == sorted(counts, reverse=True)  # most visited first


def test_without_time_features_the_history_keeps_its_untimed_statistics():
    assert history_feature_names(time_features=False) == [
        "life_share", "life_log_visits", "life_log_days_since_last", "life_log_days_since_first",
        "life_log_days_visited", "life_markov_1", "life_log_visits_before_window", "life_log_rank",
        "past_log_records", "past_log_cells", "past_log_span_days"]
    retriever = make_retriever("city", num_cells=30, seed=4)
    candidates = build_candidates(retriever, random_history_batch(retriever, seed=7), "at_time", 3, 40,
                                  time_features=False, history=True)
    assert candidates.features.shape[-1] == len(candidate_feature_names(5, "at_time", False, history=True))


@pytest.mark.parametrize("change, message", [
    (lambda batch: batch.pop("past_hours_ago"), "past_hours_ago"),
    (lambda batch: batch["past_mask"].__setitem__((0, -1), False), "past_mask must be True at each sample's last"),
    (lambda batch: batch["past_hours_ago"].__setitem__((0, -2), -1.0), "past_hours_ago holds -1.0"),
    (lambda batch: batch.update(past_cell=batch["past_cell"][:, 1:]), "past_\\* must all have shape"),
])
def test_a_bad_past_is_refused_naming_the_field(change, message):
    retriever = make_retriever("city", num_cells=30, seed=4)
    batch = random_history_batch(retriever, seed=8)
    change(batch)
    with pytest.raises(ValueError, match=message):
        build_candidates(retriever, batch, "at_time", 3, 40, history=True)


def test_the_stored_past_of_a_window_is_its_users_records_up_to_the_last_input(tmp_path):
    config = BuildConfig(city="c", format="synthetic", output=str(tmp_path / "c"), seed=3, history_length=H,
                         current_length=L, synthetic={"n_users": 4, "records_per_user": 80, "extent_km": 4.0})
    config.show_progress = False
    build_and_save(config)
    city = load_city_splits(str(tmp_path / "c"))
    split = city.splits["train"]
    # The records file read independently: one user's rows are contiguous and in time order.
    (records_file,) = (tmp_path / "c").glob("records-*.arrow")
    records = pa.ipc.open_stream(pa.memory_map(str(records_file), "r")).read_all().to_pandas()
    columns = ["start", "current_cell", *PAST_COLUMNS]
    for cap in (1000, 20):
        arrays = rows_to_arrays(split, columns, max_past_records=cap)
        for i in range(0, len(split), 7):
            last = int(arrays["start"][i]) + H + L - 1
            first = int(np.flatnonzero(records["user_id"].to_numpy() == records["user_id"][last])[0])
            real = arrays["past_mask"][i]
            expected = records.iloc[max(first, last - cap + 1):last + 1]
            assert real.sum() == len(expected) and real[-len(expected):].all()
            np.testing.assert_array_equal(arrays["past_cell"][i][real], expected["cell"])
            np.testing.assert_array_equal(arrays["past_day"][i][real], expected["day"])
            np.testing.assert_array_equal(arrays["past_hour"][i][real], expected["hour"])
            hours = (records["ts"][last] - expected["ts"].to_numpy()) / 3600
            np.testing.assert_allclose(arrays["past_hours_ago"][i][real], hours, rtol=1e-6)
            # it ends at the last input record: nothing at or after the target
            assert arrays["past_cell"][i][-1] == arrays["current_cell"][i][-1]
            assert arrays["past_hours_ago"][i][-1] == 0


def test_a_history_model_reads_the_past_its_samples_carry_and_refuses_a_batch_without_it(tiny_backbone, city_dir):
    from conftest import build_model

    from nextlocllm_hf.batching import model_inputs
    from nextlocllm_hf.evaluate import model_samples
    from nextlocllm_hf.modeling.candidates_nextlocllm import candidate_feature_size

    city = load_city_splits(city_dir)
    model = build_model(tiny_backbone, head_type="point_ranker", regression_target="offset_from_last",
                        task_mode="at_time", candidate_history=True, max_past_records=30)
    model.add_city(city.retriever)
    samples = model_samples(model, city.splits["test"], {city.name: city.retriever})
    batch = samples[:4]
    assert batch["past_mask"].sum(dim=1).max() <= 30 and batch["past_mask"][:, -1].all()
    output = model(**model_inputs(batch, samples.city_names), top_k=3)
    assert model.candidate_scorer.num_features == candidate_feature_size(5, "at_time", history=True)
    assert output.top_k_cells.shape == (4, 3) and np.isfinite(output.loss.item())
    without = {name: value for name, value in model_inputs(batch, samples.city_names).items()
               if not name.startswith("past_")}
    with pytest.raises(ValueError, match="candidate_history reads the user's earlier records"):
        model(**without)
