"""Rule baselines on tiny hand-made samples (expected lists written out, ties and padding included) and the
ID-classification baseline on a learnable toy mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_retriever

from nextlocllm_hf import CityRetriever
from nextlocllm_hf.baselines import (
    RULE_BASELINES,
    IDClassifier,
    HourFrequency,
    MarkovFrequencyMixture,
    MarkovTrainUsers,
    evaluate_rule_baselines,
    metrics_for_rankings,
    rank_rule_baselines,
    rank_with_id_classifier,
    top1_centroid_xy,
    train_id_classifier,
)
from nextlocllm_hf.metrics import compute_metrics, pad_ranking
from nextlocllm_hf.modeling.candidates_nextlocllm import RULE_ALPHA

# ---------------------------------------------------------------------------------------------------------------
# A 3 x 3 grid of 500 m cells, id = 3 * row + col, centroid (250 + 500 col, 250 + 500 row):
#
#     6 7 8
#     3 4 5
#     0 1 2
#
# Every sample's last point is (800, 270), near cell 1's centroid, so the padding order (nearest first) is
# 1 (54 m), 2 (450 m), 4 (483 m), 0 (550 m), 5 (658 m), 3 (730 m), 7 (981 m), 8 (1078 m), 6 (1124 m).
# Samples have H = 6 history + L = 2 current records; s = the 8 record cells, oldest first.

NEAREST_ORDER = [1, 2, 4, 0, 5, 3, 7, 8, 6]
LAST_POINT = (800.0, 270.0)

TEST_SEQUENCES = [
    [0, 1, 0, 2, 0, 1, 0, 1],  # A: last 1; visits 0x4 1x3 2x1; 1 -> 0 twice
    [3, 5, 3, 4, 3, 6, 2, 3],  # B: last 3; visits 3x4, then 5, 4, 6, 2 once (recency 2 > 6 > 4 > 5); 3 -> 5, 4, 6
    [7, 7, 8, 8, 6, 6, 8, 5],  # C: last 5 seen only at the end: no transition out of it
    [8, 8, 8, 7, 7, 6, 6, 6],  # D: last 6; visits 8x3 and 6x3 (6 more recent), 7x2; 6 -> 6 twice (self-transitions)
]
TRAIN_SEQUENCES = [[1, 2, 1, 2, 1, 4, 1, 0], [5, 5, 1, 4, 5, 3, 0, 3]]
TRAIN_TARGETS = [3, 0]
# training transitions (record pairs + last record -> target):
#   1 -> 2 (2x), 1 -> 4 (2x), 1 -> 0 (1x); 3 -> 0 (2x); 5 -> 5, 5 -> 1, 5 -> 3 (1x each); 6 never a source.

EXPECTED = {  # k = 5
    "last_location": [
        [1, 2, 4, 0, 5],  # A: last cell 1, then nearest without 1
        [3, 1, 2, 4, 0],
        [5, 1, 2, 4, 0],
        [6, 1, 2, 4, 0],
    ],
    "most_frequent": [
        [0, 1, 2, 4, 5],  # A: 0 (4), 1 (3), 2 (1), pad 4, 5
        [3, 2, 6, 4, 5],  # B: 3 (4), then the once-visited cells by recency: 2, 6, 4, 5
        [8, 6, 7, 5, 1],  # C: 8 (3), 6 and 7 (2; 6 more recent), 5 (1), pad 1
        [6, 8, 7, 1, 2],  # D: 6 and 8 (3; 6 more recent), 7 (2), pad 1, 2
    ],
    "markov_within_sample": [
        [0, 1, 2, 4, 5],  # A: 1 -> 0 (2), pad 1, 2, 4, 5
        [6, 4, 5, 1, 2],  # B: 3 -> 5, 4, 6 once each, by recency of the transition: 6, 4, 5
        [1, 2, 4, 0, 5],  # C: nothing follows 5: nearest cells only
        [6, 1, 2, 4, 0],  # D: 6 -> 6 (2)
    ],
    "markov_train_users": [
        [2, 4, 0, 1, 5],  # A: from 1: 2 and 4 (2 each; smaller id first), 0 (1), pad 1, 5
        [0, 1, 2, 4, 5],  # B: from 3: 0 (2)
        [1, 3, 5, 2, 4],  # C: from 5: 1, 3, 5 (1 each, by id), pad 2, 4
        [6, 8, 7, 1, 2],  # D: 6 never seen in training -> the sample's most_frequent list
    ],
    "markov_frequency_mixture": [
        # score = 0.5 * P(c | last) + 0.5 * visits / 8
        [0, 1, 2, 4, 5],  # A: 0: .5 * 1 + .5 * 4/8 = .75; 1: .1875; 2: .0625
        [3, 6, 4, 5, 2],  # B: 3: .25; 5, 4, 6: .5/3 + .0625 = .229 (tie -> recency 6, 4, 5); 2: .0625
        [8, 6, 7, 5, 1],  # C: no transitions out of 5 -> frequency order
        [6, 8, 7, 1, 2],  # D: 6: .5 + .1875; 8: .1875; 7: .125
    ],
    "hour_frequency": [
        # next mode: the reference is the last record's hour, 19 h; records at 18-21 h are positions 3, 4, 5, 7.
        # score = visits within the window + visits / 9
        [1, 0, 2, 4, 5],  # A: 1: 2 + 3/9; 0: 1 + 4/9; 2: 1 + 1/9
        [3, 6, 4, 2, 5],  # B: 3: 2 + 4/9; 6 and 4: 1 + 1/9 (6 more recent); 2 and 5: 1/9 (2 more recent)
        [6, 8, 5, 7, 1],  # C: 6: 2 + 2/9; 8: 1 + 3/9; 5: 1 + 1/9; 7: 2/9
        [6, 7, 8, 1, 2],  # D: 6: 2 + 3/9; 7: 2 + 2/9; 8: 3/9
    ],
    "nearest_cells": [NEAREST_ORDER[:5]] * 4,
}
# Every sample's records happen at these hours (all on a Monday).
HOURS = [8, 9, 12, 18, 19, 20, 8, 19]


def toy_retriever(name: str = "toy") -> CityRetriever:
    ids = np.arange(9)
    xy = np.stack([250.0 + 500.0 * (ids % 3), 250.0 + 500.0 * (ids // 3)], axis=1)
    return CityRetriever(
        name=name, cell_ids=ids, xy=xy, latlon=np.zeros((9, 2)), poi_frequency=np.zeros((9, 5)),
        coordinate_mean=[750.0, 750.0], coordinate_std=[400.0, 400.0],
    )


def toy_rows(sequences, targets=None, city: str = "toy") -> dict:
    seq = np.asarray(sequences, dtype=np.int64)
    n = len(seq)
    rows = {
        "city": np.array([city] * n),
        "history_cell": seq[:, :6],
        "current_cell": seq[:, 6:],
        "current_coordinates": np.tile(np.array([[0.0, 0.0], LAST_POINT]), (n, 1, 1)),
        "history_hour": np.tile(HOURS[:6], (n, 1)),
        "current_hour": np.tile(HOURS[6:], (n, 1)),
        "current_day": np.zeros((n, 2), dtype=np.int64),
    }
    if targets is not None:
        rows["target_cell"] = np.asarray(targets, dtype=np.int64)
        rows["target_coordinates"] = toy_retriever().xy[rows["target_cell"]]
    return rows


def as_dataset(rows: dict, fixed_length: bool):
    """The same rows as a `datasets.Dataset`, with fixed-length list features or inferred (variable) lists."""
    from datasets import Dataset, Features, List, Value

    data = {name: value.tolist() for name, value in rows.items()}
    if not fixed_length:
        return Dataset.from_dict(data)
    features = Features({
        "city": Value("string"),
        "history_cell": List(Value("int64"), length=6),
        "current_cell": List(Value("int64"), length=2),
        "current_coordinates": List(List(Value("float64"), length=2), length=2),
        "history_hour": List(Value("int64"), length=6),
        "current_hour": List(Value("int64"), length=2),
        "current_day": List(Value("int64"), length=2),
        **({"target_cell": Value("int64"), "target_coordinates": List(Value("float64"), length=2)}
           if "target_cell" in rows else {}),
    })
    return Dataset.from_dict(data, features=features)


@pytest.fixture(scope="module")
def retriever():
    return toy_retriever()


@pytest.fixture(scope="module")
def train_rows():
    return toy_rows(TRAIN_SEQUENCES, TRAIN_TARGETS)


def test_registry_lists_the_seven_rules():
    assert list(RULE_BASELINES) == [
        "last_location", "most_frequent", "markov_within_sample", "markov_train_users",
        "markov_frequency_mixture", "hour_frequency", "nearest_cells",
    ]
    assert MarkovFrequencyMixture().alpha == RULE_ALPHA == 0.5  # the weight of the model's rule feature too


def test_nearest_order_of_the_toy_grid(retriever):
    ids, _ = retriever.query(np.array([LAST_POINT]), 9)
    assert ids[0].tolist() == NEAREST_ORDER


@pytest.mark.parametrize("name", list(EXPECTED))
def test_rule_on_hand_made_samples(name, retriever, train_rows):
    ranked = RULE_BASELINES[name]().fit(train_rows, retriever).rank(toy_rows(TEST_SEQUENCES), 5)
    assert ranked.dtype == np.int64 and ranked.shape == (4, 5)
    assert ranked.tolist() == EXPECTED[name]


def test_hour_frequency_refers_to_the_query_hour_in_at_time_mode(retriever):
    # The query is 8 h: records at 6-10 h are positions 0, 1 and 6.
    rows = toy_rows(TEST_SEQUENCES[:2])
    rows.update(target_day=np.zeros(2, dtype=np.int64), target_hour=np.full(2, 8), target_time_gap=np.ones(2))
    ranked = HourFrequency("at_time").fit(None, retriever).rank(rows, 5)
    # A: 0: 2 + 4/9; 1: 1 + 3/9; 2: 1/9.  B: 3: 1 + 4/9; 2 and 5: 1 + 1/9 (2 more recent); 6 and 4: 1/9 (6 more recent).
    assert ranked.tolist() == [[0, 1, 2, 4, 5], [3, 2, 5, 6, 4]]
    # The same rows in next mode ignore the query and refer to the last record (19 h).
    assert HourFrequency("next").fit(None, retriever).rank(rows, 5).tolist() == EXPECTED["hour_frequency"][:2]
    with pytest.raises(ValueError, match=r"rows lack columns \['target_day', 'target_hour', 'target_time_gap'\]"):
        HourFrequency("at_time").fit(None, retriever).rank(toy_rows(TEST_SEQUENCES[:2]), 5)
    with pytest.raises(ValueError, match="task_mode='soon'"):
        HourFrequency("soon")


@pytest.mark.parametrize("fixed_length", [True, False])
def test_rules_accept_datasets(fixed_length, retriever, train_rows):
    got = rank_rule_baselines(
        as_dataset(train_rows, fixed_length), as_dataset(toy_rows(TEST_SEQUENCES), fixed_length), retriever, k=5
    )
    assert {name: r.tolist() for name, r in got.items()} == EXPECTED


def test_rules_rank_the_same_whatever_the_order_of_the_cells(retriever, train_rows):
    """Ties go to the smaller cell id, not to the cell listed first by the retriever."""
    order = np.array([8, 3, 5, 0, 7, 1, 6, 2, 4])
    shuffled = CityRetriever(name="toy", cell_ids=retriever.cell_ids[order], xy=retriever.xy[order],
                             latlon=retriever.latlon[order], poi_frequency=retriever.poi_frequency[order],
                             coordinate_mean=retriever.coordinate_mean, coordinate_std=retriever.coordinate_std)
    got = rank_rule_baselines(train_rows, toy_rows(TEST_SEQUENCES), shuffled, k=5)
    assert {name: r.tolist() for name, r in got.items()} == EXPECTED


def test_padding_fills_every_cell_and_k_one(retriever, train_rows):
    rows = toy_rows(TEST_SEQUENCES)
    for name, cls in RULE_BASELINES.items():
        rule = cls().fit(train_rows, retriever)
        full = rule.rank(rows, 9)
        assert all(sorted(row) == list(range(9)) for row in full.tolist()), name
        assert full[:, :5].tolist() == EXPECTED[name], name  # a longer list extends the shorter one
        assert rule.rank(rows, 1)[:, 0].tolist() == [row[0] for row in EXPECTED[name]], name


def test_markov_train_counts(retriever, train_rows):
    rule = MarkovTrainUsers().fit(train_rows, retriever)
    counts = rule.transition_counts.toarray()
    assert counts.sum() == 2 * 8  # 7 record pairs + 1 pair to the target, per training sample
    assert counts[1].tolist() == [1, 0, 2, 0, 2, 0, 0, 0, 0]
    assert counts[3, 0] == 2 and counts[6].sum() == 0
    assert rule.successors(1, 5).tolist() == [2, 4, 0]


def test_rule_errors(retriever, train_rows):
    rows = toy_rows(TEST_SEQUENCES)
    with pytest.raises(RuntimeError, match="fit"):
        RULE_BASELINES["most_frequent"]().rank(rows, 5)
    rule = RULE_BASELINES["most_frequent"]().fit(None, retriever)
    with pytest.raises(ValueError, match="larger than the 9 candidate cells"):
        rule.rank(rows, 10)
    with pytest.raises(ValueError, match="positive integer"):
        rule.rank(rows, 0)
    with pytest.raises(ValueError, match=r"\[42\] are not candidate cells"):
        rule.rank(toy_rows([[0, 1, 2, 3, 4, 5, 6, 42]]), 5)
    with pytest.raises(ValueError, match="cities \\['elsewhere'\\]"):
        rule.rank(toy_rows(TEST_SEQUENCES, city="elsewhere"), 5)
    with pytest.raises(ValueError, match="lack columns"):
        rule.rank({"history_cell": rows["history_cell"]}, 5)
    with pytest.raises(ValueError, match="pass train_rows"):
        MarkovTrainUsers().fit(None, retriever)
    with pytest.raises(ValueError, match="unknown rule baselines"):
        rank_rule_baselines(train_rows, rows, retriever, k=5, names=["oracle"])
    assert rule.rank({name: value[:0] for name, value in rows.items()}, 5).shape == (0, 5)


def test_metrics_for_rankings_uses_the_top1_centroid(retriever):
    rows = toy_rows(TEST_SEQUENCES, targets=[1, 2, 0, 7])
    rankings = {"last": RULE_BASELINES["last_location"]().fit(None, retriever).rank(rows, 9)}
    assert top1_centroid_xy(rankings["last"], retriever).tolist() == retriever.xy[[1, 3, 5, 6]].tolist()
    out = metrics_for_rankings(rankings, rows, retriever, ks=(1, 5), ndcg_ks=(5,))["last"]
    # ranks of 1, 2, 0, 7 in [1 2 4 0 5 ..], [3 1 2 4 0 ..], [5 1 2 4 0 ..], [6 1 2 4 0 5 3 7 8]: 1, 3, 5, 8
    assert out["hit@1"] == 0.25 and out["hit@5"] == 0.75
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 5) / 4)  # MRR@max(ks) = MRR@5: rank 8 counts 0
    # projected errors: 0; cell 3 -> 2: (1000, 500); cell 5 -> 0: (1000, 500); cell 6 -> 7: (500, 0)
    assert out["mean_projected_error_m"] == pytest.approx((0 + 2 * np.hypot(1000, 500) + 500) / 4)
    table = evaluate_rule_baselines(toy_rows(TRAIN_SEQUENCES, TRAIN_TARGETS), rows, retriever, k=9, ks=(1, 5),
                                    ndcg_ks=(5,))
    assert list(table) == list(RULE_BASELINES) and table["last_location"] == out


def test_rule_baselines_rank_a_small_city_whole_and_score_it_padded():
    """A city of 3 cells: every rule ranks all 3 (not 20, which would fail), scored as if padded to 20."""
    retriever = make_retriever("three", num_cells=3)
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 3, (6, 9))
    rows = {
        "city": ["three"] * 6,
        "history_cell": cells[:, :6], "current_cell": cells[:, 6:8], "target_cell": cells[:, 8],
        "history_hour": rng.integers(0, 24, (6, 6)), "current_hour": rng.integers(0, 24, (6, 2)),
        "current_coordinates": retriever.xy[cells[:, 6:8]], "target_coordinates": retriever.xy[cells[:, 8]],
    }
    scores = evaluate_rule_baselines(rows, rows, retriever, names=["most_frequent", "nearest_cells"])
    for name, out in scores.items():
        assert out["hit@5"] == out["hit@20"] == 1.0 and out["ndcg@5"] == out["ndcg@10"], name
    ranked = np.array([[0, 1, 2]] * 6)
    padded = metrics_for_rankings({"fixed": ranked}, rows, retriever)["fixed"]
    assert padded == compute_metrics(pad_ranking(ranked, 20), rows["target_cell"], retriever.xy[ranked[:, 0]],
                                     rows["target_coordinates"])
    with pytest.raises(ValueError, match="fewer than the largest cut-off"):  # 2 of 3 cells is not a whole ranking
        metrics_for_rankings({"short": ranked[:, :2]}, rows, retriever)


def test_rules_rank_thousands_of_samples(retriever):
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 9, (3000, 8))
    rows = toy_rows(seq, targets=rng.integers(0, 9, 3000))
    rows["current_coordinates"] = rng.uniform(0, 1500, (3000, 2, 2))
    rankings = rank_rule_baselines(rows, rows, retriever, k=6)
    for name, ranked in rankings.items():
        assert ranked.shape == (3000, 6), name
        assert (np.sort(ranked, axis=1)[:, 1:] != np.sort(ranked, axis=1)[:, :-1]).all(), name
    assert (rankings["last_location"][:, 0] == seq[:, -1]).all()


def test_rules_read_a_large_split_in_chunks_with_the_same_result(retriever, monkeypatch):
    """A split is ranked and fitted chunk by chunk (`columns.row_chunks`): the same rankings and transition counts
    as read whole, for mappings and Datasets."""
    import nextlocllm_hf.columns as columns

    rng = np.random.default_rng(1)
    seq = rng.integers(0, 9, (500, 8))
    rows = toy_rows(seq, targets=rng.integers(0, 9, 500))
    rows["current_coordinates"] = rng.uniform(0, 1500, (500, 2, 2))
    whole = rank_rule_baselines(rows, rows, retriever, k=6)
    counts = MarkovTrainUsers().fit(rows, retriever).transition_counts.toarray()
    monkeypatch.setattr(columns, "ROW_CHUNK", 37)
    assert len(list(columns.row_chunks(rows))) == 14
    from datasets import Dataset

    for source in (rows, Dataset.from_dict({k: np.asarray(v).tolist() for k, v in rows.items()})):
        chunked = rank_rule_baselines(source, source, retriever, k=6)
        assert all((chunked[name] == whole[name]).all() for name in whole)
        fitted = MarkovTrainUsers().fit(source, retriever).transition_counts.toarray()
        assert (fitted == counts).all() and counts.sum() == 500 * 8


# ---------------------------------------------------------------------------------------------------------------
# ID classifier: next cell = (last cell + 1) mod 20, learnable from the last record alone

NUM_CELLS = 20


def shift_rows(n: int, seed: int, city: str = "toy") -> dict:
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, NUM_CELLS, (n, 6))
    return {
        "city": np.array([city] * n),
        "history_cell": seq[:, :4], "current_cell": seq[:, 4:],
        "history_hour": rng.integers(0, 24, (n, 4)), "current_hour": rng.integers(0, 24, (n, 2)),
        "history_day": rng.integers(0, 7, (n, 4)), "current_day": rng.integers(0, 7, (n, 2)),
        "target_cell": (seq[:, -1] + 1) % NUM_CELLS,
    }


SMALL = {"cell_embedding_dim": 16, "time_embedding_dim": 4, "hidden_size": 32}


@pytest.fixture(scope="module")
def trained():
    train, valid = shift_rows(800, 0), shift_rows(200, 1)
    model, history = train_id_classifier(
        train, valid, NUM_CELLS, epochs=6, batch_size=32, learning_rate=1e-2, seed=0, progress=False, **SMALL
    )
    return model, history, valid


def test_id_classifier_learns_the_toy_mapping(trained):
    model, history, _ = trained
    test = shift_rows(300, 2)
    ranked = rank_with_id_classifier(model, test, 5, num_cells=NUM_CELLS)
    assert ranked.shape == (300, 5) and ranked.dtype == np.int64
    assert all(len(set(row)) == 5 for row in ranked.tolist())
    hit1 = float((ranked[:, 0] == test["target_cell"]).mean())
    assert hit1 > 0.8, (hit1, history)  # chance is 1/20


def test_id_classifier_keeps_the_best_validation_epoch(trained):
    model, history, valid = trained
    scores = [e["validation_hit@1"] for e in history["epochs"]]
    assert len(scores) == 6
    assert history["best_epoch"] == 1 + int(np.argmax(scores))  # first maximum
    assert history["best_validation_hit@1"] == max(scores)
    ranked = rank_with_id_classifier(model, valid, 1)
    assert float((ranked[:, 0] == valid["target_cell"]).mean()) == pytest.approx(max(scores))


def test_id_classifier_is_seeded_and_leaves_the_global_rng_alone():
    train, valid = shift_rows(64, 3), shift_rows(16, 4)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, ha = train_id_classifier(train, valid, NUM_CELLS, epochs=1, batch_size=16, seed=7, progress=False, **SMALL)
    assert torch.equal(torch.rand(3), expected_next)
    b, hb = train_id_classifier(train, valid, NUM_CELLS, epochs=1, batch_size=16, seed=7, progress=False, **SMALL)
    assert ha["epochs"][0]["train_loss"] == hb["epochs"][0]["train_loss"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_id_classifier_refuses_another_city(trained):
    model, _, _ = trained
    with pytest.raises(ValueError, match="cannot transfer"):
        rank_with_id_classifier(model, shift_rows(5, 5), 5, num_cells=NUM_CELLS + 1)
    with pytest.raises(ValueError, match="trained on city 'toy' and cannot rank city 'other'"):
        rank_with_id_classifier(model, shift_rows(5, 5, city="other"), 5)
    rows = shift_rows(5, 5)
    rows["current_cell"] = rows["current_cell"] + NUM_CELLS
    with pytest.raises(ValueError, match="outside the id space"):
        rank_with_id_classifier(model, rows, 5)
    with pytest.raises(ValueError, match="mix cities"):
        train_id_classifier({**shift_rows(4, 6), "city": np.array(["a", "a", "b", "b"])}, shift_rows(4, 7),
                            NUM_CELLS, epochs=1, progress=False)
    with pytest.raises(ValueError, match="validation_rows is empty"):
        train_id_classifier(shift_rows(4, 6), None, NUM_CELLS, epochs=1, progress=False)


def test_id_classifier_save_and_load(trained, tmp_path):
    model, _, valid = trained
    model.save_pretrained(tmp_path)
    loaded = IDClassifier.from_pretrained(tmp_path)
    assert loaded.city == "toy" and loaded.num_cells == NUM_CELLS
    assert np.array_equal(rank_with_id_classifier(loaded, valid, 5), rank_with_id_classifier(model, valid, 5))
