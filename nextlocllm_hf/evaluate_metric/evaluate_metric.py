"""Folder entry point: `evaluate.load("<path>/evaluate_metric")` looks for `evaluate_metric/evaluate_metric.py`.

`evaluate` loads a folder only through a script named like the folder; this file re-exports the metric class defined
in `nextloc_metric.py` (the same class, so results are identical).
"""

from nextlocllm_hf.evaluate_metric.nextloc_metric import NextLocMetric

__all__ = ["NextLocMetric"]
