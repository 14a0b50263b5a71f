"""The candidate ranker (`modeling/candidates_nextlocllm.py`): hand-checked features in both task modes, unknown cell
ids, city-agnostic scoring, the listwise loss."""

import math

import numpy as np
import pytest
import torch
from conftest import make_retriever
from helpers import ORIGIN, tiny_retriever

from nextlocllm_hf import CityRetriever
from nextlocllm_hf.modeling.candidates_nextlocllm import (
    CandidateScorer,
    build_candidates,
    candidate_feature_names,
    candidate_feature_size,
    candidate_listwise_loss,
    hour_distance,
)
from nextlocllm_hf.modeling.ranking_nextlocllm import merge_rankings


def sample(cells, xy, day, hour, history_length, query=None) -> dict:
    """One sample's columns from per-record lists (history then current)."""
    xy = ORIGIN + np.asarray(xy, dtype=np.float64)
    batch = {}
    for part, part_slice in (("history", slice(0, history_length)), ("current", slice(history_length, None))):
        batch[f"{part}_cell"] = np.array([cells[part_slice]])
        batch[f"{part}_coordinates"] = xy[None, part_slice]
        batch[f"{part}_day"] = np.array([day[part_slice]])
        batch[f"{part}_hour"] = np.array([hour[part_slice]])
    if query is not None:
        batch["target_day"], batch["target_hour"], batch["target_time_gap"] = (np.array([v]) for v in query)
    return batch


# Records t0..t5 = 10, 20, 10, <unknown 99>, 20 | 30 on Mon 8 h, Mon 12 h, Tue 19 h, Sat 20 h, Sun 9 h | Sun 18 h; the
# last point is 100 m east of cell 30. Query (at_time): Wednesday 20 h, 3 hours after the last record.
RECORDS = dict(
    cells=[10, 20, 10, 99, 20, 30],
    xy=[[0, 0], [1000, 0], [0, 0], [2000, 0], [1000, 0], [100, 1000]],
    day=[0, 0, 1, 5, 6, 6],
    hour=[8, 12, 19, 20, 9, 18],
    history_length=4,
)


def features_by_name(candidates, task_mode, time_features=True):
    names = candidate_feature_names(2, task_mode, time_features)
    assert candidates.features.shape[-1] == len(names) == candidate_feature_size(2, task_mode, time_features)
    return {name: candidates.features[0, :, i] for i, name in enumerate(names)}


def test_shared_features_match_hand_computed_values():
    candidates = build_candidates(tiny_retriever(), sample(**RECORDS), "next", neighbors=4, max_candidates=5)
    # Record cells most recent first (30, 20, 10; the unknown 99 is skipped), then the last point's neighbours
    # 30, 10, 20, 40 of which only 40 is new; one padding column.
    np.testing.assert_array_equal(candidates.cell_ids, [[30, 20, 10, 40, -1]])
    np.testing.assert_array_equal(candidates.mask, [[True, True, True, True, False]])
    np.testing.assert_array_equal(candidates.num_unknown_records, [1])
    assert candidates.features.dtype == np.float32
    f = features_by_name(candidates, "next")
    np.testing.assert_allclose(f["dx_last"], [-0.2, 1.8, -0.2, 5.8, 0], atol=1e-6)
    np.testing.assert_allclose(f["dy_last"], [0.0, -1.0, -1.0, 2.0, 0], atol=1e-6)
    np.testing.assert_allclose(f["distance_last"], [0.2, math.sqrt(4.24), math.sqrt(1.04), math.sqrt(37.64), 0],
                               rtol=1e-6)
    # Radius of gyration of the six record points (the unknown record's too): mean (4100/6, 1000/6).
    points = np.array(RECORDS["xy"], dtype=np.float64)
    gyration = math.sqrt(sum((x - 4100 / 6) ** 2 + (y - 1000 / 6) ** 2 for x, y in points) / 6)
    metres = [100.0, math.hypot(900, 1000), math.hypot(100, 1000), math.hypot(2900, 2000)]
    np.testing.assert_allclose(f["distance_gyration"][:4], [math.log1p(m / gyration) for m in metres], rtol=1e-6)
    np.testing.assert_allclose(f["poi_0"], [0.5, 0.0, 1.0, 0.25, 0])
    np.testing.assert_allclose(f["poi_1"], [0.5, 1.0, 0.0, 0.75, 0])
    # Shares are over all 6 records (the unknown one counts), current share over the 2 current records.
    np.testing.assert_allclose(f["visit_share"], [1 / 6, 2 / 6, 2 / 6, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f["log_visits"], [math.log(2), math.log(3), math.log(3), 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f["current_share"], [0.5, 0.5, 0, 0, 0])
    np.testing.assert_allclose(f["recency"], [1.0, 1 / 2, 1 / 4, 0, 0])
    np.testing.assert_array_equal(f["visited"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(f["is_last"], [1, 0, 0, 0, 0])
    # 30 was never left before, and the pair (20, 30) never occurred before: no Markov evidence.
    np.testing.assert_array_equal(f["markov_1"], np.zeros(5))
    np.testing.assert_array_equal(f["markov_2"], np.zeros(5))
    # The rule 0.5 markov_1 + 0.5 visit_share ranks 20 and 10 (2/12, candidate order breaks the tie), 30, then 40.
    np.testing.assert_allclose(f["log_rule_rank"], [math.log1p(3), math.log1p(1), math.log1p(2), math.log1p(4), 0],
                               rtol=1e-6)
    # Each candidate's visits as pooling weights over the six records.
    np.testing.assert_allclose(candidates.record_weights[0, :4], [[0, 0, 0, 0, 0, 1], [0, 0.5, 0, 0, 0.5, 0],
                                                                  [0.5, 0, 0.5, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_time_features_against_the_query_in_at_time_mode():
    batch = sample(**RECORDS, query=(2, 20, 3.0))
    f = features_by_name(build_candidates(tiny_retriever(), batch, "at_time", 4, 5), "at_time")
    # Hours from 20 h: 12, 8, 1, 0, 11, 2, so t2, t3, t5 are within 2 h (3 records); weekday records (the query is a
    # Wednesday): t0, t1, t2; both: t2 alone.
    np.testing.assert_allclose(f["window_share"], [1 / 6, 0, 1 / 6, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f["window_fraction"], [1 / 3, 0, 1 / 3, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f["daytype_fraction"], [0, 1 / 3, 2 / 3, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f["window_daytype_fraction"], [0, 0, 1, 0, 0])
    np.testing.assert_allclose(f["hour_distance"], [2 / 12, 8 / 12, 1 / 12, 1, 0], rtol=1e-6)
    np.testing.assert_allclose(f["hour_sin"][:4], math.sin(2 * math.pi * 20 / 24), rtol=1e-6)
    np.testing.assert_allclose(f["hour_cos"][:4], math.cos(2 * math.pi * 20 / 24), rtol=1e-6)
    np.testing.assert_array_equal(f["weekend"], [0, 0, 0, 0, 0])
    np.testing.assert_allclose(f["log_gap"], [math.log(4)] * 4 + [0], rtol=1e-6)
    # The shared features do not depend on the query.
    shared = features_by_name(build_candidates(tiny_retriever(), batch, "next", 4, 5), "next")
    for name in ("dx_last", "visit_share", "markov_2", "log_rule_rank"):
        np.testing.assert_array_equal(f[name], shared[name])


def test_time_features_against_the_last_record_in_next_mode():
    # The query is ignored in `next` mode (it would be unknown): the reference is Sunday 18 h, the last record.
    batch = sample(**RECORDS, query=(2, 20, 3.0))
    f = features_by_name(build_candidates(tiny_retriever(), batch, "next", 4, 5), "next")
    assert "log_gap" not in f
    # Hours from 18 h: 10, 6, 1, 2, 9, 0: t2, t3, t5 within 2 h; weekend records t3, t4, t5; both: t3, t5.
    np.testing.assert_allclose(f["window_share"], [1 / 6, 0, 1 / 6, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f["window_fraction"], [1 / 3, 0, 1 / 3, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f["daytype_fraction"], [1 / 3, 1 / 3, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f["window_daytype_fraction"], [1 / 2, 0, 0, 0, 0])
    np.testing.assert_allclose(f["hour_distance"], [0, 6 / 12, 1 / 12, 1, 0], rtol=1e-6)
    np.testing.assert_array_equal(f["weekend"], [1, 1, 1, 1, 0])


def test_without_time_features_only_the_shared_ones_remain():
    candidates = build_candidates(tiny_retriever(), sample(**RECORDS, query=(2, 20, 3.0)), "at_time", 4, 5,
                                  time_features=False)
    names = candidate_feature_names(2, "at_time", time_features=False)
    assert candidates.features.shape[-1] == len(names) and names[-1] == "log_rule_rank"


def test_hour_distance_is_circular():
    np.testing.assert_array_equal(hour_distance([23, 0, 12, 5], [1, 23, 0, 5]), [2, 1, 12, 0])


def test_markov_features_count_what_followed_the_last_cells():
    # Records 10, 20, 10, 30, 10 | 20, 10: the last cell 10 was left three times before, to 20, 30 and 20; the last
    # pair (20, 10) occurred once before (t1, t2), followed by 30.
    batch = sample(cells=[10, 20, 10, 30, 10, 20, 10], xy=[[0, 0]] * 7, day=[0] * 7, hour=[8] * 7, history_length=5)
    candidates = build_candidates(tiny_retriever(), batch, "next", neighbors=0, max_candidates=3)
    np.testing.assert_array_equal(candidates.cell_ids, [[10, 20, 30]])
    f = features_by_name(candidates, "next")
    np.testing.assert_allclose(f["markov_1"], [0.0, 2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(f["markov_2"], [0.0, 0.0, 1.0])


def test_unknown_cell_ids_are_skipped_and_counted():
    retriever = tiny_retriever()
    batch = {
        "history_cell": np.array([[-1, 2**40, 5], [10, -7, 10]]), "current_cell": np.array([[41], [31]]),
        "history_coordinates": np.broadcast_to(ORIGIN, (2, 3, 2)), "current_coordinates": np.broadcast_to(ORIGIN, (2, 1, 2)),
        "history_day": np.zeros((2, 3), dtype=np.int64), "current_day": np.zeros((2, 1), dtype=np.int64),
        "history_hour": np.zeros((2, 3), dtype=np.int64), "current_hour": np.zeros((2, 1), dtype=np.int64),
    }
    candidates = build_candidates(retriever, batch, "next", neighbors=1, max_candidates=3)
    np.testing.assert_array_equal(candidates.num_unknown_records, [4, 2])
    # Sample 0 knows no record: only the last point's neighbour, never visited.
    np.testing.assert_array_equal(candidates.cell_ids, [[10, -1, -1], [10, -1, -1]])
    f = {name: candidates.features[:, 0, i] for i, name in enumerate(candidate_feature_names(2, "next"))}
    np.testing.assert_array_equal(f["visited"], [0, 1])
    # Sample 1: cell 10 holds 2 of 4 records (unknown ones count); 1 record follows its last visit; the last record
    # (31) is unknown, so no candidate is the last record's cell.
    np.testing.assert_allclose([f["visit_share"][1], f["recency"][1], f["is_last"][1]], [0.5, 0.5, 0.0])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"history_cell": np.array([[10.0, 20.0, 10.0, 30.0]])}, "integer cell ids"),
        ({"current_cell": np.zeros((1, 0), dtype=np.int64)}, "no records"),
        ({"current_coordinates": np.full((1, 2, 2), np.nan)}, "finite"),
        ({"history_hour": None}, "history_hour"),
        ({"target_time_gap": np.array([-1.0])}, "target_time_gap holds -1.0"),
        ({"target_hour": None}, r"needs the query time: \['target_hour'\]"),
    ],
)
def test_bad_inputs_raise_value_errors(overrides, message):
    batch = {**sample(**RECORDS, query=(2, 20, 3.0)), **overrides}
    with pytest.raises(ValueError, match=message):
        build_candidates(tiny_retriever(), batch, "at_time", neighbors=1, max_candidates=4)


@pytest.mark.parametrize("overrides, message", [({"max_candidates": 0}, "max_candidates=0"),
                                                ({"neighbors": -1}, "neighbors=-1"),
                                                ({"task_mode": "later"}, "task_mode='later'")])
def test_bad_settings_raise_value_errors(overrides, message):
    settings = {"task_mode": "next", "neighbors": 1, "max_candidates": 4, **overrides}
    with pytest.raises(ValueError, match=message):
        build_candidates(tiny_retriever(), sample(**RECORDS), **settings)


def test_scorer_is_permutation_equivariant_and_masks():
    torch.manual_seed(0)
    scorer = CandidateScorer(num_features=7, context_size=5, width=16)
    features, context, records = torch.randn(3, 6, 7), torch.randn(3, 5), torch.randn(3, 6, 5)
    mask = torch.rand(3, 6) > 0.3
    permutation = torch.randperm(6)
    scores = scorer(features, mask, context, records)
    permuted = scorer(features[:, permutation], mask[:, permutation], context, records[:, permutation])
    torch.testing.assert_close(permuted, scores[:, permutation])
    assert (scores[~mask] == torch.finfo(scores.dtype).min).all() and torch.isfinite(scores[mask]).all()


def test_all_masked_row_gives_no_nan_in_bfloat16():
    scorer = CandidateScorer(num_features=3, context_size=4, width=8).to(torch.bfloat16)
    mask = torch.tensor([[True, False], [False, False]])
    scores = scorer(torch.randn(2, 2, 3), mask, torch.randn(2, 4), torch.randn(2, 2, 4))
    assert scores.dtype == torch.bfloat16
    probabilities = scores.float().softmax(dim=-1)
    torch.testing.assert_close(probabilities, torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


def test_scorer_standardizes_with_fitted_statistics_and_needs_its_context():
    scorer = CandidateScorer(num_features=3, context_size=0, width=4)
    features = np.array([[[1.0, 10.0], [3.0, 10.0], [100.0, -5.0]]])
    scorer.fit_feature_encoding(features, np.array([[True, True, False]]))  # the masked candidate is not counted
    torch.testing.assert_close(scorer.feature_shift, torch.tensor([2.0, 10.0, 0.0]))
    torch.testing.assert_close(scorer.feature_scale, torch.tensor([1.0, 1.0, 1.0]))  # a constant keeps scale 1
    with pytest.raises(ValueError, match="4 features"):
        scorer.fit_feature_encoding(np.zeros((1, 2, 4)), np.ones((1, 2), dtype=bool))
    with pytest.raises(ValueError, match="pass context and record_states"):
        CandidateScorer(3, 4, 8)(torch.randn(1, 2, 3), torch.ones(1, 2, dtype=torch.bool))


def test_piecewise_linear_encoding_against_hand_computed_bins():
    scorer = CandidateScorer(num_features=3, context_size=0, width=4, feature_bins=2)
    # Feature 0: 0..4 (edges 0, 2, 4); feature 1: a point mass at 0 with one 1 (edges 0, 0, 1).
    training = np.array([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 1.0]]])
    scorer.fit_feature_encoding(training, np.ones((1, 5), dtype=bool))
    torch.testing.assert_close(scorer.bin_edges, torch.tensor([[0.0, 2.0, 4.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    encoded = scorer.encode_features(torch.tensor([[[3.0, 0.5, 7.0], [-1.0, 2.0, 0.0]]]))
    std0, std1 = np.std([0, 1, 2, 3, 4]), np.std([0, 0, 0, 0, 1])
    expected = torch.tensor([[
        # (standardized, bin 1, bin 2) per feature; zero-width bins and the unfitted third feature's bins encode 0
        [(3 - 2) / std0, 1.0, 0.5, (0.5 - 0.2) / std1, 0.0, 0.5, 7.0, 0.0, 0.0],
        [(-1 - 2) / std0, 0.0, 0.0, (2 - 0.2) / std1, 0.0, 1.0, 0.0, 0.0, 0.0],
    ]], dtype=torch.float32)
    torch.testing.assert_close(encoded, expected)
    assert scorer.feature_projection.in_features == 9


def test_warm_start_copies_the_features_only_scorer_exactly():
    torch.manual_seed(0)
    features_only = CandidateScorer(num_features=4, context_size=0, width=8, feature_bins=3)
    features_only.fit_feature_encoding(np.random.default_rng(0).exponential(size=(2, 6, 4)), np.ones((2, 6), bool))
    full = CandidateScorer(num_features=5, context_size=6, width=8, feature_bins=3)  # one extra feature
    full.warm_start_from(features_only)
    features, mask = torch.rand(2, 6, 5) * 3, torch.ones(2, 6, dtype=torch.bool)
    context, records = torch.randn(2, 6), torch.randn(2, 6, 6)
    torch.testing.assert_close(full(features, mask, context, records), features_only(features[..., :4], mask))
    with pytest.raises(ValueError, match="2 bins"):
        CandidateScorer(num_features=5, context_size=6, width=8, feature_bins=2).warm_start_from(features_only)


def relabeled(retriever: CityRetriever, mapping) -> CityRetriever:
    return CityRetriever(
        "relabeled", mapping(retriever.cell_ids), retriever.xy, retriever.latlon, retriever.poi_frequency,
        retriever.coordinate_mean, retriever.coordinate_std,
    )


def random_samples(retriever: CityRetriever, rng, batch_size: int = 2, history: int = 7, current: int = 2) -> dict:
    """Records on random cells of the city (positions jittered), random times, and a query."""
    rows = rng.integers(0, retriever.num_cells, (batch_size, history + current))
    xy = retriever.xy[rows] + rng.normal(0, 50, (*rows.shape, 2))
    days, hours = rng.integers(0, 7, rows.shape), rng.integers(0, 24, rows.shape)
    batch = {}
    for part, part_slice in (("history", slice(0, history)), ("current", slice(history, None))):
        batch[f"{part}_cell"] = retriever.cell_ids[rows[:, part_slice]]
        batch[f"{part}_coordinates"] = xy[:, part_slice]
        batch[f"{part}_day"], batch[f"{part}_hour"] = days[:, part_slice], hours[:, part_slice]
    batch.update(target_day=rng.integers(0, 7, batch_size), target_hour=rng.integers(0, 24, batch_size),
                 target_time_gap=rng.exponential(3.0, batch_size))
    return batch


def candidates_last_points(candidates, retriever: CityRetriever) -> np.ndarray:
    """Any valid points for a fallback ranking: the centres of each row's first candidate."""
    return retriever.xy[retriever.rows_of(candidates.cell_ids[:, 0])]


def test_one_scorer_serves_cities_of_any_size_and_id_range():
    rng = np.random.default_rng(0)
    small, large = make_retriever("small", num_cells=12, seed=1), make_retriever("large", num_cells=300, seed=2)
    large = relabeled(large, lambda ids: ids * 7 + 1_000_000)  # a disjoint, sparse id range
    scorer = CandidateScorer(num_features=candidate_feature_size(5, "at_time"), context_size=4, width=8)
    context = torch.randn(2, 4)
    for retriever, max_candidates in ((small, 6), (large, 40)):
        candidates = build_candidates(retriever, random_samples(retriever, rng), "at_time", 10, max_candidates)
        assert np.isin(candidates.cell_ids[candidates.mask], retriever.cell_ids).all()
        record_states = torch.from_numpy(candidates.record_weights) @ torch.randn(2, 9, 4)
        scores = scorer(torch.from_numpy(candidates.features), torch.from_numpy(candidates.mask), context,
                        record_states)
        assert scores.shape == (2, max_candidates) and torch.isfinite(scores[torch.from_numpy(candidates.mask)]).all()
        fallback, _ = retriever.query(candidates_last_points(candidates, retriever), 10)
        top = merge_rankings(candidates.cell_ids, scores, fallback, 10)
        assert top.shape == (2, 10) and all(len(set(row)) == 10 for row in top.tolist())


def test_features_do_not_depend_on_cell_ids():
    retriever = make_retriever("city", num_cells=40, seed=3)
    other = relabeled(retriever, lambda ids: 5_000 - ids * 3)  # same cells, reversed and spread ids
    batch = random_samples(retriever, np.random.default_rng(1), batch_size=4)
    relabel = {"history_cell": 5_000 - batch["history_cell"] * 3, "current_cell": 5_000 - batch["current_cell"] * 3}
    built = [build_candidates(retriever, batch, "at_time", 5, 16), build_candidates(other, {**batch, **relabel},
                                                                                      "at_time", 5, 16)]
    np.testing.assert_array_equal(built[0].features, built[1].features)
    np.testing.assert_array_equal(built[0].mask, built[1].mask)
    np.testing.assert_array_equal(5_000 - np.where(built[0].mask, built[0].cell_ids, 0) * 3,
                                  np.where(built[1].mask, built[1].cell_ids, 5_000))


def test_listwise_loss_is_cross_entropy_over_covered_samples():
    scores = torch.tensor([[1.0, 2.0, 3.0, 50.0], [0.0, 1.0, 2.0, 3.0], [4.0, 0.0, 0.0, 0.0]], requires_grad=True)
    cell_ids = torch.tensor([[5, 6, 7, -1], [5, 6, 7, 8], [-1, -1, -1, -1]])
    loss, covered = candidate_listwise_loss(scores, cell_ids, torch.tensor([6, 9, -1]))
    # Sample 0: the padding's score (50) is ignored; sample 1's true cell 9 is absent; a -1 target never hits padding.
    expected = -math.log(math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(3.0)))
    assert covered.tolist() == [True, False, False]
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert (scores.grad[1:] == 0).all() and scores.grad[0, 3] == 0


def test_listwise_loss_without_covered_samples_is_a_differentiable_zero():
    scorer = CandidateScorer(num_features=2, context_size=2, width=4)
    mask = torch.tensor([[True, False]])
    scores = scorer(torch.randn(1, 2, 2), mask, torch.randn(1, 2), torch.randn(1, 2, 2))
    loss, covered = candidate_listwise_loss(scores, np.array([[3, -1]]), np.array([4]))
    assert loss.item() == 0.0 and not covered.any()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in scorer.parameters())
