"""The model card an export carries (`nextlocllm_hf/model_card.py`): it names the prediction head and the backbone."""

import pytest
from conftest import build_model, make_retriever
from transformers import AutoModel

from nextlocllm_hf.model_card import build_model_card


@pytest.fixture
def city():
    return make_retriever("nyc", num_cells=60)


def test_model_card_names_the_head(tiny_backbone, city):
    for overrides, expected in (({}, "single point (paper)"),
                                ({"head_type": "mixture_ranker", "num_mixture_components": 4},
                                 "4-component Gaussian mixture")):
        model = build_model(tiny_backbone, **overrides)
        model.add_city(city)
        card = build_model_card(model, {"best_step": 1}, repo_id="org/x", train_cities=["nyc"])
        assert f"| prediction head | {model.head_description} |" in str(card)
        assert expected in str(card)


def test_model_card_names_the_backbone_not_the_folder_a_model_was_loaded_from(tiny_backbone, city, tmp_path):
    model = build_model(tiny_backbone)
    model.add_city(city)
    model.save_pretrained(tmp_path / "export")
    loaded = AutoModel.from_pretrained(tmp_path / "export")
    assert loaded.config.backbone_name_or_path == model.config.backbone_name_or_path == str(tiny_backbone)
    card = str(build_model_card(loaded, {"best_step": 1}, repo_id="org/x", train_cities=["nyc"]))
    assert f"`{tiny_backbone}`" in card and str(tmp_path / "export") not in card
