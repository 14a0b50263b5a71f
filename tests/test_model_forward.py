"""Forward pass of NextLocLLMForCoordinateRegression: outputs, loss, and that every config switch matters."""

import pytest
import torch
from conftest import build_model, make_batch, make_retriever

from nextlocllm_hf import NextLocLLMForCoordinateRegression


def differs(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Outputs differ beyond float32 rounding (compare normalized outputs: metres near 1e7 hide small changes)."""
    return not torch.allclose(first, second, rtol=0, atol=1e-6)


@pytest.fixture
def city():
    return make_retriever("nyc", num_cells=40)


def test_outputs_have_documented_shapes(tiny_backbone, city):
    model = build_model(tiny_backbone).eval()
    model.add_city(city)
    batch = make_batch(model.config, city, batch_size=4)
    out = model(**batch, city="nyc", top_k=6, output_hidden_states=True)
    assert out.coordinates.shape == (4, 2) and out.coordinates.dtype == torch.float64
    assert out.normalized_coordinates.shape == (4, 2)
    assert out.top_k_cells.shape == (4, 6) and out.top_k_distances.shape == (4, 6)
    assert torch.all(out.top_k_distances[:, 1:] >= out.top_k_distances[:, :-1])
    assert out.loss.ndim == 0 and out.duration is None
    # The prompt runs once and is shared, so per-sample hidden states cover the record tokens.
    expected_tokens = model.config.history_length + model.config.current_length
    assert out.hidden_states[-1].shape == (4, expected_tokens, model.config.hidden_size)
    # De-normalization uses the city's statistics.
    expected = out.normalized_coordinates.double() * torch.tensor(city.coordinate_std) + torch.tensor(city.coordinate_mean)
    torch.testing.assert_close(out.coordinates, expected)


def test_loss_is_mean_euclidean_distance_in_metres(tiny_backbone, city):
    model = build_model(tiny_backbone)
    model.add_city(city)
    batch = make_batch(model.config, city, batch_size=2)
    with torch.no_grad():
        model.regression_head.weight.zero_()  # prediction = the city's mean position exactly
    mean = torch.tensor(city.coordinate_mean)
    batch["labels"] = torch.stack([mean + torch.tensor([3.0, 4.0]), mean + torch.tensor([-6.0, 8.0])])
    out = model(**batch, city="nyc")
    # distances 5 m and 10 m -> mean 7.5 m
    assert out.loss.item() == pytest.approx(7.5, abs=1e-6)


def test_explicit_statistics_equal_city_statistics(tiny_backbone, city):
    model = build_model(tiny_backbone).eval()
    model.add_city(city)
    batch = make_batch(model.config, city)
    by_city = model(**batch, city="nyc")
    by_tensors = model(
        **batch, coordinate_mean=torch.tensor(city.coordinate_mean), coordinate_std=torch.tensor(city.coordinate_std)
    )
    torch.testing.assert_close(by_city.coordinates, by_tensors.coordinates, rtol=0, atol=0)


def test_the_statistics_come_from_each_samples_city_and_are_returned(tiny_backbone, city):
    """A batch mixing cities is normalized with each sample's city's retriever statistics, which the output returns
    (as PatchTST returns loc/scale); the same sample normalized alone gives the same point. Statistics given beside a
    city are refused: one object holds a city's statistics."""
    model = build_model(tiny_backbone).eval()
    other = make_retriever("calgary", num_cells=30, seed=3, centre=(-12_690_000.0, 6_630_000.0))
    model.add_city(city)
    model.add_city(other)
    batch = make_batch(model.config, city, batch_size=4)
    names = ["nyc", "calgary", "calgary", "nyc"]
    mixed = model(**batch, city=names, top_k=5)
    for row, name in enumerate(names):
        retriever = model.retriever(name)
        assert mixed.coordinate_mean[row].tolist() == retriever.coordinate_mean.tolist()
        assert mixed.coordinate_std[row].tolist() == retriever.coordinate_std.tolist()
        assert set(mixed.top_k_cells[row].tolist()) <= set(retriever.cell_ids.tolist())
    alone = model(**{key: value[1:2] for key, value in batch.items()}, city="calgary")
    torch.testing.assert_close(alone.normalized_coordinates[0], mixed.normalized_coordinates[1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="give city= or coordinate_mean/coordinate_std, not both"):
        model(**batch, city="nyc", coordinate_mean=torch.tensor(city.coordinate_mean),
              coordinate_std=torch.tensor(city.coordinate_std))


def test_top_k_scores_are_what_the_head_ranked_by(tiny_backbone, city):
    """The paper's head ranks by distance: its scores are minus the distances, in descending order."""
    model = build_model(tiny_backbone).eval()
    model.add_city(city)
    out = model(**make_batch(model.config, city, batch_size=3), city="nyc", top_k=6)
    torch.testing.assert_close(out.top_k_scores, -out.top_k_distances, rtol=0, atol=1e-6)
    assert torch.all(out.top_k_scores[:, 1:] <= out.top_k_scores[:, :-1])


def test_duration_head_adds_weighted_log_duration_mse(tiny_backbone, city):
    model = build_model(tiny_backbone, use_duration_head=True, duration_loss_weight=0.5)
    model.add_city(city)
    batch = make_batch(model.config, city)
    distance_only = model(**batch, city="nyc")
    batch["duration_labels"] = torch.tensor([0.5, 2.0, 7.0])
    with_duration = model(**batch, city="nyc")
    log_prediction = torch.log1p(with_duration.duration)
    expected = distance_only.loss + 0.5 * torch.mean((log_prediction - torch.log1p(batch["duration_labels"])) ** 2)
    torch.testing.assert_close(with_duration.loss, expected, rtol=1e-5, atol=1e-4)
    assert with_duration.duration.shape == (3,) and bool(torch.all(with_duration.duration >= 0))


def test_at_time_model_reads_the_query(tiny_backbone, city):
    model = build_model(tiny_backbone, task_mode="at_time").eval()
    model.add_city(city)
    batch = make_batch(model.config, city)
    first = model(**batch, city="nyc").normalized_coordinates
    for name, change in (("target_hour", lambda v: (v + 6) % 24), ("target_day", lambda v: (v + 3) % 7),
                         ("target_time_gap", lambda v: v + 10.0)):
        changed = {**batch, name: change(batch[name])}
        assert differs(first, model(**changed, city="nyc").normalized_coordinates), name


def models_in_eval_mode(tiny_backbone, city, *overrides: dict) -> list:
    """One model per set of config overrides, each knowing `city`."""
    models = [build_model(tiny_backbone, **settings).eval() for settings in overrides]
    for model in models:
        model.add_city(city)
    return models


def test_each_task_mode_refuses_the_other_modes_input(tiny_backbone, city):
    at_time, next_model = models_in_eval_mode(tiny_backbone, city, {"task_mode": "at_time"}, {})
    query_batch = make_batch(at_time.config, city)
    plain_batch = make_batch(next_model.config, city)
    with pytest.raises(ValueError, match=r"target_day is required: this model was trained for task_mode='at_time'"):
        at_time(**plain_batch, city="nyc")
    with pytest.raises(ValueError, match=r"trained for task_mode='next'"):
        next_model(**query_batch, city="nyc")
    with pytest.raises(ValueError, match=r"target_time_gap holds -1.0"):
        at_time(**{**query_batch, "target_time_gap": torch.full((3,), -1.0)}, city="nyc")


def test_offset_head_starts_at_the_last_point_and_paper_head_does_not(tiny_backbone, city):
    offset, paper = models_in_eval_mode(tiny_backbone, city, {"regression_target": "offset_from_last"}, {})
    batch = make_batch(offset.config, city)
    last = batch["current_coordinates"][:, -1].double()
    torch.testing.assert_close(offset(**batch, city="nyc").coordinates, last, rtol=0, atol=1e-9)
    assert differs(paper(**batch, city="nyc").coordinates, last)
    # The offset is in units of the city's std: a head output of (1, -2) lands 1 std east, 2 std south of the point.
    with torch.no_grad():
        offset.regression_head.weight.zero_()
    std = torch.as_tensor(city.coordinate_std)
    out = offset(**batch, city="nyc")
    torch.testing.assert_close(out.coordinates - last, out.normalized_coordinates.double() * std)


@pytest.mark.parametrize(
    "overrides, attribute",
    [
        ({"use_prompt": False}, None),
        ({"use_llm_poi": False}, "poi_embedding"),
        ({"poi_text_encoding": "hidden_states"}, None),
    ],
)
def test_switches_change_the_model(tiny_backbone, city, overrides, attribute):
    torch.manual_seed(0)
    reference = build_model(tiny_backbone).eval()
    torch.manual_seed(0)
    variant = build_model(tiny_backbone, **overrides).eval()
    for model in (reference, variant):
        model.add_city(city)
    batch = make_batch(reference.config, city)
    assert differs(
        reference(**batch, city="nyc").normalized_coordinates, variant(**batch, city="nyc").normalized_coordinates
    )
    if attribute:
        assert hasattr(variant, attribute) and not hasattr(reference, attribute)
    if overrides.get("use_prompt") is False:
        assert variant.config.prompt_length == 0 and variant.prompt_token_ids.numel() == 0
    if "poi_text_encoding" in overrides:
        assert differs(reference.poi_text_embeddings, variant.poi_text_embeddings)


def test_poi_frequencies_drive_the_llm_poi_embedding(tiny_backbone, city):
    model = build_model(tiny_backbone).eval()
    model.add_city(city)
    batch = make_batch(model.config, city)
    first = model(**batch, city="nyc").normalized_coordinates
    batch["current_poi"] = batch["current_poi"].flip(-1)
    assert differs(first, model(**batch, city="nyc").normalized_coordinates)


def test_dummy_inputs_are_a_valid_batch(tiny_backbone):
    model = build_model(tiny_backbone, task_mode="at_time")
    out = model(**model.dummy_inputs)
    assert out.coordinates.shape == (2, 2)


def test_model_from_bare_config_refuses_to_run_without_text_features(tiny_backbone):
    config = build_model(tiny_backbone).config
    model = NextLocLLMForCoordinateRegression(config)
    with pytest.raises(ValueError, match="encode_text_features"):
        model(**model.dummy_inputs)


def test_predict_returns_top_k_of_the_named_city(tiny_backbone, city):
    model = build_model(tiny_backbone).eval()
    model.add_city(city)
    other = make_retriever("calgary", num_cells=30, seed=3, centre=(-12_710_000.0, 6_610_000.0))
    model.add_city(other)
    batch = make_batch(model.config, city)
    batch["user_id"] = ["a", "b", "c"]  # extra columns are ignored
    result = model.predict(batch, city="calgary", k=4)
    assert set(result.top_k_cells.flatten().tolist()) <= set(other.cell_ids.tolist())
    mixed = model.predict(batch, city=["nyc", "calgary", "nyc"], k=4)
    assert set(mixed.top_k_cells[1].tolist()) <= set(other.cell_ids.tolist())
    assert set(mixed.top_k_cells[0].tolist()) <= set(city.cell_ids.tolist())
