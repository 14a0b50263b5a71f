"""Next-location metrics: the scores (`modeling/metrics_nextlocllm.py`, shared with the `evaluate` metric) and the
text tables the CLIs and the model card print."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from .modeling.geometry_nextlocllm import MEAN_EARTH_RADIUS_M, WEB_MERCATOR_RADIUS_M, haversine_m, mercator_to_lonlat
from .modeling.metrics_nextlocllm import (
    DEFAULT_KS,
    DEFAULT_NDCG_KS,
    NO_CELL,
    compute_metrics,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    pad_ranking,
    target_ranks,
)

# The deepest cut-off any reported metric needs (Hit@20): rankings go this deep, a smaller city's to its last cell.
MAX_RANK = max(DEFAULT_KS + DEFAULT_NDCG_KS)

DEFAULT_TABLE_COLUMNS = (
    "hit@1",
    "hit@5",
    "hit@10",
    "hit@20",
    "mrr",
    "ndcg@5",
    "ndcg@10",
    "mean_error_m",
    "median_error_m",
    "mean_projected_error_m",
    "count",
)


# ------------------------------------------------------------------------------------------------------------------
# printing


def _column_label(key: str) -> str:
    if key.startswith("hit@"):
        return f"Hit@{key[4:]} %"
    if key.startswith("ndcg@"):
        return f"NDCG@{key[5:]} %"
    if key == "mrr":
        return "MRR %"
    labels = {
        "mean_error_m": "Mean err m",
        "median_error_m": "Median err m",
        "mean_projected_error_m": "Proj. err m",
        "count": "N",
    }
    return labels.get(key, key)


def _format_value(key: str, value) -> str:
    if value is None:
        return "-"
    value = float(value)
    if np.isnan(value):
        return "nan"
    if key.startswith(("hit@", "ndcg@")) or key == "mrr":
        return f"{100.0 * value:.2f}"
    if key == "count":
        return f"{int(round(value))}"
    if key.endswith("_m"):
        return f"{value:.1f}"
    return f"{value:.4g}"


def format_table(
    rows: Mapping[str, Mapping[str, float]],
    columns: Iterable[str] = DEFAULT_TABLE_COLUMNS,
    title: str | None = None,
) -> str:
    """A fixed-width text table: one line per method (``rows`` keys, in order), one column per metric key.

    Hit@k, MRR and NDCG@k are printed as percentages with 2 decimals, ``*_m`` errors in metres with 1 decimal,
    ``count`` as an integer; a metric missing from a row prints ``-``. Columns absent from every row are dropped.
    """
    columns = [c for c in columns if any(c in r for r in rows.values())]
    header = ["Method", *(_column_label(c) for c in columns)]
    body = [[str(name), *(_format_value(c, r.get(c)) for c in columns)] for name, r in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        first = line[0].ljust(widths[0])
        rest = [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    rule = "-" * len(render(header))
    lines = ([title] if title else []) + [render(header), rule, *(render(line) for line in body)]
    return "\n".join(lines)


__all__ = [
    "hit_rate_at_k",
    "mrr",
    "ndcg_at_k",
    "target_ranks",
    "pad_ranking",
    "NO_CELL",
    "mercator_to_lonlat",
    "haversine_m",
    "compute_metrics",
    "format_table",
    "MEAN_EARTH_RADIUS_M",
    "WEB_MERCATOR_RADIUS_M",
    "DEFAULT_KS",
    "DEFAULT_NDCG_KS",
    "DEFAULT_TABLE_COLUMNS",
    "MAX_RANK",
]
