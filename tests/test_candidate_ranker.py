"""The candidate ranker: hand-checked features, unknown cell ids, city-agnostic scoring, the listwise loss, merging."""

import math

import numpy as np
import pytest
import torch
from conftest import make_retriever

from nextlocllm_hf import CityRetriever
from nextlocllm_hf.modeling.candidates_nextlocllm import (
    CandidateScorer,
    build_candidates,
    candidate_feature_size,
    candidate_listwise_loss,
    merge_rankings,
)

ORIGIN = np.array([-8_235_000.0, 4_970_000.0])  # realistic Web Mercator magnitudes: offsets must survive float64


def tiny_retriever(cell_ids=(10, 20, 30, 40)) -> CityRetriever:
    """Four cells at (0, 0), (1000, 0), (0, 1000), (3000, 3000) m from ORIGIN, std (500, 1000), 2 POI classes."""
    xy = ORIGIN + np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0], [3000.0, 3000.0]])
    poi = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.25, 0.75]])
    return CityRetriever("tiny", list(cell_ids), xy, np.zeros((4, 2)), poi, ORIGIN, [500.0, 1000.0])


def test_features_match_hand_computed_values():
    # Records t0..t5 = 10, 20, 10, <unknown 99>, 20 | 30; last point 100 m east of cell 10; one anchor near cell 40.
    # Cell 40 is the anchor's nearest cell, 20 its second (already a record cell: kept once, at its record place).
    candidates = build_candidates(
        tiny_retriever(),
        history_cell=np.array([[10, 20, 10, 99]]),
        current_cell=np.array([[20, 30]]),
        last_point=(ORIGIN + [100.0, 0.0])[None],
        anchors=(ORIGIN + [2900.0, 2800.0])[None, None],
        neighbors_per_anchor=2,
        max_candidates=5,
    )
    np.testing.assert_array_equal(candidates.cell_ids, [[30, 20, 10, 40, -1]])
    np.testing.assert_array_equal(candidates.mask, [[True, True, True, True, False]])
    np.testing.assert_array_equal(candidates.num_unknown_records, [1])
    assert candidates.features.dtype == np.float32
    assert candidates.features.shape == (1, 5, candidate_feature_size(2)) == (1, 5, 13)
    # last offset / std, anchor offset / std, anchor distance, POI (2), record share (of all 6 records, the unknown
    # one included), current share (of 2), recency 1 / (1 + records after the last visit), visited, is last, and the
    # Markov step out of the last cell (30 was never visited before t5: 0 for all).
    expected = [
        [-0.2, 1.0, -5.8, -1.8, math.sqrt(5.8**2 + 1.8**2), 0.5, 0.5, 1 / 6, 1 / 2, 1.0, 1.0, 1.0, 0.0],  # 30, t5
        [1.8, 0.0, -3.8, -2.8, math.sqrt(3.8**2 + 2.8**2), 0.0, 1.0, 2 / 6, 1 / 2, 1 / 2, 1.0, 0.0, 0.0],  # 20, t4
        [-0.2, 0.0, -5.8, -2.8, math.sqrt(5.8**2 + 2.8**2), 1.0, 0.0, 2 / 6, 0.0, 1 / 4, 1.0, 0.0, 0.0],  # 10, t2
        [5.8, 3.0, 0.2, 0.2, math.sqrt(0.08), 0.25, 0.75, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # 40, never visited
        [0.0] * 13,  # padding
    ]
    np.testing.assert_allclose(candidates.features[0], expected, rtol=1e-6, atol=1e-6)


def test_truncation_interleaves_anchors_and_uses_the_nearest_anchor():
    # No record cell is known; two anchors: one on cell 30, one on cell 20. Rank-major order puts each anchor's
    # nearest cell first, so max_candidates=2 keeps both anchors' own cells.
    anchors = (ORIGIN + np.array([[0.0, 1000.0], [1000.0, 0.0]]))[None]
    args = dict(history_cell=[[99]], current_cell=[[98]], last_point=ORIGIN[None], anchors=anchors)
    candidates = build_candidates(tiny_retriever(), **args, neighbors_per_anchor=2, max_candidates=2)
    np.testing.assert_array_equal(candidates.cell_ids, [[30, 20]])
    np.testing.assert_allclose(candidates.features[0, :, 2:5], np.zeros((2, 3)), atol=1e-12)
    # Cell 10 lies 1000 m from both anchors; nearest is decided in std units (500 m in x, 1000 m in y), where its
    # offsets are (-2, 0) from the (1000, 0) anchor and (0, -1) from the (0, 1000) one: the latter wins.
    candidates = build_candidates(tiny_retriever(), **args, neighbors_per_anchor=4, max_candidates=4)
    np.testing.assert_array_equal(candidates.cell_ids, [[30, 20, 10, 40]])
    np.testing.assert_allclose(candidates.features[0, 2, 2:5], [0.0, -1.0, 1.0], atol=1e-12)
    # neighbors_per_anchor beyond the city's 4 cells is capped, not an error.
    wide = build_candidates(tiny_retriever(), **args, neighbors_per_anchor=50, max_candidates=6)
    np.testing.assert_array_equal(wide.cell_ids, [[30, 20, 10, 40, -1, -1]])


def test_unknown_cell_ids_are_skipped_and_counted():
    retriever = tiny_retriever()
    candidates = build_candidates(
        retriever,
        history_cell=np.array([[-1, 2**40, 5], [10, -7, 10]]),
        current_cell=np.array([[41], [31]]),
        last_point=np.stack([ORIGIN, ORIGIN]),
        anchors=np.stack([ORIGIN, ORIGIN])[:, None],
        neighbors_per_anchor=1,
        max_candidates=3,
    )
    np.testing.assert_array_equal(candidates.num_unknown_records, [4, 2])
    # Sample 0 knows no record: only the anchor's neighbour, with all visit features zero.
    np.testing.assert_array_equal(candidates.cell_ids, [[10, -1, -1], [10, -1, -1]])
    np.testing.assert_array_equal(candidates.features[0, 0, -6:], np.zeros(6))
    # Sample 1: cell 10 holds 2 of 4 records (unknown ones count); 1 record follows its last visit; the last record
    # (31) is unknown, so no candidate is the last record's cell.
    np.testing.assert_allclose(candidates.features[1, 0, -6:], [0.5, 0.0, 1 / 2, 1.0, 0.0, 0.0], rtol=1e-6)


def test_markov_step_counts_what_followed_the_last_cell():
    # Records 10, 20, 10, 30, 10 | 20, 10: the last cell 10 was left three times before, to 20, 30 and 20.
    candidates = build_candidates(
        tiny_retriever(), history_cell=[[10, 20, 10, 30, 10]], current_cell=[[20, 10]], last_point=ORIGIN[None],
        anchors=ORIGIN[None, None], neighbors_per_anchor=0, max_candidates=3,
    )
    np.testing.assert_array_equal(candidates.cell_ids, [[10, 20, 30]])
    np.testing.assert_allclose(candidates.features[0, :, -1], [0.0, 2 / 3, 1 / 3], rtol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"history_cell": [[10.0, 20.0]]}, "integer cell ids"),
        ({"current_cell": np.zeros((1, 0), dtype=np.int64)}, "no records"),
        ({"anchors": np.zeros((1, 0, 2))}, "anchors has shape"),
        ({"anchors": np.full((1, 1, 2), np.nan)}, "NaN or inf"),
        ({"last_point": np.zeros(2)}, "last_point has shape"),
        ({"max_candidates": 0}, "max_candidates=0"),
    ],
)
def test_bad_inputs_raise_value_errors(overrides, message):
    args = dict(
        history_cell=[[10, 20]], current_cell=[[30]], last_point=ORIGIN[None], anchors=ORIGIN[None, None],
        neighbors_per_anchor=1, max_candidates=4,
    )
    with pytest.raises(ValueError, match=message):
        build_candidates(tiny_retriever(), **{**args, **overrides})


def test_scorer_is_permutation_equivariant_and_masks():
    torch.manual_seed(0)
    scorer = CandidateScorer(num_features=7, context_size=5, width=16)
    features, context = torch.randn(3, 6, 7), torch.randn(3, 5)
    mask = torch.rand(3, 6) > 0.3
    permutation = torch.randperm(6)
    scores = scorer(features, mask, context)
    permuted = scorer(features[:, permutation], mask[:, permutation], context)
    torch.testing.assert_close(permuted, scores[:, permutation])
    assert (scores[~mask] == torch.finfo(scores.dtype).min).all() and torch.isfinite(scores[mask]).all()


def test_all_masked_row_gives_no_nan_in_bfloat16():
    scorer = CandidateScorer(num_features=3, context_size=4, width=8).to(torch.bfloat16)
    mask = torch.tensor([[True, False], [False, False]])
    scores = scorer(torch.randn(2, 2, 3), mask, torch.randn(2, 4))
    assert scores.dtype == torch.bfloat16
    probabilities = scores.float().softmax(dim=-1)
    torch.testing.assert_close(probabilities, torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


def relabeled(retriever: CityRetriever, mapping) -> CityRetriever:
    return CityRetriever(
        "relabeled", mapping(retriever.cell_ids), retriever.xy, retriever.latlon, retriever.poi_frequency,
        retriever.coordinate_mean, retriever.coordinate_std,
    )


def test_one_scorer_serves_cities_of_any_size_and_id_range():
    rng = np.random.default_rng(0)
    small, large = make_retriever("small", num_cells=12, seed=1), make_retriever("large", num_cells=300, seed=2)
    large = relabeled(large, lambda ids: ids * 7 + 1_000_000)  # a disjoint, sparse id range
    scorer = CandidateScorer(num_features=candidate_feature_size(5), context_size=4, width=8)
    context = torch.randn(2, 4)
    for retriever, max_candidates in ((small, 6), (large, 40)):
        rows = rng.integers(0, retriever.num_cells, (2, 9))
        candidates = build_candidates(
            retriever, retriever.cell_ids[rows[:, :7]], retriever.cell_ids[rows[:, 7:]], retriever.xy[rows[:, -1]],
            retriever.xy[rng.integers(0, retriever.num_cells, (2, 1))], 10, max_candidates,
        )
        assert np.isin(candidates.cell_ids[candidates.mask], retriever.cell_ids).all()
        scores = scorer(torch.from_numpy(candidates.features), torch.from_numpy(candidates.mask), context)
        assert scores.shape == (2, max_candidates) and torch.isfinite(scores[torch.from_numpy(candidates.mask)]).all()
        fallback, _ = retriever.query(retriever.xy[rows[:, -1]], 10)
        top = merge_rankings(candidates.cell_ids, scores, fallback, 10)
        assert top.shape == (2, 10) and all(len(set(row)) == 10 for row in top.tolist())


def test_features_do_not_depend_on_cell_ids():
    retriever = make_retriever("city", num_cells=40, seed=3)
    other = relabeled(retriever, lambda ids: 5_000 - ids * 3)  # same cells, reversed and spread ids
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 40, (4, 12))
    anchors = retriever.xy[rng.integers(0, 40, (4, 2))] + rng.normal(0, 100, (4, 2, 2))
    built = [
        build_candidates(city, city.cell_ids[rows[:, :9]], city.cell_ids[rows[:, 9:]], retriever.xy[rows[:, -1]],
                         anchors, 5, 16)
        for city in (retriever, other)
    ]
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
    scores = scorer(torch.randn(1, 2, 2), mask, torch.randn(1, 2))
    loss, covered = candidate_listwise_loss(scores, np.array([[3, -1]]), np.array([4]))
    assert loss.item() == 0.0 and not covered.any()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in scorer.parameters())


def test_merge_rankings_puts_scored_candidates_first_then_fallback():
    candidate_ids = np.array([[5, 7, 9, -1], [-1, -1, -1, -1]])
    scores = torch.tensor([[0.1, 0.9, 0.5, -1e30], [0.0, 0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    fallback = np.array([[7, 1, 1, 2, 0], [3, 4, 3, 8, 6]])
    top = merge_rankings(candidate_ids, scores, fallback, 4)
    # Row 0: candidates by score (7, 9, 5), then the fallback minus 7; row 1 has only padding: the fallback, deduped.
    assert top.dtype == np.int64
    np.testing.assert_array_equal(top, [[7, 9, 5, 1], [3, 4, 8, 6]])
    np.testing.assert_array_equal(merge_rankings(candidate_ids, scores, fallback, 2), [[7, 9], [3, 4]])
    with pytest.raises(ValueError, match="sample 1 has only 4 distinct cells"):
        merge_rankings(candidate_ids, scores, fallback, 5)
