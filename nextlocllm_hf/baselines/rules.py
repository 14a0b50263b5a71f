"""Rule baselines: rank a city's candidate cells for each sample from its own records (one rule: training data).

Every rule sees a sample's record sequence ``s = history_cell + current_cell`` (``T = H + L`` records, oldest first;
``s[T-1]`` is the **last** record, "position" ``t`` means ``s[t]``) and returns, for ``rank(rows, k)``, an
``(N, k)`` int64 array of **k distinct cell ids**, best first, built in two steps:

1. the rule's own candidates, ordered by the rule's score (higher first); ties are broken by **recency** (the larger
   position of the cell's latest supporting record first) and then by **smaller cell id**; at most k are kept;
2. **padding**: the k cells whose centroids are nearest to the sample's last point ``current_coordinates[-1]``
   (``CityRetriever.query``, nearest first, equal distances in the KD-tree's order), skipping cells already listed,
   fill the remaining places. Padding always succeeds because the k nearest cells are k distinct cells.

The rules (``RULE_BASELINES`` maps these names to classes):

``last_location``
    the single candidate ``s[T-1]``.
``most_frequent``
    every cell visited in ``s``, scored by its visit count; ties: most recent visit, then cell id.
``markov_within_sample``
    first-order transitions inside ``s``: the candidates are the cells ``s[t+1]`` for every ``t < T-1`` with
    ``s[t] == s[T-1]`` (self-transitions count), scored by how often each follows the last cell; ties: most recent such
    transition (larger ``t+1``), then cell id. No transition out of the last cell -> no candidates (nearest cells only).
``markov_train_users``
    first-order transition counts learned by ``fit`` from the training split: in every training sample, each
    consecutive pair of ``s`` plus the pair ``(s[T-1], target_cell)``. Training windows overlap (stride < window), so a
    transition is counted once per training sample that contains it, a nearly uniform weight. Candidates are the
    successors of the sample's last cell by count; ties: smaller cell id (global counts carry no recency). If the last
    cell never starts a training transition, the sample's ``most_frequent`` candidates are used instead.
``markov_frequency_mixture``
    every cell visited in ``s`` scored ``alpha * P(c | last) + (1 - alpha) * visits(c) / T`` where ``P(c | last)`` is
    the within-sample transition share (count of ``last -> c`` over all transitions out of the last cell; 0 when there
    are none) and ``alpha = RULE_ALPHA = 0.5``, the weight of the same rule among the model's candidate features,
    fixed a priori (not tuned on any split). Scores equal to 12 decimals tie; ties: most recent visit, then cell id.
``hour_frequency``
    every cell visited in ``s``, scored first by its visits within ±2 h (``TIME_WINDOW_HOURS``, circular) of the
    reference hour, then by its visit count; ties: most recent visit, then cell id. The reference hour is the query's
    ``target_hour`` in ``at_time`` mode and the last record's hour in ``next`` mode (``reference_time``), so the rule
    needs ``task_mode=`` and the records' hours.
``nearest_cells``
    no candidates: the k cells nearest to the last point (the padding alone).

Cell ids must be non-negative and belong to the city's ``CityRetriever`` (``city.retriever``); ``rows`` may be a
``datasets.Dataset`` or a mapping of columns (numpy arrays or lists, e.g. ``ds.with_format("numpy")[:]``). When the rows
name another city than the retriever's, ranking raises ``ValueError``.

One file (~500 lines, a fifth of it this specification) on purpose: the rules share the sequence layout, the
tie-breaking and the padding written down above, and each is a few vectorized lines that read best beside the others.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..columns import row_chunks, rows_to_arrays
from ..metrics import DEFAULT_KS, DEFAULT_NDCG_KS, compute_metrics, pad_ranking
from ..modeling.candidates_nextlocllm import (
    QUERY_COLUMNS,
    RULE_ALPHA,
    TIME_WINDOW_HOURS,
    hour_distance,
    reference_time,
)
from ..modeling.configuration_nextlocllm import TASK_MODES
from ..modeling.ranking_nextlocllm import pad_with_nearest
from ..modeling.retrieval_nextlocllm import CityRetriever

#: Score precision for ties in ``markov_frequency_mixture`` (decimals).
_SCORE_DECIMALS = 12

CELL_COLUMNS = ("history_cell", "current_cell")
RANK_COLUMNS = (*CELL_COLUMNS, "current_coordinates")


# ------------------------------------------------------------------------------------------------------------------
# reading rows


def num_rows(rows: Any) -> int:
    """Number of samples in ``rows`` (a ``datasets.Dataset`` or a mapping of columns)."""
    if hasattr(rows, "num_rows"):
        return int(rows.num_rows)
    first = next(iter(rows.values()), None)
    return 0 if first is None else len(first)


def row_cities(rows: Any) -> set[str]:
    """Distinct values of the ``city`` column, or an empty set when there is none."""
    has = ("city" in rows.column_names) if hasattr(rows, "column_names") else ("city" in rows)
    if not has or num_rows(rows) == 0:
        return set()
    return {str(c) for c in np.unique(rows_to_arrays(rows, ["city"])["city"].astype(str))}


def record_cells(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(N, H + L)`` int64 cell ids of the history then current records, oldest first."""
    history = np.asarray(arrays["history_cell"])
    current = np.asarray(arrays["current_cell"])
    if history.ndim != 2 or current.ndim != 2 or len(history) != len(current):
        raise ValueError(f"history_cell {history.shape} and current_cell {current.shape} must be (N, H) and (N, L)")
    if current.shape[1] == 0:
        raise ValueError("current_cell has no records: the last record is needed")
    seq = np.concatenate([history, current], axis=1)
    if not np.issubdtype(seq.dtype, np.integer):
        raise ValueError(f"history_cell/current_cell must hold integer cell ids, got dtype {seq.dtype}")
    return seq.astype(np.int64, copy=False)


def last_points(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(N, 2)`` float64 projected position of each sample's last current record."""
    coords = np.asarray(arrays["current_coordinates"], dtype=np.float64)
    if coords.ndim != 3 or coords.shape[2] != 2:
        raise ValueError(f"current_coordinates must have shape (N, L, 2), got {coords.shape}")
    return coords[:, -1, :]


# ------------------------------------------------------------------------------------------------------------------
# cells


def cell_rows(retriever: CityRetriever, ids: np.ndarray, what: str = "cell ids") -> np.ndarray:
    """Row of each id in the retriever's arrays (``retriever.xy[cell_rows(...)]``); ``ValueError`` naming the ids that
    are not candidate cells of its city."""
    rows = retriever.rows_of(ids)
    if (rows < 0).any():
        unknown = np.unique(np.asarray(ids)[rows < 0])[:5].tolist()
        raise ValueError(f"{what} {unknown} are not candidate cells of city {retriever.name!r} "
                         f"({retriever.num_cells} cells)")
    return rows


def top1_centroid_xy(ranked_cells: np.ndarray, retriever: CityRetriever) -> np.ndarray:
    """``(N, 2)`` Web Mercator centroid of each sample's top-1 cell: the predicted position of a cell ranking."""
    ranked = np.asarray(ranked_cells)
    if ranked.ndim != 2 or ranked.shape[1] == 0:
        raise ValueError(f"ranked_cells must have shape (N, K) with K >= 1, got {ranked.shape}")
    return retriever.xy[cell_rows(retriever, ranked[:, 0], "ranked cell ids")]


# ------------------------------------------------------------------------------------------------------------------
# vectorized ranking helpers


def _group(sample: np.ndarray, cell: np.ndarray, position: np.ndarray):
    """Unique ``(sample, cell)`` pairs with their number of occurrences and largest position."""
    if len(sample) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    order = np.lexsort((position, cell, sample))
    s, c, p = sample[order], cell[order], position[order]
    new = np.ones(len(s), dtype=bool)
    new[1:] = (s[1:] != s[:-1]) | (c[1:] != c[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(s))
    return s[starts], c[starts], (ends - starts).astype(np.int64), p[ends - 1]


def _select_top(sample, cell, score, recency, n: int, k: int) -> np.ndarray:
    """``(n, k)`` best candidates per sample by score desc, recency desc, cell id asc; -1 where fewer than k."""
    out = np.full((n, k), -1, dtype=np.int64)
    if len(sample) == 0:
        return out
    order = np.lexsort((cell, -np.asarray(recency), -np.asarray(score, dtype=np.float64), sample))
    s = sample[order]
    first = np.searchsorted(s, np.arange(n))
    rank = np.arange(len(s)) - first[s]
    keep = rank < k
    out[s[keep], rank[keep]] = cell[order][keep]
    return out


def _frequency_candidates(seq: np.ndarray, k: int) -> np.ndarray:
    n, t = seq.shape
    s, c, count, last = _group(np.repeat(np.arange(n), t), seq.ravel(), np.tile(np.arange(t), n))
    return _select_top(s, c, count, last, n, k)


def _within_transitions(seq: np.ndarray):
    """Transitions out of each sample's last cell: grouped (sample, next cell, count, latest position) and the
    number of such transitions per sample."""
    last = seq[:, -1]
    mask = seq[:, :-1] == last[:, None]
    s, t = np.nonzero(mask)
    grouped = _group(s.astype(np.int64), seq[s, t + 1], (t + 1).astype(np.int64))
    return grouped, mask.sum(axis=1)


# ------------------------------------------------------------------------------------------------------------------
# the rules


class RuleBaseline:
    """Common interface: ``fit(train_rows, retriever)`` then ``rank(rows, k) -> (N, k)`` int64 cell ids."""

    name = "rule"
    #: columns besides ``RANK_COLUMNS`` that ``_candidates`` reads
    extra_columns: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.retriever: CityRetriever | None = None

    def fit(self, train_rows: Any, retriever: CityRetriever) -> "RuleBaseline":
        """Keep the city's candidate cells; rules that learn from training data override ``_fit``."""
        if not isinstance(retriever, CityRetriever):
            raise TypeError(f"retriever: expected the city's CityRetriever (`CityDataset.retriever`), got "
                            f"{type(retriever).__name__}")
        if (retriever.cell_ids < 0).any():  # a negative id marks an empty place in a ranking
            raise ValueError(f"city {retriever.name!r}: cell ids must be non-negative")
        self.retriever = retriever
        self._fit(train_rows)
        return self

    def _fit(self, train_rows: Any) -> None:
        pass

    def _check_city(self, rows: Any, what: str) -> None:
        cities = row_cities(rows)
        if cities and cities != {self.retriever.name}:
            raise ValueError(
                f"{self.name}: {what} come from cities {sorted(cities)} but the candidate cells are those of city "
                f"{self.retriever.name!r}; rank each city's samples with that city's cells"
            )

    def rank(self, rows: Any, k: int) -> np.ndarray:
        """``(N, k)`` distinct cell ids per sample, best first (see the module docstring for each rule)."""
        if self.retriever is None:
            raise RuntimeError(f"{self.name}: call fit(train_rows, cells) before rank()")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r}: expected a positive integer")
        if k > self.retriever.num_cells:
            raise ValueError(
                f"k={k} is larger than the {self.retriever.num_cells} candidate cells of city {self.retriever.name!r}"
            )
        k = int(k)
        self._check_city(rows, "rows")
        return np.concatenate([self._rank_chunk(chunk, k) for chunk in row_chunks(rows)])

    def _rank_chunk(self, rows: Any, k: int) -> np.ndarray:
        arrays = rows_to_arrays(rows, (*RANK_COLUMNS, *self.extra_columns))
        seq = record_cells(arrays)
        points = last_points(arrays)
        if len(points) != len(seq):
            raise ValueError(f"current_coordinates has {len(points)} rows but the cell columns have {len(seq)}")
        if len(seq) == 0:
            return np.zeros((0, k), dtype=np.int64)
        cell_rows(self.retriever, seq, "record cell ids")
        return pad_with_nearest(self._candidates(seq, k, arrays), points, self.retriever, k)

    def _candidates(self, seq: np.ndarray, k: int, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - abstract


class LastLocation(RuleBaseline):
    """The last record's cell, then the nearest cells."""

    name = "last_location"

    def _candidates(self, seq, k, arrays):
        out = np.full((len(seq), k), -1, dtype=np.int64)
        out[:, 0] = seq[:, -1]
        return out


class MostFrequent(RuleBaseline):
    """Cells by visit count over history + current; ties: most recent visit, then cell id."""

    name = "most_frequent"

    def _candidates(self, seq, k, arrays):
        return _frequency_candidates(seq, k)


class MarkovWithinSample(RuleBaseline):
    """Successors of the last cell inside the sample by count; ties: most recent transition, then cell id."""

    name = "markov_within_sample"

    def _candidates(self, seq, k, arrays):
        (s, c, count, last), _ = _within_transitions(seq)
        return _select_top(s, c, count, last, len(seq), k)


class MarkovTrainUsers(RuleBaseline):
    """Successors of the last cell by transition counts of the training split; ties: cell id. Unseen last cell:
    the sample's most-frequent cells."""

    name = "markov_train_users"

    def _fit(self, train_rows):
        from scipy.sparse import csr_matrix

        if train_rows is None:
            raise ValueError(f"{self.name} learns from the training split: pass train_rows to fit()")
        self._check_city(train_rows, "train_rows")
        n = self.retriever.num_cells  # counts indexed by the retriever's rows
        self.transition_counts = csr_matrix((n, n), dtype=np.int64)
        for chunk in row_chunks(train_rows):
            arrays = rows_to_arrays(chunk, (*CELL_COLUMNS, "target_cell"))
            seq = record_cells(arrays)
            target = np.asarray(arrays["target_cell"], dtype=np.int64).reshape(-1)
            full = np.concatenate([seq, target[:, None]], axis=1)
            src = cell_rows(self.retriever, full[:, :-1].ravel(), "training cell ids")
            dst = cell_rows(self.retriever, full[:, 1:].ravel(), "training cell ids")
            self.transition_counts = self.transition_counts + csr_matrix(
                (np.ones(len(src), dtype=np.int64), (src, dst)), shape=(n, n))
        self.transition_counts.sum_duplicates()

    def successors(self, cell: int, k: int) -> np.ndarray:
        """Up to k successor cell ids of ``cell`` by training count (desc), ties by cell id (asc)."""
        row = self.transition_counts[int(cell_rows(self.retriever, np.array([cell]))[0])]
        ids = self.retriever.cell_ids[row.indices]
        return ids[np.lexsort((ids, -row.data))[:k]]

    def _candidates(self, seq, k, arrays):
        out = np.full((len(seq), k), -1, dtype=np.int64)
        last = seq[:, -1]
        unique_last, inverse = np.unique(last, return_inverse=True)
        table = np.full((len(unique_last), k), -1, dtype=np.int64)
        seen = np.zeros(len(unique_last), dtype=bool)
        for i, cell in enumerate(unique_last):
            succ = self.successors(cell, k)
            table[i, : len(succ)] = succ
            seen[i] = len(succ) > 0
        out[:] = table[inverse]
        unseen = ~seen[inverse]
        if unseen.any():
            out[unseen] = _frequency_candidates(seq[unseen], k)
        return out


class MarkovFrequencyMixture(RuleBaseline):
    """alpha * within-sample transition share + (1 - alpha) * visit share; ties: most recent visit, then cell id."""

    name = "markov_frequency_mixture"

    def __init__(self, alpha: float = RULE_ALPHA) -> None:
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha={alpha!r} must lie in [0, 1]")
        self.alpha = float(alpha)

    def _candidates(self, seq, k, arrays):
        n, t = seq.shape
        vs, vc, visits, last = _group(np.repeat(np.arange(n), t), seq.ravel(), np.tile(np.arange(t), n))
        (ts, tc, tcount, _), n_out = _within_transitions(seq)
        base = int(seq.max()) + 1
        visit_key = vs * base + vc
        trans_key = ts * base + tc  # sorted, a subset of visit_key (every successor is visited)
        share = np.zeros(len(vs))
        where = np.searchsorted(visit_key, trans_key)
        share[where] = tcount / np.maximum(n_out[ts], 1)
        score = self.alpha * share + (1.0 - self.alpha) * visits / t
        return _select_top(vs, vc, np.round(score, _SCORE_DECIMALS), last, n, k)


class HourFrequency(RuleBaseline):
    """Visits within ±2 h of the reference hour, then visit count; ties: most recent visit, then cell id."""

    name = "hour_frequency"

    def __init__(self, task_mode: str = "next") -> None:
        super().__init__()
        if task_mode not in TASK_MODES:
            raise ValueError(f"task_mode={task_mode!r}: expected one of {TASK_MODES}")
        self.task_mode = task_mode
        self.extra_columns = ("history_hour", "current_hour", "current_day",
                              *(QUERY_COLUMNS if task_mode == "at_time" else ()))

    def _candidates(self, seq, k, arrays):
        n, t = seq.shape
        _, hour, _ = reference_time(arrays, self.task_mode)
        hours = np.concatenate([np.asarray(arrays["history_hour"]), np.asarray(arrays["current_hour"])], axis=1)
        in_window = (hour_distance(hours, hour[:, None]) <= TIME_WINDOW_HOURS).ravel()
        samples, positions = np.repeat(np.arange(n), t), np.tile(np.arange(t), n)
        vs, vc, visits, last = _group(samples, seq.ravel(), positions)
        ws, wc, window_visits, _ = _group(samples[in_window], seq.ravel()[in_window], positions[in_window])
        base = int(seq.max()) + 1
        window_count = np.zeros(len(vs))
        window_count[np.searchsorted(vs * base + vc, ws * base + wc)] = window_visits  # a subset of the visited cells
        return _select_top(vs, vc, window_count + visits / (t + 1), last, n, k)  # visits / (t + 1) < 1: a tie-break


class NearestCells(RuleBaseline):
    """The k cells nearest to the last point."""

    name = "nearest_cells"

    def _candidates(self, seq, k, arrays):
        return np.full((len(seq), k), -1, dtype=np.int64)


RULE_BASELINES: dict[str, type[RuleBaseline]] = {
    cls.name: cls
    for cls in (LastLocation, MostFrequent, MarkovWithinSample, MarkovTrainUsers, MarkovFrequencyMixture,
                HourFrequency, NearestCells)
}
#: Rules that read the reference time and so take ``task_mode=``.
TIME_AWARE_RULES = ("hour_frequency",)


# ------------------------------------------------------------------------------------------------------------------
# running several


def rank_rule_baselines(
    train_rows: Any,
    rows: Any,
    retriever: CityRetriever,
    k: int = 20,
    names: Sequence[str] | None = None,
    task_mode: str = "next",
) -> dict[str, np.ndarray]:
    """``{name: (N, k) ranking}`` of each rule (all of ``RULE_BASELINES`` by default), fitted on ``train_rows``;
    ``task_mode`` is the reference time of the time-aware rules."""
    names = list(RULE_BASELINES) if names is None else list(names)
    unknown = [n for n in names if n not in RULE_BASELINES]
    if unknown:
        raise ValueError(f"unknown rule baselines {unknown}; known: {list(RULE_BASELINES)}")
    return {name: make_rule(name, task_mode).fit(train_rows, retriever).rank(rows, k) for name in names}


def make_rule(name: str, task_mode: str = "next") -> RuleBaseline:
    """A rule by name; the time-aware ones get ``task_mode``."""
    if name not in RULE_BASELINES:
        raise ValueError(f"unknown rule baseline {name!r}; known: {list(RULE_BASELINES)}")
    return RULE_BASELINES[name](task_mode) if name in TIME_AWARE_RULES else RULE_BASELINES[name]()


def metrics_for_rankings(
    rankings: Mapping[str, np.ndarray],
    rows: Any,
    retriever: CityRetriever,
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
) -> dict[str, dict[str, float]]:
    """``{name: compute_metrics(...)}`` for cell rankings of ``rows``; the predicted position of a ranking is the
    centroid of its top-1 cell (:func:`top1_centroid_xy`), the true one ``target_coordinates``. A ranking of every
    cell of a city with fewer cells than the deepest cut-off is complete: it is scored padded with ``NO_CELL``."""
    arrays = rows_to_arrays(rows, ("target_cell", "target_coordinates"))
    target_cells = np.asarray(arrays["target_cell"]).reshape(-1)
    target_xy = np.asarray(arrays["target_coordinates"], dtype=np.float64)
    deepest = max((*ks, *ndcg_ks), default=1)
    scores = {}
    for name, ranked in rankings.items():
        ranked = np.asarray(ranked)
        if ranked.ndim == 2 and retriever.num_cells <= ranked.shape[1] < deepest:
            ranked = pad_ranking(ranked, deepest)
        scores[name] = compute_metrics(ranked, target_cells, top1_centroid_xy(ranked, retriever), target_xy, ks=ks,
                                       ndcg_ks=ndcg_ks)
    return scores


def evaluate_rule_baselines(
    train_rows: Any,
    rows: Any,
    retriever: CityRetriever,
    k: int = 20,
    names: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
    task_mode: str = "next",
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """``{name: metrics}`` of each rule on ``rows``: :func:`rank_rule_baselines` then :func:`metrics_for_rankings`.

    ``k`` must be at least ``max(ks + ndcg_ks)`` (20 by default); a city with fewer cells is ranked whole (the depth
    follows the city). ``rows`` also need ``target_cell`` and ``target_coordinates``; ``train_rows`` are used by
    ``markov_train_users`` only. ``progress``: a bar over the rules.
    """
    names = list(RULE_BASELINES) if names is None else list(names)
    targets = rows_to_arrays(rows, ("target_cell", "target_coordinates"))  # read once for every rule
    depth = min(k, retriever.num_cells) if isinstance(k, (int, np.integer)) else k  # a bad k is refused by rank
    scores = {}
    # One rule's ranking in memory at a time.
    for name in tqdm(names, desc=f"rules / {retriever.name}", unit="rule", leave=False, disable=not progress):
        ranking = rank_rule_baselines(train_rows, rows, retriever, k=depth, names=[name], task_mode=task_mode)
        scores.update(metrics_for_rankings(ranking, targets, retriever, ks=ks, ndcg_ks=ndcg_ks))
    return scores


__all__ = [
    "RULE_BASELINES",
    "RuleBaseline",
    "LastLocation",
    "MostFrequent",
    "MarkovWithinSample",
    "MarkovTrainUsers",
    "MarkovFrequencyMixture",
    "HourFrequency",
    "NearestCells",
    "TIME_AWARE_RULES",
    "make_rule",
    "rank_rule_baselines",
    "evaluate_rule_baselines",
    "metrics_for_rankings",
    "top1_centroid_xy",
    "pad_with_nearest",
    "rows_to_arrays",
    "record_cells",
    "last_points",
    "cell_rows",
    "num_rows",
    "row_cities",
]
