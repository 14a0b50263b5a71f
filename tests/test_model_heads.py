"""The heads beyond the paper inside the model: the Gaussian mixture and the query-time-aware candidate ranker."""

import numpy as np
import pytest
import torch
from conftest import build_model, make_batch, make_retriever
from transformers import AutoModel

from nextlocllm_hf.modeling.mixture_nextlocllm import mixture_log_density_np, split_mixture_parameters


@pytest.fixture
def city():
    return make_retriever("nyc", num_cells=60)


def test_mixture_head_outputs_loss_and_density_ranking(tiny_backbone, city):
    model = build_model(tiny_backbone, head_type="mixture", num_mixture_components=3).eval()
    model.add_city(city)
    batch = make_batch(model.config, city, batch_size=4)
    with torch.no_grad():
        out = model(**batch, city="nyc", top_k=8)
    assert out.mixture_means.shape == (4, 3, 2) and out.mixture_scales.shape == (4, 3, 2)
    torch.testing.assert_close(out.mixture_weights.sum(-1), torch.ones(4, dtype=torch.float64))
    # The reported point is the heaviest mode.
    heaviest = out.mixture_weights.argmax(-1)
    torch.testing.assert_close(out.coordinates, out.mixture_means[torch.arange(4), heaviest])
    # The loss is the mean negative log-likelihood of the true position in normalized units.
    with torch.no_grad():
        raw = model.mixture_head(model(**batch, city="nyc", output_hidden_states=True).hidden_states[-1][:, -1])
    means, log_scales, log_weights = split_mixture_parameters(raw, 3)
    std, mean = torch.tensor(city.coordinate_std), torch.tensor(city.coordinate_mean)
    targets = ((batch["labels"] - mean) / std).float()
    scales = log_scales.exp()
    log_normal = (-0.5 * ((targets[:, None] - means) / scales) ** 2 - log_scales - 0.5 * np.log(2 * np.pi)).sum(-1)
    expected = -torch.logsumexp(log_weights + log_normal, dim=-1).mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    # Cells come out in the order of the mixture density at their centres (brute force over all cells).
    density = mixture_log_density_np(
        np.broadcast_to(city.xy, (4, *city.xy.shape)), out.mixture_means.numpy(), out.mixture_scales.numpy(),
        np.log(out.mixture_weights.numpy()),
    )
    brute = city.cell_ids[np.argsort(-density, axis=1, kind="stable")[:, :8]]
    np.testing.assert_array_equal(out.top_k_cells.numpy(), brute)
    # What it ranked by: the density at the listed cells' centres, highest first.
    listed = np.take_along_axis(density, np.argsort(-density, axis=1, kind="stable")[:, :8], axis=1)
    np.testing.assert_allclose(out.top_k_scores.numpy(), listed, rtol=1e-9)


def test_mixture_head_trains_and_round_trips(tiny_backbone, city, tmp_path):
    model = build_model(tiny_backbone, head_type="mixture", num_mixture_components=2,
                        mixture_distance_loss_weight=0.5)
    model.add_city(city)
    batch = make_batch(model.config, city)
    model(**batch, city="nyc").loss.backward()
    assert model.mixture_head.weight.grad.abs().sum() > 0
    assert not hasattr(model, "regression_head")
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.head_type == "mixture" and loaded.config.num_mixture_components == 2
    first, second = model.predict(batch, "nyc", k=5), loaded.predict(batch, "nyc", k=5)
    np.testing.assert_array_equal(first.top_k_cells.numpy(), second.top_k_cells.numpy())


@pytest.mark.parametrize("head_type, task_mode", [("point_ranker", "next"), ("mixture_ranker", "next"),
                                                 ("point_ranker", "at_time")])
def test_candidate_ranker_ranks_its_candidates_first_and_trains(tiny_backbone, city, head_type, task_mode):
    model = build_model(tiny_backbone, head_type=head_type, num_mixture_components=3,
                        candidate_neighbors=4, max_candidates=20, task_mode=task_mode)
    model.add_city(city)
    batch = make_batch(model.config, city, batch_size=3)
    out = model(**batch, city="nyc", top_k=10)
    assert out.candidate_cells.shape == (3, 20) and out.candidate_scores.shape == (3, 20)
    out.loss.backward()
    # The context path starts at zero: the readout state and the pooled record states get gradients at once; their
    # product (query x records) only after one step has made the record projection non-zero.
    scorer = model.candidate_scorer
    assert scorer.context_projection.weight.grad.abs().sum() > 0 and scorer.record_projection.weight.grad.abs().sum() > 0
    assert scorer.query_projection.weight.grad.abs().sum() == 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    model(**batch, city="nyc").loss.backward()
    assert scorer.query_projection.weight.grad.abs().sum() > 0
    for row in range(3):
        real = out.candidate_cells[row] >= 0
        by_score = out.candidate_cells[row][real][torch.argsort(out.candidate_scores[row][real], descending=True,
                                                                stable=True)]
        top = out.top_k_cells[row].tolist()
        assert top == by_score[:10].tolist()[: len(top)]
        # Each listed cell's score is its candidate score; a cell only the position head listed has none (NaN).
        score_of = dict(zip(out.candidate_cells[row][real].tolist(), out.candidate_scores[row][real].tolist()))
        for cell, score in zip(top, out.top_k_scores[row].tolist()):
            assert score == pytest.approx(score_of[cell], rel=1e-6) if cell in score_of else np.isnan(score)
        # The input records' own cells are candidates.
        assert set(batch["current_cell"][row].tolist()) <= set(out.candidate_cells[row].tolist())


def test_candidate_ranker_has_no_per_cell_parameters_and_ranks_a_new_city(tiny_backbone, city, tmp_path):
    model = build_model(tiny_backbone, head_type="mixture_ranker", num_mixture_components=2, max_candidates=16)
    model.add_city(city)
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    other = make_retriever("calgary", num_cells=97, seed=5, centre=(-12_710_000.0, 6_610_000.0))
    other.cell_ids = other.cell_ids + 10_000  # another id range: nothing in the weights refers to an id
    loaded.add_city(other)
    batch = make_batch(loaded.config, other, batch_size=4, seed=2)
    result = loaded.predict(batch, "calgary", k=12)
    assert result.top_k_cells.shape == (4, 12)
    assert set(result.top_k_cells.flatten().tolist()) <= set(other.cell_ids.tolist())
    assert all(len(set(row)) == 12 for row in result.top_k_cells.tolist())
    assert not any(p.shape[0] in (city.num_cells, other.num_cells) for p in loaded.candidate_scorer.parameters())


def test_candidate_ranker_scores_depend_on_the_query_time(tiny_backbone, city):
    model = build_model(tiny_backbone, head_type="point_ranker", task_mode="at_time", max_candidates=20).eval()
    model.add_city(city)
    batch = make_batch(model.config, city, batch_size=3)
    first = model(**batch, city="nyc").candidate_scores
    later = model(**{**batch, "target_hour": (batch["target_hour"] + 8) % 24}, city="nyc").candidate_scores
    assert not torch.equal(first, later)


def test_candidate_ranker_needs_cells_and_city(tiny_backbone, city):
    model = build_model(tiny_backbone, head_type="point_ranker")
    model.add_city(city)
    batch = make_batch(model.config, city)
    del batch["history_cell"]
    with pytest.raises(ValueError, match="history_cell"):
        model(**batch, city="nyc")
    batch = make_batch(model.config, city)
    with pytest.raises(ValueError, match="head_type='point_ranker' \\(the candidate ranker\\) needs city="):
        model(**batch, coordinate_mean=city.coordinate_mean, coordinate_std=city.coordinate_std)
    batch["current_cell"] = batch["current_cell"][:, :1]
    with pytest.raises(ValueError, match="current_cell has shape"):
        model(**batch, city="nyc")


def test_every_configurable_head_type_has_a_registry_entry():
    """The config validates `head_type` against its names; the model builds it from the registry: they must agree."""
    from nextlocllm_hf.modeling import configuration_nextlocllm, heads_nextlocllm

    assert tuple(heads_nextlocllm.HEAD_TYPES) == configuration_nextlocllm.HEAD_TYPES


def test_the_loss_is_the_sum_of_its_parts_each_returned_apart(tiny_backbone, city):
    """Metres and a weighted listwise loss differ by orders of magnitude: the output gives each part (train.py shows
    them apart), appended after the older fields so that `to_tuple()` keeps their positions."""
    model = build_model(tiny_backbone, head_type="point_ranker", regression_target="offset_from_last",
                        candidate_loss_weight=100.0, use_duration_head=True, max_candidates=16).eval()
    model.add_city(city)
    batch = make_batch(model.config, city, batch_size=4)
    batch["duration_labels"] = torch.rand(4) * 3
    out = model(**batch, city="nyc")
    assert out.position_loss > 0 and out.duration_loss >= 0 and out.ranking_loss > 0
    torch.testing.assert_close(out.loss, out.position_loss + out.duration_loss + out.ranking_loss)
    tuple_out = out.to_tuple()
    assert tuple_out[0] is out.loss and tuple_out[-3:] == (out.position_loss, out.duration_loss, out.ranking_loss)
    without_labels = model(**{k: v for k, v in batch.items() if k not in ("labels", "duration_labels")}, city="nyc")
    assert (without_labels.loss, without_labels.position_loss, without_labels.ranking_loss) == (None, None, None)
