"""The Gaussian mixture head's maths: parameter split, NLL against hand and scipy values, and exact cell ranking."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from nextlocllm_hf import CityRetriever
from nextlocllm_hf.modeling.mixture_nextlocllm import (
    LOG_SCALE_MAX,
    LOG_SCALE_MIN,
    mixture_log_density_np,
    mixture_negative_log_likelihood,
    rank_cells_by_mixture_density,
    split_mixture_parameters,
)

CENTRE = np.array([-8_235_000.0, 4_970_000.0])


def scipy_mixture_density(point, means, scales, weights) -> float:
    return sum(
        w * multivariate_normal(mean=mu, cov=np.diag(s**2)).pdf(point) for mu, s, w in zip(means, scales, weights)
    )


def random_retriever(num_cells: int = 300, seed: int = 0, xy: np.ndarray | None = None) -> CityRetriever:
    """Cells scattered over a 10 km square, with shuffled non-contiguous ids (rows and ids never coincide)."""
    rng = np.random.default_rng(seed)
    if xy is None:
        xy = CENTRE + rng.uniform(-5_000.0, 5_000.0, size=(num_cells, 2))
    num_cells = len(xy)
    cell_ids = rng.permutation(100_000)[:num_cells]
    return CityRetriever(
        "rand", cell_ids, xy, np.zeros((num_cells, 2)), rng.random((num_cells, 3)), xy.mean(0), xy.std(0)
    )


def brute_force_ranking(retriever: CityRetriever, means, scales, log_weights, k: int):
    """Density at every cell, sorted best first with ties in cell order."""
    log_density = mixture_log_density_np(retriever.xy[None], means, scales, log_weights)
    order = np.argsort(-log_density, axis=1, kind="stable")[:, :k]
    return retriever.cell_ids[order], np.take_along_axis(log_density, order, axis=1)


# --------------------------------------------------------------------------------------------- parameter split
def test_split_shapes_layout_clamp_and_normalized_weights():
    num_components = 3
    raw = torch.randn(4, 5 * num_components) * 10
    means, log_scales, log_weights = split_mixture_parameters(raw, num_components)
    assert means.shape == (4, 3, 2) and log_scales.shape == (4, 3, 2) and log_weights.shape == (4, 3)
    torch.testing.assert_close(means, raw[:, :6].reshape(4, 3, 2))  # blocked layout: means, log-scales, logits
    raw_scales = raw[:, 6:12].reshape(4, 3, 2)
    expected = (LOG_SCALE_MIN + torch.nn.functional.softplus(raw_scales - LOG_SCALE_MIN)).clamp(max=LOG_SCALE_MAX)
    torch.testing.assert_close(log_scales, expected)
    assert log_scales.min() >= LOG_SCALE_MIN and log_scales.max() <= LOG_SCALE_MAX
    assert (log_scales == LOG_SCALE_MAX).any()  # the x10 reaches the cap
    # The floor is smooth: far below it the scale still has a gradient pulling it up.
    below = torch.full((1, 5), -20.0, requires_grad=True)
    split_mixture_parameters(below, 1)[1].sum().backward()
    assert below.grad[0, 2:4].abs().min() > 0
    torch.testing.assert_close(torch.logsumexp(log_weights, -1), torch.zeros(4))
    torch.testing.assert_close(log_weights, torch.log_softmax(raw[:, 12:], -1))


def test_split_rejects_wrong_width_and_component_count():
    with pytest.raises(ValueError, match=r"raw has shape \(2, 14\), expected last dimension 15"):
        split_mixture_parameters(torch.zeros(2, 14), 3)
    with pytest.raises(ValueError, match="num_components=0"):
        split_mixture_parameters(torch.zeros(2, 5), 0)


# ------------------------------------------------------------------------------------------------------------- NLL
def test_nll_matches_hand_computed_two_component_example():
    # Target (0, 0). Component 1: mu (0, 0), sigma (1, 1), w 0.25 -> N = 1 / (2 pi) = 0.1591549431.
    # Component 2: mu (1, 2), sigma (2, 0.5), w 0.75 -> z = (-0.5, -4), N = exp(-8.125) / (2 pi * 2 * 0.5)
    # = 4.7116982e-05. Mixture = 0.25 * 0.1591549431 + 0.75 * 4.7116982e-05 = 0.0398240735, NLL = 3.2232836875.
    means = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]], dtype=torch.float64)
    scales = torch.tensor([[[1.0, 1.0], [2.0, 0.5]]], dtype=torch.float64)
    weights = torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    targets = torch.zeros(1, 2, dtype=torch.float64)
    nll = mixture_negative_log_likelihood(means, scales.log(), weights.log(), targets)
    assert nll.shape == (1,)
    assert nll.item() == pytest.approx(3.2232836875, abs=1e-9)
    assert nll.item() == pytest.approx(-math.log(0.25 * 0.1591549431 + 0.75 * 4.7116982e-05), rel=1e-8)


def test_nll_matches_scipy_on_random_mixtures():
    rng = np.random.default_rng(0)
    batch, num_components = 16, 4
    means = rng.normal(0, 1, (batch, num_components, 2))
    scales = np.exp(rng.uniform(-2, 1, (batch, num_components, 2)))
    weights = rng.dirichlet(np.ones(num_components), batch)
    targets = rng.normal(0, 1.5, (batch, 2))
    nll = mixture_negative_log_likelihood(
        torch.tensor(means), torch.tensor(np.log(scales)), torch.tensor(np.log(weights)), torch.tensor(targets)
    )
    expected = [-np.log(scipy_mixture_density(targets[b], means[b], scales[b], weights[b])) for b in range(batch)]
    np.testing.assert_allclose(nll.numpy(), expected, rtol=1e-10)


def test_nll_is_finite_far_from_every_component():
    # 1000 standard deviations away the density underflows to 0, but the log-space sum stays exact:
    # NLL = log(2 pi) + 0.5 * 1000^2 (the nearer component dominates).
    means = torch.tensor([[[0.0, 0.0], [5000.0, 0.0]]], dtype=torch.float64)
    log_scales = torch.zeros(1, 2, 2, dtype=torch.float64)
    log_weights = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    nll = mixture_negative_log_likelihood(means, log_scales, log_weights, torch.tensor([[-1000.0, 0.0]]).double())
    assert nll.item() == pytest.approx(math.log(2 * math.pi) + 0.5 * 1000.0**2 + math.log(2.0), rel=1e-12)


def test_nll_computes_half_precision_in_float32():
    zeros = torch.zeros(2, 2, 2, dtype=torch.bfloat16)
    log_weights = torch.full((2, 2), math.log(0.5), dtype=torch.bfloat16)
    nll = mixture_negative_log_likelihood(zeros, zeros, log_weights, torch.zeros(2, 2, dtype=torch.bfloat16))
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, torch.full((2,), math.log(2 * math.pi)), atol=1e-2, rtol=0)


def test_gradients_reach_means_scales_and_weights():
    torch.manual_seed(0)
    num_components = 3
    raw = torch.randn(8, 5 * num_components, requires_grad=True)
    means, log_scales, log_weights = split_mixture_parameters(raw, num_components)
    mixture_negative_log_likelihood(means, log_scales, log_weights, torch.randn(8, 2)).mean().backward()
    for name, block in (("means", slice(0, 6)), ("log-scales", slice(6, 12)), ("logits", slice(12, 15))):
        gradient = raw.grad[:, block]
        assert torch.isfinite(gradient).all() and (gradient.abs() > 0).any(), name


def test_nll_rejects_mismatched_shapes():
    means, log_scales, log_weights = torch.zeros(2, 3, 2), torch.zeros(2, 3, 2), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"targets has shape \(2, 3\), expected \(2, 2\)"):
        mixture_negative_log_likelihood(means, log_scales, log_weights, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"log_scales has shape \(2, 2, 2\), expected \(2, 3, 2\)"):
        mixture_negative_log_likelihood(means, torch.zeros(2, 2, 2), log_weights, torch.zeros(2, 2))


# ------------------------------------------------------------------------------------------------ numpy density
def test_numpy_log_density_matches_scipy_single_and_batched():
    rng = np.random.default_rng(1)
    means = rng.normal(0, 100, (3, 2, 2))
    scales = rng.uniform(20, 200, (3, 2, 2))
    weights = rng.dirichlet(np.ones(2), 3)
    points = rng.normal(0, 150, (3, 7, 2))
    batched = mixture_log_density_np(points, means, scales, np.log(weights))
    assert batched.shape == (3, 7)
    for n in range(3):
        expected = [np.log(scipy_mixture_density(p, means[n], scales[n], weights[n])) for p in points[n]]
        np.testing.assert_allclose(batched[n], expected, rtol=1e-10)
        single = mixture_log_density_np(points[n], means[n], scales[n], np.log(weights[n]))
        np.testing.assert_array_equal(single, batched[n])  # a point's value does not depend on its batch


# ------------------------------------------------------------------------------------------------------ ranking
def random_mixtures(kind: str, rng: np.random.Generator, num_samples: int = 40, num_components: int = 3):
    """Means, scales (metres) and log-weights of one family of hard or easy cases."""
    shape = (num_samples, num_components, 2)
    means = CENTRE + rng.uniform(-5_000.0, 5_000.0, shape)
    if kind == "far_apart":  # modes in opposite corners and beyond the city's edge
        corners = np.array([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]])[:num_components] * rng.uniform(4_000, 9_000)
        means = CENTRE + corners + rng.normal(0, 300, shape)
        scales = rng.uniform(100.0, 800.0, shape)
    elif kind == "tiny":
        scales = rng.uniform(0.5, 10.0, shape)
    elif kind == "wide":
        scales = rng.uniform(5e4, 2e5, shape)
    elif kind == "outside":  # every mode 30-60 km from the city
        angle = rng.uniform(0, 2 * np.pi, shape[:2])
        radius = rng.uniform(30_000, 60_000, shape[:2])
        means = CENTRE + np.stack([np.cos(angle), np.sin(angle)], -1) * radius[..., None]
        scales = rng.uniform(1_000.0, 20_000.0, shape)
    else:  # "mixed": anisotropic scales over four decades, uneven weights
        scales = np.exp(rng.uniform(np.log(10.0), np.log(2e4), shape))
    log_weights = np.log(rng.dirichlet(np.full(num_components, 0.5), num_samples) + 1e-12)
    return means, scales, log_weights


MIXTURE_KINDS = ["far_apart", "tiny", "wide", "outside", "mixed"]


@pytest.mark.parametrize("kind", MIXTURE_KINDS)
@pytest.mark.parametrize("k", [1, 5, 20, 300])
def test_ranking_equals_brute_force(kind, k):
    rng = np.random.default_rng([MIXTURE_KINDS.index(kind), k])
    retriever = random_retriever(300, seed=k)
    means, scales, log_weights = random_mixtures(kind, rng)
    stats = {}
    ids, log_density = rank_cells_by_mixture_density(retriever, means, scales, log_weights, k, stats=stats)
    expected_ids, expected_log_density = brute_force_ranking(retriever, means, scales, log_weights, k)
    assert ids.shape == (40, k) and ids.dtype == np.int64 and log_density.dtype == np.float64
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(log_density, expected_log_density)
    assert stats["cells_evaluated"].shape == (40,) and (stats["cells_evaluated"] <= 300).all()
    assert (stats["cells_evaluated"] >= k).all() and (stats["rounds"] >= 1).all()


def test_ranking_equals_brute_force_with_one_component():
    rng = np.random.default_rng(7)
    retriever = random_retriever(250, seed=3)
    means, scales, log_weights = random_mixtures("mixed", rng, num_samples=30, num_components=1)
    ids, _ = rank_cells_by_mixture_density(retriever, means, scales, log_weights, 10)
    np.testing.assert_array_equal(ids, brute_force_ranking(retriever, means, scales, log_weights, 10)[0])


def test_ties_follow_cell_order_across_the_top_k_boundary():
    # Cells stacked on the same centres tie exactly; the one earlier in the retriever must come first, also when
    # the tie straddles the k-th place.
    rng = np.random.default_rng(2)
    base = CENTRE + rng.uniform(-5_000.0, 5_000.0, size=(60, 2))
    xy = np.concatenate([base, base[:20], base[:20]])[rng.permutation(100)]
    retriever = random_retriever(xy=xy, seed=2)
    means = np.repeat(xy[None, :3], 5, axis=0) + rng.normal(0, 50, (5, 3, 2))
    scales = np.full((5, 3, 2), 300.0)
    log_weights = np.log(np.full((5, 3), 1 / 3))
    for k in (1, 2, 3, 7, 100):
        ids, _ = rank_cells_by_mixture_density(retriever, means, scales, log_weights, k)
        np.testing.assert_array_equal(ids, brute_force_ranking(retriever, means, scales, log_weights, k)[0])


def test_concentrated_mixture_scores_far_fewer_than_all_cells():
    retriever = random_retriever(5_000, seed=4)
    rng = np.random.default_rng(4)
    means = retriever.xy[rng.integers(0, 5_000, (50, 2))] + rng.normal(0, 30, (50, 2, 2))
    scales, log_weights = np.full((50, 2, 2), 100.0), np.log(np.full((50, 2), 0.5))
    stats = {}
    ids, _ = rank_cells_by_mixture_density(retriever, means, scales, log_weights, 5, stats=stats)
    np.testing.assert_array_equal(ids, brute_force_ranking(retriever, means, scales, log_weights, 5)[0])
    assert stats["cells_evaluated"].max() <= 200  # of 5000


def test_ranking_rejects_bad_inputs():
    retriever = random_retriever(20)
    means, scales, log_weights = CENTRE + np.zeros((2, 3, 2)), np.full((2, 3, 2), 100.0), np.zeros((2, 3))
    cases = [
        ((means, scales, log_weights, 21), r"k=21: expected an integer from 1 to the 20 candidate cells of city 'rand'"),
        ((means, scales, log_weights, 0), "k=0"),
        ((means, np.where(np.arange(2)[:, None, None] == 1, -1.0, scales), log_weights, 3), r"scales_m holds -1\.0"),
        ((means, np.zeros_like(scales), log_weights, 3), r"scales_m holds 0\.0"),
        ((np.where(np.arange(3)[None, :, None] == 2, np.nan, means), scales, log_weights, 3), r"means_m .*nan"),
        ((means, scales, np.full((2, 3), np.nan), 3), r"log_weights .*nan"),
        ((means, scales[:, :2], log_weights, 3), r"scales_m has shape \(2, 2, 2\), expected \(2, 3, 2\)"),
        ((means, scales, log_weights[:, :2], 3), r"log_weights has shape \(2, 2\), expected \(2, 3\)"),
        ((means[..., :1], scales[..., :1], log_weights, 3), r"means_m has shape \(2, 3, 1\)"),
    ]
    for (m, s, w, k), message in cases:
        with pytest.raises(ValueError, match=message):
            rank_cells_by_mixture_density(retriever, m, s, w, k)
