"""Learned rankers over the model's own candidate features, without a language model: the opponents the NextLocLLM
ranker has to beat, and its ablation without the backbone.

Both rank the candidate set of `build_candidates` (the sample's record cells and the cells nearest its last point, and
with `history` the user's earlier cells, described also by whole-history statistics) from the same id-free features the model's scorer reads, so they run zero-shot in any city, and fill the ranking with
the cells nearest the last point where the candidates run out.

``gbdt_ranker`` (``GBDTRanker``)
    scikit-learn's ``HistGradientBoostingClassifier`` on candidate rows (is this candidate the next cell?), ranked by
    its decision function. The number of boosting iterations is chosen on the validation users' Hit@1 (staged
    predictions), then the model is refitted with that many, so no test sample ever influences it.
``feature_mlp_ranker`` (``FeatureMLPRanker``)
    the model's ``CandidateScorer`` without a context (no backbone states), trained listwise with Adam; the epoch
    with the best validation Hit@1 is kept. It is "the NextLocLLM ranker without the LLM".
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ..columns import available_columns, row_chunks, rows_to_arrays
from ..modeling.candidates_nextlocllm import (
    QUERY_COLUMNS,
    RECORD_COLUMNS,
    CandidateScorer,
    CandidateSet,
    build_candidates,
    candidate_listwise_loss,
    merge_candidate_sets,
)
from ..modeling.configuration_nextlocllm import TASK_MODES, NextLocLLMConfig
from ..modeling.history_nextlocllm import PAST_COLUMNS
from ..modeling.ranking_nextlocllm import merge_rankings
from ..modeling.retrieval_nextlocllm import CityRetriever


TABLE_CHUNK = 8192  # samples whose candidates are built at once (a user's past is up to max_past_records wide)


@dataclass
class CandidateTable:
    """A split's candidates, features and true cells, ready for a learner."""

    candidates: CandidateSet
    target_cell: np.ndarray | None  # (N,), None when the rows carry no target
    last_point: np.ndarray  # (N, 2) projected metres, for the nearest-cell fallback

    @property
    def hits(self) -> np.ndarray:
        """`(N, M)` bool: the candidate is the true cell."""
        return (self.candidates.cell_ids == self.target_cell[:, None]) & self.candidates.mask


def hit_at_1(scores: np.ndarray, table: CandidateTable) -> float:
    """Share of samples whose best-scored candidate is the true cell (ties: the earlier candidate)."""
    scores = np.where(table.candidates.mask, scores, -np.inf)
    best = scores.argmax(axis=1)
    return float(table.hits[np.arange(len(best)), best].mean())


class CandidateFeatureRanker:
    """Common part: the candidate table of a split, ranking, and the settings shared with the model's ranker."""

    name = "feature_ranker"

    def __init__(self, task_mode: str = "next", neighbors: int = 10, max_candidates: int = 64,
                 time_features: bool = True, seed: int = 0, history: bool = False,
                 max_past_records: int = NextLocLLMConfig.max_past_records) -> None:
        """The candidate settings are the model's (`NextLocLLMConfig.candidate_*`, `max_past_records`), so a baseline
        and the model rank the same candidates from the same features."""
        if task_mode not in TASK_MODES:
            raise ValueError(f"task_mode={task_mode!r}: expected one of {TASK_MODES}")
        self.task_mode, self.neighbors, self.max_candidates = task_mode, neighbors, max_candidates
        self.time_features, self.seed = time_features, seed
        self.history, self.max_past_records = history, max_past_records
        self.fitted = False

    def table(self, rows: Any, cities: CityRetriever | Mapping[str, CityRetriever]) -> CandidateTable:
        """Candidates of `rows`: all of one city's (a retriever), or of several (name -> retriever, rows by their
        `city` column). Built `TABLE_CHUNK` samples at a time: with `history` each sample reads its user's past."""
        columns = [*RECORD_COLUMNS, *(QUERY_COLUMNS if self.task_mode == "at_time" else ()),
                   *(PAST_COLUMNS if self.history else ())]
        names = available_columns(rows)
        several = not isinstance(cities, CityRetriever)
        extra = [name for name in ("target_cell", "city") if name in names and (name != "city" or several)]
        if not several:
            cities = {cities.name: cities}
        parts = [self._chunk_table(rows_to_arrays(chunk, [*columns, *extra], self.max_past_records), columns,
                                   cities, several)
                 for chunk in row_chunks(rows, TABLE_CHUNK)]
        if len(parts) == 1:
            return parts[0]
        merged = {field: np.concatenate([getattr(part.candidates, field) for part in parts])
                  for field in ("cell_ids", "mask", "features", "record_weights", "num_unknown_records")}
        target = None if parts[0].target_cell is None else np.concatenate([part.target_cell for part in parts])
        return CandidateTable(CandidateSet(**merged), target, np.concatenate([part.last_point for part in parts]))

    def _chunk_table(self, arrays: Mapping[str, np.ndarray], columns: list[str], cities: Mapping[str, CityRetriever],
                     several: bool) -> CandidateTable:
        total = len(arrays["history_cell"])
        if several:
            city = np.asarray(arrays["city"]).astype(str) if "city" in arrays else np.array([], dtype=str)
            unknown = sorted(set(city.tolist()) - set(cities))
            if len(city) != total or unknown:
                raise ValueError(f"{self.name}: rows from cities {unknown or 'without a city column'}; "
                                 f"known: {sorted(cities)}")
            groups = {name: np.flatnonzero(city == name) for name in cities if (city == name).any()}
        else:
            groups = {next(iter(cities)): np.arange(total)}
        settings = dict(task_mode=self.task_mode, neighbors=self.neighbors, max_candidates=self.max_candidates,
                        time_features=self.time_features, history=self.history)
        parts = {
            name: build_candidates(cities[name], {key: value[part] for key, value in arrays.items()
                                                  if key in columns}, **settings)
            for name, part in groups.items()
        }
        candidates = merge_candidate_sets(parts, groups, total) if parts else build_candidates(
            next(iter(cities.values())), arrays, **settings)
        target = np.asarray(arrays["target_cell"], dtype=np.int64).reshape(-1) if "target_cell" in arrays else None
        return CandidateTable(candidates, target, np.asarray(arrays["current_coordinates"], dtype=np.float64)[:, -1])

    def fit(self, train_rows: Any, validation_rows: Any,
            cities: CityRetriever | Mapping[str, CityRetriever]) -> "CandidateFeatureRanker":
        """Learn on the training users' samples, select on the validation users' (see `table` for `cities`)."""
        return self.fit_tables(self.table(train_rows, cities), self.table(validation_rows, cities))

    def fit_tables(self, train: CandidateTable, validation: CandidateTable) -> "CandidateFeatureRanker":
        """`fit` on candidate tables already built (a sweep builds them once for every setting it tries)."""
        if not train.hits.any(axis=1).any() or not validation.hits.any(axis=1).any():
            raise ValueError(f"{self.name}: no training or validation sample has its true cell among the candidates")
        self._fit(train, validation)
        self.fitted = True
        return self

    def rank(self, rows: Any, retriever: CityRetriever, k: int = 20) -> np.ndarray:
        """`(N, k)` cell ids of `retriever`'s city, best first: candidates by score, then the nearest cells."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() before rank()")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= retriever.num_cells:
            raise ValueError(f"k={k!r}: expected an integer from 1 to the {retriever.num_cells} cells of "
                             f"city {retriever.name!r}")
        table = self.table(rows, retriever)
        if len(table.last_point) == 0:
            return np.zeros((0, k), dtype=np.int64)
        nearest, _ = retriever.query(table.last_point, int(k))
        return merge_rankings(table.candidates.cell_ids, self.scores(table), nearest, int(k))

    def _fit(self, train: CandidateTable, validation: CandidateTable) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def scores(self, table: CandidateTable) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - abstract


class GBDTRanker(CandidateFeatureRanker):
    """Gradient-boosted trees (scikit-learn HistGradientBoosting) scoring each candidate; see the module docstring."""

    name = "gbdt_ranker"

    def __init__(self, task_mode: str = "next", max_iter: int = 400, learning_rate: float = 0.1,
                 max_leaf_nodes: int = 31, min_samples_leaf: int = 40, l2_regularization: float = 1.0,
                 progress: bool = True, **settings):
        super().__init__(task_mode, **settings)
        self.params = dict(max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                           min_samples_leaf=min_samples_leaf, l2_regularization=l2_regularization)
        self.progress = progress

    def _estimator(self, max_iter: int):
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(**{**self.params, "max_iter": max_iter}, early_stopping=False,
                                              random_state=self.seed, verbose=2 if self.progress else 0)

    def _boost(self, max_iter: int, features: np.ndarray, labels: np.ndarray, description: str):
        """Fit `max_iter` trees with a progress bar: scikit-learn has no callback, so its verbose log (`[i/N]` per
        tree) is read and moves the bar instead of being printed."""
        bar = tqdm(total=max_iter, desc=f"{self.name}: {description}", unit="tree", leave=False,
                   disable=not self.progress)

        class TreesBuilt(io.TextIOBase):
            def write(self, text: str) -> int:
                for match in re.finditer(r"\[(\d+)/\d+\]", text):
                    bar.update(int(match[1]) - bar.n)
                return len(text)

        with bar, contextlib.redirect_stdout(TreesBuilt()):
            model = self._estimator(max_iter).fit(features, labels)
            bar.update(max_iter - bar.n)
        return model

    def _fit(self, train: CandidateTable, validation: CandidateTable) -> None:
        covered = train.hits.any(axis=1)  # a sample whose true cell is no candidate says nothing about ranking
        rows = train.candidates.mask & covered[:, None]
        features, labels = train.candidates.features[rows], train.hits[rows]
        model = self._boost(self.params["max_iter"], features, labels, "fit")
        mask = validation.candidates.mask
        history = []
        stages = model.staged_decision_function(validation.candidates.features[mask])
        for stage in tqdm(stages, total=model.n_iter_, desc=f"{self.name}: choose the trees on validation",
                          unit="tree", leave=False, disable=not self.progress):
            scores = np.full(mask.shape, -np.inf)
            scores[mask] = stage
            history.append(hit_at_1(scores, validation))
        self.validation_hit_at_1 = history
        self.best_iteration = int(np.argmax(history)) + 1
        # Deterministic boosting: refitting with the chosen number of iterations rebuilds exactly those trees.
        self.model = model if self.best_iteration == len(history) else self._boost(
            self.best_iteration, features, labels, "refit")

    def scores(self, table: CandidateTable) -> np.ndarray:
        mask = table.candidates.mask
        scores = np.full(mask.shape, -np.inf)
        if mask.any():
            scores[mask] = self.model.decision_function(table.candidates.features[mask])
        return scores


class FeatureMLPRanker(CandidateFeatureRanker):
    """The model's candidate scorer on the shared features alone (no backbone), trained listwise.

    Training is bounded three ways: at most `epochs`, ending after `patience` epochs without a better validation
    Hit@1, and after `max_steps` optimizer steps (None: no bound; the epoch cut short is still scored). After `fit`,
    `epochs_run` and `stopped` (`"epochs"`, `"patience"` or `"max_steps"`) say how it ended."""

    name = "feature_mlp_ranker"

    def __init__(self, task_mode: str = "next", width: int = 256, feature_bins: int = 8, epochs: int = 30,
                 batch_size: int = 256, learning_rate: float = 1e-3, patience: int = 6, max_steps: int | None = None,
                 progress: bool = True, **settings):
        super().__init__(task_mode, **settings)
        for field, value in (("epochs", epochs), ("patience", patience), ("batch_size", batch_size),
                             ("max_steps", 1 if max_steps is None else max_steps)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{self.name}: {field}={value!r}: expected a positive integer")
        self.width, self.feature_bins, self.epochs, self.batch_size = width, feature_bins, epochs, batch_size
        self.learning_rate, self.patience, self.max_steps, self.progress = learning_rate, patience, max_steps, progress

    def _fit(self, train: CandidateTable, validation: CandidateTable) -> None:
        torch.manual_seed(self.seed)
        generator = np.random.default_rng(self.seed)
        candidates = train.candidates
        self.scorer = CandidateScorer(candidates.features.shape[-1], context_size=0, width=self.width,
                                      feature_bins=self.feature_bins)
        self.scorer.fit_feature_encoding(candidates.features, candidates.mask)
        optimizer = torch.optim.Adam(self.scorer.parameters(), lr=self.learning_rate)
        covered = np.flatnonzero(train.hits.any(axis=1))
        features, mask = torch.from_numpy(candidates.features), torch.from_numpy(candidates.mask)
        cell_ids, targets = torch.from_numpy(candidates.cell_ids), torch.from_numpy(train.target_cell.copy())
        best, best_state, waited, self.validation_hit_at_1 = -1.0, None, 0, []
        steps_per_epoch = math.ceil(len(covered) / self.batch_size)
        total = self.epochs if self.max_steps is None else min(self.epochs, math.ceil(self.max_steps / steps_per_epoch))
        self.stopped, steps = "epochs", 0
        with tqdm(total=total, desc=self.name, unit="epoch", leave=False, disable=not self.progress) as bar:
            for _ in range(total):
                self.scorer.train()
                order = generator.permutation(covered)
                for start in range(0, len(order), self.batch_size):
                    batch = torch.from_numpy(order[start:start + self.batch_size])
                    loss, _ = candidate_listwise_loss(self.scorer(features[batch], mask[batch]), cell_ids[batch],
                                                      targets[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    steps += 1
                    if steps == self.max_steps:
                        self.stopped = "max_steps"
                        break
                score = hit_at_1(self.scores(validation), validation)
                self.validation_hit_at_1.append(score)
                bar.update(1)
                bar.set_postfix(validation_hit1=f"{score:.4f}", best=f"{max(best, score):.4f}")
                if score > best:
                    best, best_state, waited = score, copy.deepcopy(self.scorer.state_dict()), 0
                    continue
                waited += 1
                if waited >= self.patience and len(self.validation_hit_at_1) < total:
                    self.stopped = "patience"
                    bar.set_postfix_str(f"stopped early: no better validation Hit@1 in {self.patience} epochs")
                    bar.total = bar.n  # the bar ends full where training ended
                    bar.refresh()
                    break
        self.epochs_run, self.steps_run = len(self.validation_hit_at_1), steps
        self.best_epoch = int(np.argmax(self.validation_hit_at_1)) + 1
        self.scorer.load_state_dict(best_state)

    @torch.no_grad()
    def scores(self, table: CandidateTable) -> np.ndarray:
        self.scorer.eval()
        features = torch.from_numpy(table.candidates.features)
        mask = torch.from_numpy(table.candidates.mask)
        scores = torch.cat([self.scorer(features[i:i + 4096], mask[i:i + 4096]) for i in range(0, len(mask), 4096)])
        return np.where(table.candidates.mask, scores.double().numpy(), -np.inf)


FEATURE_RANKERS: dict[str, type[CandidateFeatureRanker]] = {cls.name: cls for cls in (GBDTRanker, FeatureMLPRanker)}

__all__ = ["FEATURE_RANKERS", "CandidateFeatureRanker", "CandidateTable", "FeatureMLPRanker", "GBDTRanker",
           "hit_at_1"]
