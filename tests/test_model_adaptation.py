"""The trainable parameter set equals what `adaptation` says, and gradients reach exactly that set."""

import re

import pytest
from conftest import build_model, make_batch, make_retriever
from peft.tuners.lora import LoraLayer

# Backbone parameters each mode trains, written out by name per architecture (independent of the model's own logic).
EXPECTED_BACKBONE_TRAINABLE = {
    ("gpt2", "norms"): r"^backbone\.(wpe\.weight|h\.\d+\.ln_[12]\.(weight|bias)|ln_f\.(weight|bias))$",
    ("llama", "norms"): r"^backbone\.(layers\.\d+\.(input|post_attention)_layernorm\.weight|norm\.weight)$",
    ("gpt2", "lora"): r"^backbone\.h\.\d+\.attn\.c_attn\.lora_[AB]\.default\.weight$",
    ("llama", "lora"): r"^backbone\.layers\.\d+\.self_attn\.[qv]_proj\.lora_[AB]\.default\.weight$",
    ("gpt2", "full"): r"^backbone\.",
    ("llama", "full"): r"^backbone\.",
    ("gpt2", "frozen"): r"(?!)",
    ("llama", "frozen"): r"(?!)",
}


def architecture(model) -> str:
    return model.config.llm_config.model_type


@pytest.mark.parametrize("mode", ["norms", "lora", "full", "frozen"])
def test_trainable_set_matches_mode_and_gradients_reach_only_it(tiny_backbone, mode):
    model = build_model(tiny_backbone, adaptation=mode).train()
    pattern = re.compile(EXPECTED_BACKBONE_TRAINABLE[(architecture(model), mode)])
    names = [name for name, _ in model.named_parameters()]
    expected = {n for n in names if not n.startswith("backbone.") or pattern.search(n)}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == expected
    if mode != "frozen":
        assert any(n.startswith("backbone.") for n in trainable)

    city = make_retriever("nyc")
    model.add_city(city)
    model(**make_batch(model.config, city), city="nyc").loss.backward()
    with_gradient = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert with_gradient == expected


def test_lora_settings_reach_the_adapters(tiny_backbone):
    model = build_model(tiny_backbone, adaptation="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert lora_a and all(p.shape[0] == 4 for p in lora_a)
    scalings = {m.scaling["default"] for m in model.backbone.modules() if isinstance(m, LoraLayer)}
    assert scalings == {8 / 4}


def test_adaptation_survives_save_and_load(tiny_backbone, tmp_path):
    from transformers import AutoModel

    model = build_model(tiny_backbone, adaptation="lora")
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    trainable = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable(loaded) == trainable(model)
