"""`evaluate` metric for next-location prediction: Hit@k, MRR, NDCG@k and distance errors.

Self-contained: it imports no package, only the two modules `export_metric` copies beside it
(`metrics_nextlocllm.py`, the scores, and `geometry_nextlocllm.py`, the Earth radius and projections), which
`evaluate.load` copies along because this script imports them directly. The numbers are those of
`nextlocllm_hf.metrics.compute_metrics`: it is the same code. This file is not imported where it lies in the
package; load an exported copy (`nextlocllm_hf.evaluate_metric.load_metric()` does)::

    import evaluate
    metric = evaluate.load("path/to/nextloc_metric")     # a folder export_metric wrote
    metric = evaluate.load("ORG/nextloc_metric")         # the Space push_metric pushed

One import per line in this file: `evaluate` parses import lines to find dependencies.
"""

import datasets
import evaluate
import numpy as np

from .geometry_nextlocllm import MEAN_EARTH_RADIUS_M
from .metrics_nextlocllm import DEFAULT_KS
from .metrics_nextlocllm import DEFAULT_NDCG_KS
from .metrics_nextlocllm import compute_metrics

_DESCRIPTION = f"""\
Next-location prediction metrics over a city's candidate cells. Each prediction is a ranked list of distinct cell ids
(best first) plus a predicted position (x, y) in Web Mercator metres; each reference is the true next cell id and the
true position. Returns Hit@k (k = 1, 5, 10, 20 by default), MRR truncated at max(ks), NDCG@k (k = 5, 10; one
relevant cell, gain 1/log2(rank+1)), mean and median haversine error in metres (after inverse Web Mercator, on the
sphere of the mean Earth radius, {MEAN_EARTH_RADIUS_M:,.1f} m) and the mean Euclidean error in Web Mercator units
(what the NextLocLLM code reports), plus the sample count. Ranking metrics are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of dicts with
        `ranked_cells` (list of int, length K, distinct cell ids, best first; K >= max(ks + ndcg_ks)) and
        `predicted_xy` (2 floats, Web Mercator metres; for cell-ranking baselines the centroid of the top-1 cell).
    references: list of dicts with `target_cell` (int) and `target_xy` (2 floats, Web Mercator metres).
    ks: Hit@k cut-offs, default (1, 5, 10, 20).
    ndcg_ks: NDCG@k cut-offs, default (5, 10).
Returns:
    dict with `hit@k`, `mrr`, `ndcg@k`, `mean_error_m`, `median_error_m`, `mean_projected_error_m`, `count`.
Examples:
    >>> metric = NextLocMetric()
    >>> metric.compute(
    ...     predictions=[{"ranked_cells": [3, 1], "predicted_xy": [0.0, 0.0]}],
    ...     references=[{"target_cell": 1, "target_xy": [0.0, 0.0]}], ks=(1, 2), ndcg_ks=(2,))["mrr"]
    0.5
"""

_CITATION = """\
@article{liu2024nextlocllm,
  title={NextLocLLM: Next Location Prediction Using LLMs},
  author={Liu, Shuai and Cao, Ning and Chen, Yile and Jiang, Yue and Cong, Gao},
  journal={arXiv preprint arXiv:2410.09129},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NextLocMetric(evaluate.Metric):
    """Hit@k / MRR / NDCG@k / distance errors of ranked next-cell predictions (see `metrics_nextlocllm.py`)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "ranked_cells": datasets.Sequence(datasets.Value("int64")),
                        "predicted_xy": datasets.Sequence(datasets.Value("float64"), length=2),
                    },
                    "references": {
                        "target_cell": datasets.Value("int64"),
                        "target_xy": datasets.Sequence(datasets.Value("float64"), length=2),
                    },
                }
            ),
            reference_urls=["https://arxiv.org/abs/2410.09129"],
        )

    def _compute(self, predictions, references, ks=DEFAULT_KS, ndcg_ks=DEFAULT_NDCG_KS):
        lengths = {len(p["ranked_cells"]) for p in predictions}
        if len(lengths) > 1:
            raise ValueError(
                f"ranked_cells must have the same length K in every prediction, got lengths {sorted(lengths)}"
            )
        ranked = np.asarray([p["ranked_cells"] for p in predictions], dtype=np.int64)
        if ranked.ndim == 1:  # no predictions at all
            ranked = ranked.reshape(len(predictions), 0)
        predicted_xy = np.asarray([p["predicted_xy"] for p in predictions], dtype=np.float64)
        target_cells = np.asarray([r["target_cell"] for r in references], dtype=np.int64)
        target_xy = np.asarray([r["target_xy"] for r in references], dtype=np.float64)
        return compute_metrics(ranked, target_cells, predicted_xy, target_xy, ks=tuple(ks), ndcg_ks=tuple(ndcg_ks))
