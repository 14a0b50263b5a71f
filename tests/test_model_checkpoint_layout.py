"""The checkpoint layout is the published one: existing checkpoints keep loading, with the same outputs.

The model's layers are split over modules (encoder, heads) but keep the flat state-dict keys and the construction
order of the published checkpoints, so a seed gives the same initial weights and a saved model reloads exactly.
"""

import json

import pytest
import torch
from conftest import build_model, make_batch, make_retriever
from reference_nextlocllm import paper_computation
from transformers import AutoModel

RECORD_KEYS = ["poi_text_embeddings", "prompt_token_ids", "text_features_encoded", "coordinate_embedding.weight",
               "day_embedding.weight", "hour_embedding.weight", "duration_embedding.weight"]
PROJECTIONS = ["history_projection.weight", "current_projection.weight"]
LLM_POI = ["history_poi_projection.weight", "history_poi_projection.bias", "current_poi_projection.weight",
           "current_poi_projection.bias"]
QUERY = ["gap_embedding.weight", "target_time_projection.weight", "target_time_projection.bias"]
SCORER = [f"candidate_scorer.{name}" for name in (
    "feature_shift", "feature_scale", "bin_edges", "feature_projection.weight", "feature_projection.bias",
    "context_projection.weight", "record_projection.weight", "query_projection.weight", "mlp.1.weight", "mlp.1.bias",
    "mlp.3.weight", "mlp.3.bias")]

# Config overrides -> the keys outside the backbone, in order (as in the checkpoints saved before the modules split).
PUBLISHED = {
    "point+duration": ({"use_duration_head": True},
                       RECORD_KEYS + PROJECTIONS + LLM_POI + ["regression_head.weight", "duration_head.weight"]),
    "offset,at_time": ({"regression_target": "offset_from_last", "task_mode": "at_time"},
                       RECORD_KEYS + PROJECTIONS + LLM_POI + QUERY + ["regression_head.weight"]),
    "mixture": ({"head_type": "mixture", "num_mixture_components": 3},
                RECORD_KEYS + PROJECTIONS + LLM_POI + ["mixture_head.weight", "mixture_head.bias"]),
    "ranker+mixture,at_time": ({"head_type": "mixture_ranker", "num_mixture_components": 2, "task_mode": "at_time"},
                               RECORD_KEYS + PROJECTIONS + LLM_POI + QUERY + ["mixture_head.weight",
                                                                             "mixture_head.bias"] + SCORER),
    "plain POI, no prompt": ({"use_prompt": False, "use_llm_poi": False},
                             RECORD_KEYS + ["poi_embedding.weight"] + PROJECTIONS + ["regression_head.weight"]),
}


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_state_dict_keys_are_the_published_layout(tiny_backbone, variant):
    overrides, expected = PUBLISHED[variant]
    model = build_model(tiny_backbone, **overrides)
    heads = [key for key in expected if key.startswith(("regression_head", "mixture_head", "candidate_scorer",
                                                         "duration_head"))]
    backbone = [f"backbone.{key}" for key in model.backbone.state_dict()]
    # Encoder layers and text buffers, then the backbone, then the heads: the published checkpoints' order.
    assert list(model.state_dict()) == expected[: len(expected) - len(heads)] + backbone + heads


@pytest.mark.parametrize("variant", ["point+duration", "ranker+mixture,at_time"])
def test_a_seed_fixes_the_weights_and_a_saved_model_reloads_them_exactly(tiny_backbone, variant, tmp_path):
    overrides, _ = PUBLISHED[variant]
    builds = []
    for _ in range(2):
        torch.manual_seed(0)
        builds.append(build_model(tiny_backbone, **overrides))
    first, second = builds
    assert all(torch.equal(value, second.state_dict()[key]) for key, value in first.state_dict().items())
    first.add_city(make_retriever("nyc"))
    first.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in first.state_dict().items())
    batch = make_batch(first.config, first.retriever("nyc"), batch_size=4)
    with torch.no_grad():
        out = loaded(**batch, city="nyc", top_k=5)
        with paper_computation(loaded):
            reference = loaded(**batch, city="nyc", top_k=5)
        original = first(**batch, city="nyc", top_k=5)
    torch.testing.assert_close(out.normalized_coordinates, reference.normalized_coordinates, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.normalized_coordinates, original.normalized_coordinates, rtol=0, atol=1e-6)
    assert torch.equal(out.top_k_cells, original.top_k_cells)
    assert not hasattr(loaded, "reference_computation")  # the paper's form lives in the tests only


@pytest.mark.parametrize("variant, legacy_fields", [
    ("point+duration", {"num_mixture_components": 0, "use_candidate_ranker": False}),
    ("ranker+mixture,at_time", {"num_mixture_components": 2, "use_candidate_ranker": True}),
])
def test_a_config_saved_before_head_type_loads_as_the_head_it_described(tiny_backbone, variant, legacy_fields,
                                                                        tmp_path):
    overrides, _ = PUBLISHED[variant]
    model = build_model(tiny_backbone, **overrides).eval()
    model.add_city(make_retriever("nyc"))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    head_type = config.pop("head_type")
    config.update(legacy_fields)  # how configs were written before `head_type` existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.head_type == head_type
    assert "use_candidate_ranker" not in loaded.config.to_dict()
    batch = make_batch(model.config, model.retriever("nyc"), batch_size=3)
    with torch.no_grad():
        expected = model(**batch, city="nyc", top_k=5).top_k_cells
        assert torch.equal(loaded(**batch, city="nyc", top_k=5).top_k_cells, expected)
