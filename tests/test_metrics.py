"""Metrics against hand-computed values, input validation, the text table and the offline `evaluate` module."""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap

import numpy as np
import pytest
from helpers import R_MEAN, forward_mercator
from processes import run as run_bounded

from nextlocllm_hf.metrics import (
    NO_CELL,
    compute_metrics,
    format_table,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    pad_ranking,
    target_ranks,
)

# Four samples whose targets sit at ranks 1, 3, absent and 2.
RANKED = np.array([[3, 1, 2], [5, 4, 6], [7, 8, 9], [1, 2, 3]])
TARGETS = np.array([3, 6, 0, 2])


# ---------------------------------------------------------------------------------------------------------------
# ranking metrics


def test_target_ranks():
    assert target_ranks(RANKED, TARGETS).tolist() == [1, 3, 0, 2]


def test_hit_rate_hand_example():
    assert hit_rate_at_k(RANKED, TARGETS, 1) == pytest.approx(1 / 4)
    assert hit_rate_at_k(RANKED, TARGETS, 2) == pytest.approx(2 / 4)
    assert hit_rate_at_k(RANKED, TARGETS, 3) == pytest.approx(3 / 4)
    # the three-sample example of the brief: ranks 1, 3, absent -> hit@1 = 1/3
    assert hit_rate_at_k(RANKED[:3], TARGETS[:3], 1) == pytest.approx(1 / 3)


def test_mrr_hand_example_and_truncation():
    assert mrr(RANKED, TARGETS) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    # truncated at K = 2 the rank-3 target no longer counts
    assert mrr(RANKED[:, :2], TARGETS) == pytest.approx((1 + 0 + 0 + 1 / 2) / 4)


def test_ndcg_hand_example():
    assert ndcg_at_k(RANKED, TARGETS, 3) == pytest.approx((1 + 0.5 + 0 + 1 / math.log2(3)) / 4)
    assert ndcg_at_k(RANKED, TARGETS, 2) == pytest.approx((1 + 0 + 0 + 1 / math.log2(3)) / 4)
    assert ndcg_at_k(RANKED, TARGETS, 1) == pytest.approx(hit_rate_at_k(RANKED, TARGETS, 1))


def test_ranking_metric_validation():
    with pytest.raises(ValueError, match="fewer than k=5"):
        hit_rate_at_k(RANKED, TARGETS, 5)
    with pytest.raises(ValueError, match="positive integer"):
        ndcg_at_k(RANKED, TARGETS, 0)
    with pytest.raises(ValueError, match="target_cells must have shape"):
        mrr(RANKED, TARGETS[:3])
    with pytest.raises(ValueError, match="ranked_cells must have shape"):
        mrr(RANKED[0], TARGETS)
    with pytest.raises(ValueError, match="repeats a cell id"):
        mrr(np.array([[1, 1, 2]]), np.array([1]))
    with pytest.raises(ValueError, match="NaN"):
        mrr(np.array([[1.0, np.nan]]), np.array([1]))
    with pytest.raises(ValueError, match="empty"):
        mrr(np.zeros((0, 3), dtype=int), np.zeros(0, dtype=int))
    # integral floats are accepted as ids
    assert mrr(RANKED.astype(float), TARGETS) == pytest.approx(mrr(RANKED, TARGETS))


# ---------------------------------------------------------------------------------------------------------------
# compute_metrics


def _three_samples():
    """Ranks 1, 3, absent; errors: 1 degree north of the equator, none, 1 degree east on the equator."""
    ranked = np.arange(60).reshape(3, 20)  # distinct ids
    targets = np.array([0, 22, 99])
    _, y1 = forward_mercator(0.0, 1.0)
    x1, _ = forward_mercator(1.0, 0.0)
    predicted = np.array([[0.0, 0.0], [500.0, 600.0], [x1, 0.0]])
    true = np.array([[0.0, y1], [500.0, 600.0], [0.0, 0.0]])
    return ranked, targets, predicted, true, x1, y1


def test_compute_metrics_hand_example():
    ranked, targets, predicted, true, x1, y1 = _three_samples()
    out = compute_metrics(ranked, targets, predicted, true)
    assert list(out) == [
        "hit@1", "hit@5", "hit@10", "hit@20", "mrr", "ndcg@5", "ndcg@10",
        "mean_error_m", "median_error_m", "mean_projected_error_m", "count",
    ]
    assert out["hit@1"] == pytest.approx(1 / 3)
    assert out["hit@5"] == out["hit@10"] == out["hit@20"] == pytest.approx(2 / 3)
    assert out["mrr"] == pytest.approx((1 + 1 / 3) / 3)
    assert out["ndcg@5"] == out["ndcg@10"] == pytest.approx((1 + 0.5) / 3)
    one_degree = R_MEAN * math.pi / 180
    assert out["mean_error_m"] == pytest.approx(2 * one_degree / 3, rel=1e-9)
    assert out["median_error_m"] == pytest.approx(one_degree, rel=1e-9)
    assert y1 == pytest.approx(111325.14, abs=0.01) and x1 == pytest.approx(111319.49, abs=0.01)
    assert out["mean_projected_error_m"] == pytest.approx((y1 + x1) / 3, rel=1e-12)
    assert out["count"] == 3.0
    assert all(isinstance(v, float) for v in out.values())


def test_a_ranking_padded_past_a_small_citys_cells_counts_what_it_ranks():
    """With 3 cells ranked and NO_CELL beyond, Hit@5 = Hit@3 and NDCG@5 = NDCG@3: an empty place never hits, and
    empty places may repeat (real ids may not)."""
    ranked = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2], [2, 1, 0]])
    targets = np.array([2, 0, 1, 1])  # ranks 1, 3, 2, 2
    padded = pad_ranking(ranked, 20)
    assert padded.shape == (4, 20) and (padded[:, 3:] == NO_CELL).all() and NO_CELL < 0
    np.testing.assert_array_equal(pad_ranking(padded, 5), padded)  # wide enough already
    np.testing.assert_array_equal(target_ranks(padded, targets), [1, 3, 2, 2])
    assert hit_rate_at_k(padded, targets, 5) == hit_rate_at_k(ranked, targets, 3) == 1.0
    assert hit_rate_at_k(padded, targets, 2) == hit_rate_at_k(ranked, targets, 2) == 0.75
    assert ndcg_at_k(padded, targets, 10) == pytest.approx(ndcg_at_k(ranked, targets, 3))
    assert target_ranks(padded, np.array([NO_CELL] * 4)).tolist() == [0, 0, 0, 0]  # an empty place is no target
    xy = np.zeros((4, 2))
    out = compute_metrics(padded, targets, xy, xy)
    assert out["hit@5"] == out["hit@10"] == out["hit@20"] == 1.0 and out["hit@1"] == 0.25
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 / 2) / 4)
    assert out["ndcg@5"] == out["ndcg@10"]
    with pytest.raises(ValueError, match="repeats a cell id"):
        target_ranks(np.array([[1, 1, NO_CELL]]), np.array([1]))
    with pytest.raises(ValueError, match="fewer than the largest cut-off 20"):
        compute_metrics(ranked, targets, xy, xy)  # unpadded, it is refused rather than scored short


def test_compute_metrics_matches_the_single_functions_and_truncates_mrr():
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(100)[:30] for _ in range(50)])
    targets = rng.integers(0, 100, 50)
    xy = rng.normal(0, 1000, (50, 2))
    out = compute_metrics(ranked, targets, xy, xy + 10, ks=(1, 3, 25), ndcg_ks=(4,))
    for k in (1, 3, 25):
        assert out[f"hit@{k}"] == pytest.approx(hit_rate_at_k(ranked, targets, k))
    assert out["ndcg@4"] == pytest.approx(ndcg_at_k(ranked, targets, 4))
    assert out["mrr"] == pytest.approx(mrr(ranked[:, :25], targets))  # MRR@max(ks), not @30
    assert out["mean_projected_error_m"] == pytest.approx(math.hypot(10, 10))


def test_compute_metrics_validation():
    ranked, targets, predicted, true, *_ = _three_samples()
    with pytest.raises(ValueError, match=r"ranked_cells has K=10 columns.*20"):
        compute_metrics(ranked[:, :10], targets, predicted, true)
    with pytest.raises(ValueError, match="predicted_xy contains NaN"):
        compute_metrics(ranked, targets, np.where(predicted == 0, np.nan, predicted), true)
    with pytest.raises(ValueError, match="target_xy contains infinite"):
        compute_metrics(ranked, targets, predicted, np.where(true == 0, np.inf, true))
    with pytest.raises(ValueError, match=r"target_xy must have shape \(3, 2\)"):
        compute_metrics(ranked, targets, predicted, true[:2])
    with pytest.raises(ValueError, match=r"target_cells must have shape \(3,\)"):
        compute_metrics(ranked, targets[:, None], predicted, true)
    with pytest.raises(ValueError, match="ks holds 0"):
        compute_metrics(ranked, targets, predicted, true, ks=(0, 5))
    with pytest.raises(ValueError, match="repeats a cell id"):
        compute_metrics(np.zeros((3, 20), dtype=int), targets, predicted, true)


def test_format_table():
    ranked, targets, predicted, true, *_ = _three_samples()
    rows = {"model": compute_metrics(ranked, targets, predicted, true), "rule": {"hit@1": 0.5, "count": 2}}
    text = format_table(rows, title="Test split")
    lines = text.splitlines()
    assert lines[0] == "Test split"
    assert lines[1].split()[:3] == ["Method", "Hit@1", "%"]
    assert "Mean err m" in lines[1] and "Proj. err m" in lines[1]
    assert set(lines[2]) == {"-"}
    model_line, rule_line = lines[3].split(), lines[4].split()
    assert model_line[:3] == ["model", "33.33", "66.67"]
    assert model_line[-1] == "3" and f"{2 * R_MEAN * math.pi / 180 / 3:.1f}" in model_line
    assert rule_line[:3] == ["rule", "50.00", "-"] and rule_line[-1] == "2"
    assert len({len(line) for line in lines[1:3]}) == 1  # header and rule aligned
    narrow = format_table(rows, columns=("hit@1", "unknown_metric"))
    assert "unknown_metric" not in narrow and "Hit@1 %" in narrow


# ---------------------------------------------------------------------------------------------------------------
# the local `evaluate` module


@pytest.fixture(scope="module")
def metric_inputs():
    rng = np.random.default_rng(1)
    n, k = 40, 20
    ranked = np.stack([rng.permutation(60)[:k] for _ in range(n)])
    targets = np.where(rng.random(n) < 0.6, ranked[np.arange(n), rng.integers(0, k, n)], 59 - rng.integers(0, 5, n))
    pred = rng.normal(0, 2000, (n, 2)) + [-8_235_000.0, 4_970_000.0]
    true = pred + rng.normal(0, 300, (n, 2))
    predictions = [{"ranked_cells": r.tolist(), "predicted_xy": p.tolist()} for r, p in zip(ranked, pred)]
    references = [{"target_cell": int(t), "target_xy": x.tolist()} for t, x in zip(targets, true)]
    return predictions, references, compute_metrics(ranked, targets, pred, true)


def test_evaluate_metric_loads_offline_and_matches(metric_inputs, tmp_path):
    import evaluate

    from nextlocllm_hf.evaluate_metric import export_metric, load_metric

    predictions, references, expected = metric_inputs
    script = export_metric(tmp_path / "nextloc_metric")
    assert sorted(os.listdir(tmp_path / "nextloc_metric")) == [
        "README.md", "app.py", "geometry_nextlocllm.py", "metrics_nextlocllm.py", "nextloc_metric.py",
        "requirements.txt"]
    for metric in (evaluate.load(script), evaluate.load(str(tmp_path / "nextloc_metric")), load_metric()):
        got = metric.compute(predictions=predictions, references=references)
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-12), key
    metric = load_metric()
    metric.add_batch(predictions=predictions[:15], references=references[:15])
    metric.add_batch(predictions=predictions[15:], references=references[15:])
    assert metric.compute()["mrr"] == pytest.approx(expected["mrr"])
    small = load_metric().compute(predictions=predictions, references=references, ks=(1, 2), ndcg_ks=(2,))
    assert set(small) == {"hit@1", "hit@2", "mrr", "ndcg@2", "mean_error_m", "median_error_m",
                          "mean_projected_error_m", "count"}
    with pytest.raises(ValueError, match="ranked_cells has K=20"):
        load_metric().compute(predictions=predictions, references=references, ks=(1, 50))


def test_exported_metric_computes_where_the_package_is_unimportable(metric_inputs, tmp_path):
    """The exported folder is all `evaluate` needs: a process that cannot import the package gets the same scores."""
    from nextlocllm_hf.evaluate_metric import export_metric

    predictions, references, expected = metric_inputs
    export_metric(tmp_path / "nextloc_metric")
    (tmp_path / "inputs.json").write_text(json.dumps({"predictions": predictions, "references": references}))
    client = textwrap.dedent("""
        import json, sys
        sys.modules["nextlocllm_hf"] = None
        import evaluate
        metric = evaluate.load("nextloc_metric")
        print(json.dumps(metric.compute(**json.load(open("inputs.json")))))
    """)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_OFFLINE": "1"}
    result = run_bounded([sys.executable, "-c", client], cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key


def test_evaluate_metric_script_has_one_import_per_line_and_imports_only_what_it_ships():
    from nextlocllm_hf.evaluate_metric import METRIC_NAME, METRIC_SOURCE_DIR, SHIPPED_MODULES

    with open(METRIC_SOURCE_DIR / f"{METRIC_NAME}.py", encoding="utf-8") as f:
        import_lines = [line.strip() for line in f if line.startswith(("import ", "from "))]
    assert import_lines and not any("," in line for line in import_lines)
    relative = {line.split()[1][1:] + ".py" for line in import_lines if line.startswith("from .")}
    assert relative == set(SHIPPED_MODULES)
    assert not any("nextlocllm_hf" in line for line in import_lines)


def test_metric_names_that_evaluate_cannot_import_are_refused(tmp_path):
    from nextlocllm_hf.evaluate_metric import export_metric

    with pytest.raises(ValueError, match="metric name 'my.metric'"):
        export_metric(tmp_path, name="my.metric")
