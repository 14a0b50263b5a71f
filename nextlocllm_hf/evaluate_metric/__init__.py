"""The local `evaluate` metric of next-location prediction (loads offline).

``METRIC_PATH`` is the metric script, ``METRIC_DIR`` its folder; both work with ``evaluate.load``. ``load_metric()``
is ``evaluate.load(METRIC_PATH, **kwargs)``; ``NextLocMetric()`` builds the same metric without `evaluate.load`.
"""

from __future__ import annotations

import os

METRIC_DIR = os.path.dirname(os.path.abspath(__file__))
METRIC_PATH = os.path.join(METRIC_DIR, "nextloc_metric.py")


def load_metric(**kwargs):
    """``evaluate.load`` of the metric script (offline: it is a local file)."""
    import evaluate

    return evaluate.load(METRIC_PATH, **kwargs)


def __getattr__(name):
    if name == "NextLocMetric":  # lazy: importing `evaluate` takes seconds
        from .nextloc_metric import NextLocMetric

        return NextLocMetric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METRIC_DIR", "METRIC_PATH", "NextLocMetric", "load_metric"]
