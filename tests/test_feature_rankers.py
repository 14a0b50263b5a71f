"""The learned rankers without a language model (gbdt_ranker, feature_mlp_ranker) on hand-made samples whose next cell
is decided by the query time: they must learn it, select on validation only, and rank a city they never saw."""

import io

import numpy as np
import pytest

from nextlocllm_hf import CityRetriever
from nextlocllm_hf.baselines import FeatureMLPRanker, GBDTRanker, rank_rule_baselines
from nextlocllm_hf.baselines.feature_rankers import hit_at_1

HISTORY, CURRENT = 8, 2


def grid_city(name: str, spacing: float, first_id: int) -> CityRetriever:
    """A 5 x 5 grid of cells `spacing` metres apart, ids from `first_id`, two POI classes."""
    index = np.arange(25)
    xy = np.stack([index % 5, index // 5], axis=1) * spacing + np.array([1.0e6, 5.0e6])
    poi = np.stack([index % 2, 1 - index % 2], axis=1).astype(np.float32)
    return CityRetriever(name, first_id + index, xy, np.zeros((25, 2)), poi, xy.mean(axis=0), xy.std(axis=0))


def routine_samples(city: CityRetriever, n: int, seed: int) -> dict:
    """Each sample's user has three places, visited at 0-3 h, 8-11 h and 16-19 h; the query names one of those
    times and the next cell is the place of that time. Visit counts do not tell which (places are drawn uniformly)."""
    rng = np.random.default_rng(seed)
    places = np.stack([rng.choice(25, 3, replace=False) for _ in range(n)])  # rows of the city's arrays
    which = rng.integers(0, 3, (n, HISTORY + CURRENT))
    rows = np.take_along_axis(places, which, axis=1)
    hours = 8 * which + rng.integers(0, 4, which.shape)
    query = rng.integers(0, 3, n)
    batch = {"city": np.array([city.name] * n)}
    for part, part_slice in (("history", slice(0, HISTORY)), ("current", slice(HISTORY, None))):
        batch[f"{part}_cell"] = city.cell_ids[rows[:, part_slice]]
        batch[f"{part}_coordinates"] = city.xy[rows[:, part_slice]]
        batch[f"{part}_day"] = np.zeros_like(rows[:, part_slice])
        batch[f"{part}_hour"] = hours[:, part_slice]
    target = places[np.arange(n), query]
    batch.update(target_cell=city.cell_ids[target], target_coordinates=city.xy[target],
                 target_day=np.zeros(n, dtype=np.int64), target_hour=8 * query + rng.integers(0, 4, n),
                 target_time_gap=rng.uniform(0.5, 6.0, n).astype(np.float32))
    return batch


@pytest.fixture(scope="module")
def cities():
    return grid_city("train-city", 500.0, 0), grid_city("new-city", 800.0, 1_000)


def hit1(ranked: np.ndarray, rows: dict) -> float:
    return float((ranked[:, 0] == rows["target_cell"]).mean())


@pytest.mark.parametrize("make", [lambda: GBDTRanker("at_time", max_iter=40, min_samples_leaf=5),
                                  lambda: FeatureMLPRanker("at_time", width=16, epochs=8, learning_rate=1e-2)])
def test_ranker_learns_the_time_routine_and_transfers(cities, make):
    city, new_city = cities
    train, validation = routine_samples(city, 400, 0), routine_samples(city, 150, 1)
    ranker = make().fit(train, validation, city)
    test_new = routine_samples(new_city, 200, 2)
    ranked = ranker.rank(test_new, new_city, k=5)
    assert ranked.shape == (200, 5) and set(ranked.ravel()) <= set(new_city.cell_ids.tolist())
    assert all(len(set(row)) == 5 for row in ranked.tolist())
    frequency = rank_rule_baselines(None, test_new, new_city, k=5, names=["most_frequent"])["most_frequent"]
    assert hit1(frequency, test_new) < 0.5  # counts alone cannot tell the places apart
    assert hit1(ranked, test_new) > 0.9  # the time-conditioned features can, zero-shot in another city


def test_gbdt_chooses_its_iterations_on_validation_and_refits_them_exactly(cities):
    city, _ = cities
    train, validation = routine_samples(city, 300, 3), routine_samples(city, 100, 4)
    ranker = GBDTRanker("at_time", max_iter=25, min_samples_leaf=5).fit(train, validation, city)
    assert len(ranker.validation_hit_at_1) == 25
    assert ranker.best_iteration == int(np.argmax(ranker.validation_hit_at_1)) + 1
    assert ranker.model.n_iter_ == ranker.best_iteration
    table = ranker.table(validation, city)
    assert hit_at_1(ranker.scores(table), table) == max(ranker.validation_hit_at_1)


def test_without_the_query_time_the_routine_cannot_be_learned(cities):
    city, _ = cities
    train, validation, test = (routine_samples(city, n, seed) for n, seed in ((300, 5), (100, 6), (200, 7)))
    ranker = GBDTRanker("next", max_iter=20, min_samples_leaf=5).fit(train, validation, city)
    assert hit1(ranker.rank(test, city, k=3), test) < 0.6


def test_feature_mlp_keeps_its_best_validation_epoch(cities):
    city, _ = cities
    train, validation = routine_samples(city, 300, 8), routine_samples(city, 100, 9)
    ranker = FeatureMLPRanker("at_time", width=8, epochs=4, patience=10).fit(train, validation, city)
    assert ranker.best_epoch == int(np.argmax(ranker.validation_hit_at_1)) + 1
    table = ranker.table(validation, city)
    assert hit_at_1(ranker.scores(table), table) == pytest.approx(max(ranker.validation_hit_at_1))


def test_ranker_errors_name_the_problem(cities):
    city, new_city = cities
    rows = routine_samples(city, 50, 10)
    with pytest.raises(RuntimeError, match="call fit"):
        GBDTRanker("at_time").rank(rows, city)
    with pytest.raises(ValueError, match="task_mode='later'"):
        GBDTRanker("later")
    fitted = GBDTRanker("at_time", max_iter=3, min_samples_leaf=5).fit(rows, rows, city)
    with pytest.raises(ValueError, match=r"k=26: expected an integer from 1 to the 25 cells of city 'train-city'"):
        fitted.rank(rows, city, k=26)
    with pytest.raises(ValueError, match=r"rows from cities \['train-city'\]; known: \['new-city'\]"):
        fitted.table(rows, {"new-city": new_city})
    no_target = {**rows, "target_cell": rows["target_cell"] + 500}
    with pytest.raises(ValueError, match="no training or validation sample has its true cell"):
        GBDTRanker("at_time").fit(no_target, no_target, city)


@pytest.fixture
def bars(monkeypatch) -> list:
    """Every progress bar the feature rankers open, rendered nowhere but counted."""
    from tqdm import tqdm

    from nextlocllm_hf.baselines import feature_rankers

    opened = []

    def recording(*args, **kwargs):
        opened.append(tqdm(*args, **{**kwargs, "file": io.StringIO()}))
        return opened[-1]

    monkeypatch.setattr(feature_rankers, "tqdm", recording)
    return opened


def test_feature_mlp_training_is_bounded_by_epochs_patience_and_max_steps(cities, bars):
    """train.py's warm start is this ranker: every bound is an option, and its bar's total is the epochs it may run
    (saying so when it stops early)."""
    city, _ = cities
    train, validation = routine_samples(city, 300, 11), routine_samples(city, 100, 12)
    settings = dict(width=8, batch_size=128, learning_rate=1e-2)
    by_epochs = FeatureMLPRanker("at_time", epochs=3, patience=10, **settings).fit(train, validation, city)
    assert (by_epochs.epochs_run, by_epochs.stopped, len(by_epochs.validation_hit_at_1)) == (3, "epochs", 3)
    assert (bars[-1].n, bars[-1].total) == (3, 3)

    # Nothing learns at a learning rate of 0: no epoch beats the first, so it stops `patience` epochs after it.
    frozen = FeatureMLPRanker("at_time", epochs=30, patience=2, width=8, batch_size=128, learning_rate=0.0)
    frozen.fit(train, validation, city)
    assert (frozen.epochs_run, frozen.stopped, frozen.best_epoch) == (3, "patience", 1)
    assert (bars[-1].n, bars[-1].total) == (3, 3)  # the bar ends full where training ended, and says why
    assert "stopped early: no better validation Hit@1 in 2 epochs" in bars[-1].postfix

    steps_per_epoch = -(-int(frozen.table(train, city).hits.any(axis=1).sum()) // 128)
    assert steps_per_epoch >= 2  # so that the bound below ends an epoch midway
    bounded = FeatureMLPRanker("at_time", epochs=30, patience=30, max_steps=steps_per_epoch + 1, **settings)
    bounded.fit(train, validation, city)
    assert (bounded.steps_run, bounded.epochs_run, bounded.stopped) == (steps_per_epoch + 1, 2, "max_steps")
    assert (bars[-1].n, bars[-1].total) == (2, 2)  # the two epochs that max_steps leaves, not 30

    for field, value in (("epochs", 0), ("patience", True), ("max_steps", 0)):
        with pytest.raises(ValueError, match=f"feature_mlp_ranker: {field}={value!r}: expected a positive integer"):
            FeatureMLPRanker("at_time", **{field: value})


def test_gbdt_progress_counts_its_trees_and_changes_nothing(cities, bars, capsys):
    city, new_city = cities
    train, validation = routine_samples(city, 200, 13), routine_samples(city, 80, 14)
    test = routine_samples(new_city, 50, 15)
    settings = dict(max_iter=12, min_samples_leaf=5)
    quiet = GBDTRanker("at_time", progress=False, **settings).fit(train, validation, city)
    assert bars and all(bar.n == 0 for bar in bars)  # disabled bars count nothing
    bars.clear()
    shown = GBDTRanker("at_time", **settings).fit(train, validation, city)
    assert capsys.readouterr().out == ""  # scikit-learn's log moves the bar; none of it is printed
    counted = {bar.desc: (bar.n, bar.total) for bar in bars}
    assert counted["gbdt_ranker: fit"] == counted["gbdt_ranker: choose the trees on validation"] == (12, 12)
    np.testing.assert_array_equal(shown.rank(test, new_city, k=5), quiet.rank(test, new_city, k=5))
    assert shown.validation_hit_at_1 == quiet.validation_hit_at_1


def test_score_baselines_fits_the_boosted_ranker_on_the_models_candidates(tmp_path, monkeypatch):
    """train.py's gbdt_ranker row ranks the candidates the model ranks, from the same features (history included)."""
    from conftest import build_synthetic_city

    from nextlocllm_hf import NextLocLLMConfig
    from nextlocllm_hf.baselines import scoring
    from nextlocllm_hf.data import load_cities

    built = []

    class Recorded(GBDTRanker):
        def __init__(self, task_mode, **settings):
            super().__init__(task_mode, **{**settings, "max_iter": 5, "min_samples_leaf": 5})
            built.append(self)

    monkeypatch.setattr(scoring, "GBDTRanker", Recorded)
    cities = load_cities([build_synthetic_city(tmp_path / "city", "city", seed=3)])
    config = NextLocLLMConfig(task_mode="at_time", head_type="point_ranker", candidate_history=True,
                              max_past_records=100, max_candidates=40, candidate_neighbors=4,
                              candidate_time_features=False)
    rows = scoring.score_baselines(cities, [], config, gbdt=True, progress=False)
    (ranker,) = built
    assert (ranker.task_mode, ranker.history, ranker.max_past_records, ranker.max_candidates, ranker.neighbors,
            ranker.time_features) == ("at_time", True, 100, 40, 4, False)
    assert {"gbdt_ranker / city", "hour_frequency / city"} <= set(rows)
