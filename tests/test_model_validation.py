"""Bad input gets a ValueError that names the field and the value, before anything reaches torch internals."""

import math

import pytest
import torch
from conftest import build_model, make_batch, make_retriever


@pytest.fixture(scope="module")
def model_and_batch(request, tmp_path_factory):
    from conftest import TINY_BACKBONES, build_tokenizer

    tokenizer = build_tokenizer()
    folder = tmp_path_factory.mktemp("tiny-validation")
    TINY_BACKBONES["llama"](len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model = build_model(str(folder))
    city = make_retriever("nyc", num_cells=20)
    model.add_city(city)
    return model, make_batch(model.config, city)


def corrupt(batch, name, edit):
    batch = {key: value.clone() for key, value in batch.items()}
    batch[name] = edit(batch[name])
    return batch


def set_first(value):
    def edit(tensor):
        tensor.view(-1)[0] = value
        return tensor

    return edit


BAD_INPUTS = [
    ("history_coordinates", lambda t: t[:, :-1], r"history_coordinates has shape \(3, 7, 2\), expected \(3, 8, 2\)"),
    ("current_day", lambda t: t[:, :2], r"current_day has shape \(3, 2\), expected \(3, 3\)"),
    ("history_coordinates", set_first(math.nan), r"history_coordinates holds a non-finite value \(nan\)"),
    ("current_coordinates", set_first(math.inf), r"current_coordinates holds a non-finite value \(inf\)"),
    ("history_hour", set_first(24), r"history_hour holds 24, expected values in 0..23"),
    ("current_hour", set_first(-1), r"current_hour holds -1, expected values in 0..23"),
    ("history_day", set_first(7), r"history_day holds 7, expected values in 0..6"),
    ("current_duration", set_first(-0.5), r"current_duration holds -0.5, expected values >= 0"),
    ("history_poi", lambda t: t[..., :4], r"history_poi has shape \(3, 8, 4\), expected \(3, 8, 5\)"),
    ("labels", set_first(math.nan), r"labels holds a non-finite value"),
]


@pytest.mark.parametrize("name, edit, message", BAD_INPUTS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_INPUTS)])
def test_bad_field_is_named(model_and_batch, name, edit, message):
    model, batch = model_and_batch
    with pytest.raises(ValueError, match=message):
        model(**corrupt(batch, name, edit), city="nyc")


def test_unknown_city_and_oversized_k(model_and_batch):
    model, batch = model_and_batch
    with pytest.raises(ValueError, match=r"city='paris' is unknown to this model; known cities: \['nyc'\]"):
        model(**batch, city="paris")
    with pytest.raises(ValueError, match=r"k=21 is larger than the 20 candidate cells of city 'nyc'"):
        model(**batch, city="nyc", top_k=21)


def test_missing_statistics_and_bad_std(model_and_batch):
    model, batch = model_and_batch
    with pytest.raises(ValueError, match="coordinate_mean/coordinate_std or city="):
        model(**batch)
    with pytest.raises(ValueError, match=r"coordinate_std holds 0.0"):
        model(**batch, coordinate_mean=torch.zeros(2), coordinate_std=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"coordinate_mean holds a non-finite value: nan"):
        model(**batch, coordinate_mean=torch.tensor([0.0, math.nan]), coordinate_std=torch.ones(2))


def test_city_with_other_poi_width_is_refused(model_and_batch):
    from nextlocllm_hf import CityRetriever

    model, _ = model_and_batch
    city = make_retriever("wide")
    wide = CityRetriever("wide", city.cell_ids, city.xy, city.latlon, city.poi_frequency[:, :3], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="city 'wide' has 3 POI classes, the model 5"):
        model.add_city(wide)


def test_values_are_checked_with_one_host_sync(model_and_batch, monkeypatch):
    """All value rules of a valid batch cost one read of the device (not one per field)."""
    from nextlocllm_hf.modeling.validation_nextlocllm import check_shapes, check_values

    model, batch = model_and_batch
    inputs = {name: batch.get(name) for name in model.input_names}
    check_shapes(model.config, inputs)
    reads = []
    original = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: reads.append(1) or original(self))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("per-value .item() on a valid batch"))
    check_values(model.config, inputs, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    assert len(reads) == 1
