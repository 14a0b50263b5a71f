"""Bad input gets a ValueError that names the field and the value, before anything reaches torch internals."""

import json
import math
import re
import shutil

import pytest
import torch
from conftest import build_model, make_batch, make_retriever

from nextlocllm_hf import NextLocLLMConfig


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


def test_a_city_of_other_poi_classes_is_refused(model_and_batch):
    """A city whose frequencies count other POI classes (same number, other names) would feed the model wrong
    frequencies: add_city names both lists; a retriever saved before the names were stored is taken on its count."""
    from dataclasses import replace

    model, _ = model_and_batch
    city = make_retriever("lyon", num_cells=20)
    renamed = [f"other_{name}" for name in model.config.poi_class_names]
    with pytest.raises(ValueError, match=r"city 'lyon' has poi_classes=\['other_"):
        model.add_city(replace(city, poi_classes=renamed))
    assert "lyon" not in model.cities
    try:
        model.add_city(replace(city, poi_classes=list(model.config.poi_class_names)))
        model.add_city(replace(city, name="older", poi_classes=None))
        assert {"lyon", "older"} <= set(model.cities)
    finally:  # the model is shared by this file's tests
        model.retrievers.pop("lyon", None), model.retrievers.pop("older", None)


def test_unknown_city_and_oversized_k(model_and_batch):
    """`predict` refuses a k past the city's cells (the user's k); `forward`'s top_k, which evaluation uses for every
    city at once, ranks all of a smaller city's cells and pads with NO_CELL."""
    from nextlocllm_hf.metrics import NO_CELL

    model, batch = model_and_batch
    with pytest.raises(ValueError, match=r"city='paris' is unknown to this model; known cities: \['nyc'\]"):
        model(**batch, city="paris")
    with pytest.raises(ValueError, match=r"k=21: expected an integer from 1 to the 20 candidate cells of city 'nyc'"):
        model.predict(batch, city="nyc", k=21)
    with torch.no_grad():
        output = model(**batch, city="nyc", top_k=21)
    assert output.top_k_cells.shape == (3, 21) and (output.top_k_cells[:, 20] == NO_CELL).all()
    assert sorted(output.top_k_cells[0, :20].tolist()) == list(range(20))
    assert torch.isinf(output.top_k_distances[:, 20]).all()


def test_predict_k_must_be_positive(model_and_batch):
    model, batch = model_and_batch
    for k in (-3, 0, 2.5, True):
        with pytest.raises(ValueError, match=rf"k={k!r}: expected an integer from 1 to the \d+ candidate cells"):
            model.predict(batch, city="nyc", k=k)


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


# ------------------------------------------------------------------------------------------------ saved weights
@pytest.fixture(scope="module")
def saved(model_and_batch, tmp_path_factory):
    model, _ = model_and_batch
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save_pretrained(folder)
    return folder


def edited_copy(saved, tmp_path, edit):
    """A copy of the saved model whose config.json is `edit(config)`."""
    folder = shutil.copytree(saved, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def widen(field, value):
    def edit(config):
        config[field] = value
    return edit


def wider_backbone(config):
    config["llm_config"]["hidden_size"] = 64


def more_poi_classes(config):
    config["poi_class_names"] = [*config["poi_class_names"], "Spaceport"]
    config["poi_class_descriptions"] = [*config["poi_class_descriptions"], "Launch sites."]


MISMATCHES = {
    "coordinate_embedding_dim": (widen("coordinate_embedding_dim", 64),
                                 r"config.json says coordinate_embedding_dim=64 but model.safetensors holds "
                                 r"coordinate_embedding.weight of shape \(128, 2\), where that config builds \(64, 2\) "
                                 r"\(2 more tensors disagree\): the config and the weights come from different models"),
    "hour_embedding_dim": (widen("hour_embedding_dim", 8),
                           r"config.json says hour_embedding_dim=8 but model.safetensors holds hour_embedding.weight of "
                           r"shape \(24, 16\), where that config builds \(24, 8\)"),
    "hidden_size": (wider_backbone,
                    r"config.json says llm_config.hidden_size=64 but model.safetensors holds poi_text_embeddings of "
                    r"shape \(5, \d+, 32\), where that config builds \(5, \d+, 64\) \(\d+ more tensors disagree\)"),
    "poi classes": (more_poi_classes,
                    r"config.json lists 6 poi_class_names but model.safetensors holds poi_text_embeddings of shape "
                    r"\(5, \d+, 32\), where that config builds \(6, \d+, 32\)"),
}


@pytest.mark.parametrize("field", list(MISMATCHES))
def test_a_config_from_another_model_is_named_before_loading(saved, tmp_path, field):
    from nextlocllm_hf import NextLocLLMForCoordinateRegression

    edit, message = MISMATCHES[field]
    folder = edited_copy(saved, tmp_path, edit)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(folder))}: {message}"):
        NextLocLLMForCoordinateRegression.from_pretrained(folder)


@pytest.mark.parametrize("overrides", [{}, {"adaptation": "lora", "head_type": "mixture_ranker",
                                            "task_mode": "at_time", "use_duration_head": True}], ids=["default", "lora"])
def test_matching_weights_pass_the_check(model_and_batch, tmp_path, overrides):
    """No false alarm: a saved model loads, whatever its heads and adaptation."""
    from nextlocllm_hf import NextLocLLMForCoordinateRegression

    model, _ = model_and_batch
    if overrides:
        model = build_model(model.config.backbone_name_or_path, **overrides)
    model.save_pretrained(tmp_path / "model")
    loaded = NextLocLLMForCoordinateRegression.from_pretrained(tmp_path / "model")
    assert loaded.config.head_type == model.config.head_type


class Unpickled:
    """Unpickling this writes the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickled_weights_alone_are_refused_unread(saved, tmp_path):
    from nextlocllm_hf import NextLocLLMForCoordinateRegression

    folder = shutil.copytree(saved, tmp_path / "model")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    torch.save({"weights": Unpickled(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(folder))} holds only pickled weights \(pytorch_model.bin\); "
                                         r"NextLocLLM loads safetensors only \(model.safetensors\)"):
        NextLocLLMForCoordinateRegression.from_pretrained(folder)
    assert not marker.exists()
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(folder))} has no model.safetensors"):
        NextLocLLMForCoordinateRegression.from_pretrained(folder)


# ------------------------------------------------------------------------------------------------------ the config
def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="adaptation='partial'"):
        NextLocLLMConfig(adaptation="partial")
    with pytest.raises(ValueError, match="poi_class_descriptions"):
        NextLocLLMConfig(poi_class_names=["A", "B"], poi_class_descriptions=["only one"])
    with pytest.raises(ValueError, match="history_length=0"):
        NextLocLLMConfig(history_length=0)
    assert NextLocLLMConfig(num_backbone_layers=3).llm_config.num_hidden_layers == 3


@pytest.mark.parametrize("field, value", [("head_type", "ranker"), ("num_mixture_components", 0),
                                          ("max_candidates", 0), ("candidate_loss_weight", -1.0)])
def test_config_rejects_bad_head_fields(field, value):
    with pytest.raises(ValueError, match=field):
        NextLocLLMConfig(**{field: value})
