"""The ranking (`modeling/ranking_nextlocllm.py`): a head's scored candidates merged with a fallback, a short list
padded with the nearest cells, and a batch of several cities ranked to one width."""

import numpy as np
import pytest
import torch
from conftest import make_retriever
from helpers import tiny_retriever

from nextlocllm_hf.metrics import NO_CELL
from nextlocllm_hf.modeling.mixture_nextlocllm import rank_cells_by_mixture_density
from nextlocllm_hf.modeling.ranking_nextlocllm import merge_rankings, pad_with_nearest, rank_batch
from nextlocllm_hf.modeling.retrieval_nextlocllm import city_groups


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


def test_pad_with_nearest_keeps_the_list_then_adds_the_nearest_unlisted_cells():
    retriever = tiny_retriever()  # cells 10, 20, 30, 40
    points = retriever.xy[[0, 3]] + 1.0  # next to cell 10, next to cell 40
    ranked = np.array([[30, -1, -1], [-1, -1, -1]])
    padded = pad_with_nearest(ranked, points, retriever, 3)
    nearest = retriever.query(points, 3)[0]
    assert padded.dtype == np.int64
    np.testing.assert_array_equal(padded[0], [30, *[c for c in nearest[0] if c != 30][:2]])
    np.testing.assert_array_equal(padded[1], nearest[1])
    assert pad_with_nearest(np.zeros((0, 3), dtype=np.int64), np.zeros((0, 2)), retriever, 3).shape == (0, 3)


def test_the_models_ranking_stops_at_a_small_citys_last_cell():
    """`rank_batch` at k=20 over a batch mixing a 3-cell and a 50-cell city (by distance and by mixture density): the
    small city's rows hold its 3 cells as ranked at k=3, then NO_CELL at an infinite distance and a NaN score; the
    large city's rows are its top 20. One width, so batches gather across processes."""
    retrievers = {"small": make_retriever("small", num_cells=3), "large": make_retriever("large", num_cells=50, seed=1)}
    small, large = retrievers["small"], retrievers["large"]
    points = np.concatenate([small.xy + 30.0, large.xy[:3] - 40.0])
    order = np.array([0, 3, 1, 4, 2, 5])  # rows of `points` in batch order
    points = points[order]
    groups = city_groups(["small", "large", "small", "large", "small", "large"], 6, retrievers.__getitem__)
    assert [(g.retriever.name, g.rows.tolist()) for g in groups] == [("small", [0, 2, 4]), ("large", [1, 3, 5])]
    rng = np.random.default_rng(0)
    means = points[:, None, :] + rng.normal(0, 300, (6, 2, 2))
    scales, log_weights = np.full((6, 2, 2), 400.0), np.log(np.full((6, 2), 0.5))

    def by_distance(city, depth):
        cells, distances = city.retriever.query(points[city.rows], depth)
        return cells, -distances

    def by_density(city, depth):
        rows = city.rows
        return rank_cells_by_mixture_density(city.retriever, means[rows], scales[rows], log_weights[rows], depth)

    for rank_city in (by_distance, by_density):
        cells, distances, scores = rank_batch(torch.tensor(points), groups, 20, rank_city)
        assert cells.shape == distances.shape == scores.shape == (6, 20)
        for group, depth in zip(groups, (3, 20)):
            rows = group.rows
            expected, expected_scores = rank_city(group, depth)
            np.testing.assert_array_equal(cells[rows, :depth].numpy(), expected)
            np.testing.assert_array_equal(scores[rows, :depth].numpy(), expected_scores)
            assert (cells[rows, depth:] == NO_CELL).all() and torch.isinf(distances[rows, depth:]).all()
            assert torch.isnan(scores[rows, depth:]).all() and torch.isfinite(distances[rows, :depth]).all()
