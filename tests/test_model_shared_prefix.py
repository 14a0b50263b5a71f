"""The fast forward (prompt run once and shared, POI tables projected once) equals the authors' computation."""

import pytest
import torch
from conftest import build_model, make_batch, make_retriever
from reference_nextlocllm import paper_computation

TOLERANCE = 1e-5  # fp32, max abs difference, outputs and gradients


def outputs_and_gradients(model, batch):
    model.zero_grad()
    out = model(**batch, city="nyc")
    out.loss.backward()
    gradients = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.normalized_coordinates.detach(), out.loss.detach(), gradients


@pytest.mark.parametrize("adaptation", ["norms", "lora"])
def test_shared_prefix_and_poi_projection_match_reference(tiny_backbone, adaptation):
    model = build_model(tiny_backbone, adaptation=adaptation, lora_dropout=0.0, task_mode="at_time")
    model.add_city(make_retriever("nyc"))
    batch = make_batch(model.config, model.retriever("nyc"), batch_size=5)
    with torch.no_grad():  # non-zero LoRA B so the adapters take part in the comparison
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    fast_out, fast_loss, fast_grads = outputs_and_gradients(model, batch)
    with paper_computation(model):
        ref_out, ref_loss, ref_grads = outputs_and_gradients(model, batch)
    assert (fast_out - ref_out).abs().max() <= TOLERANCE
    assert abs(fast_loss - ref_loss) <= TOLERANCE * max(1.0, abs(ref_loss))
    assert fast_grads.keys() == ref_grads.keys()
    trains_in_backbone = [n for n in fast_grads if n.startswith("backbone.")]
    assert trains_in_backbone  # norms / position table / adapters reached through the shared prefix too
    for name, gradient in fast_grads.items():
        scale = max(1.0, ref_grads[name].abs().max().item())
        assert (gradient - ref_grads[name]).abs().max() <= TOLERANCE * scale, name


def test_inference_reuses_the_prompt_cache_until_weights_change(tiny_backbone):
    model = build_model(tiny_backbone)
    model.add_city(make_retriever("nyc"))
    batch = make_batch(model.config, model.retriever("nyc"))
    with torch.no_grad():
        first = model(**batch, city="nyc").coordinates
        cached = model.prompt_prefix.cache
        again = model(**batch, city="nyc").coordinates
        assert cached is not None and model.prompt_prefix.cache is cached
        torch.testing.assert_close(first, again, rtol=0, atol=0)
        next(p for n, p in model.named_parameters() if "norm" in n or "ln_" in n).mul_(1.5)  # in-place weight change
        changed = model(**batch, city="nyc").coordinates
        assert model.prompt_prefix.cache is not cached
        with paper_computation(model):
            reference = model(**batch, city="nyc").coordinates
    torch.testing.assert_close(changed, reference, rtol=0, atol=1e-3)
    assert not torch.allclose(changed, first, rtol=0, atol=1e-3)
    # With gradients on, nothing is cached: every step sees its own weights.
    model(**batch, city="nyc")
    assert model.prompt_prefix.cache is None


@pytest.mark.parametrize("heads", [{}, {"head_type": "mixture_ranker", "num_mixture_components": 3}])
def test_batch_inference_in_chunks_equals_one_batch_and_computes_the_prompt_once(tiny_backbone, heads):
    model = build_model(tiny_backbone, **heads)
    model.add_city(make_retriever("nyc"))
    batch = make_batch(model.config, model.retriever("nyc"), batch_size=10)
    whole = model.predict(batch, city="nyc", k=5, batch_size=10)
    cache = model.prompt_prefix.cache
    chunked = model.predict(batch, city="nyc", k=5, batch_size=3)
    assert model.prompt_prefix.cache is cache  # four chunks, one prompt computation (weights unchanged)
    torch.testing.assert_close(chunked.coordinates, whole.coordinates, rtol=0, atol=1e-3)  # batch-shape rounding
    assert torch.equal(chunked.top_k_cells, whole.top_k_cells) and chunked.top_k_cells.shape == (10, 5)
