"""The prediction heads on the backbone's readout state, and the registry of head types that own them.

A head type (`config.head_type`, an entry of `HEAD_TYPES`) owns everything that differs between heads: the layers it
adds to the model (under the attribute names of the published checkpoints), its loss, how its output ranks a city's
cells (`rank`), the extra features it gives the candidate ranker, and its fields of `NextLocLLMOutput`. Outside this
file, code asks a head type what it does (`ranks_candidates`, `scorer_name`), never which one it is.
- `point` (the paper): one point, the normalized position or, with `regression_target="offset_from_last"`, the offset
  from the last input point; loss: mean distance in metres; cells ranked by distance (KD-tree).
- `mixture`: `num_mixture_components` weighted 2-D Gaussians in normalized coordinates; loss: negative log-likelihood,
  plus optionally the closest mode's distance (`mixture_distance_loss_weight`); cells ranked by density.
- `point_ranker` / `mixture_ranker`: that position head, and a scorer that re-ranks a per-sample candidate set
  (listwise loss); cells ranked by score, then by the position head for the remaining places.
`use_duration_head` adds the stay-duration head to any of them. The heads are `nn.Linear` subclasses: calling one
gives its raw output, as a linear layer does; `predict`/`loss` turn that into positions and losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from transformers import initialization as init

from .candidates_nextlocllm import (
    QUERY_COLUMNS,
    RECORD_COLUMNS,
    CandidateScorer,
    CandidateSet,
    build_candidates,
    candidate_feature_size,
    candidate_listwise_loss,
    merge_candidate_sets,
)
from .configuration_nextlocllm import NextLocLLMConfig
from .history_nextlocllm import PAST_COLUMNS
from .mixture_nextlocllm import (
    mixture_log_density_np,
    mixture_negative_log_likelihood,
    rank_cells_by_mixture_density,
    split_mixture_parameters,
)
from .ranking_nextlocllm import merge_rankings
from .retrieval_nextlocllm import CityRows

Mixture = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # means (B, K, 2), log-scales or scales (B, K, 2), log-weights


def init_linear(module: nn.Linear) -> None:
    """PyTorch's default initialization of a linear layer (the authors' code keeps it; transformers' N(0, 0.02)
    would start the record embeddings' signal ~30x smaller)."""
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    if module.bias is not None:
        bound = 1 / math.sqrt(module.in_features) if module.in_features else 0.0
        init.uniform_(module.bias, -bound, bound)


@dataclass
class PositionPrediction:
    """A position head's output. `normalized`: `(B, 2)` the head's point in units of the city's std (see
    `NextLocLLMOutput.normalized_coordinates`); `coordinates`: `(B, 2)` float64 projected metres; with a mixture,
    `mixture` (normalized: means, log-scales, log-weights) and `mixture_metres` (means, scales, log-weights)."""

    normalized: torch.Tensor
    coordinates: torch.Tensor
    mixture: Mixture | None = None
    mixture_metres: Mixture | None = None


@dataclass
class HeadResult:
    """What a head type computed for a batch: the position and its loss (None without labels), and with a ranker the
    candidates, their `(B, M)` scores and the weighted ranking loss (None without labels and target cells)."""

    position: PositionPrediction
    loss: torch.Tensor | None
    candidates: CandidateSet | None = None
    scores: torch.Tensor | None = None
    ranking_loss: torch.Tensor | None = None


class PointHead(nn.Linear):
    """The paper's head: a linear map of the readout state to a normalized point (no bias)."""

    attribute_name: ClassVar[str] = "regression_head"
    extra_candidate_features: ClassVar[int] = 0

    def __init__(self, config: NextLocLLMConfig):
        super().__init__(config.hidden_size, 2, bias=False)
        self.regresses_offset = config.regression_target == "offset_from_last"

    @staticmethod
    def description(config: NextLocLLMConfig) -> str:
        if config.regression_target == "offset_from_last":
            return "single point as an offset from the last input point, cells ranked by distance to it (KD-tree)"
        return "single point (paper), cells ranked by distance to it (KD-tree)"

    def init_head_weights(self) -> None:
        """The offset head starts at zero, i.e. at "stay at the last point"."""
        if self.regresses_offset:
            init.zeros_(self.weight)
        else:
            init_linear(self)

    def predict(self, last_state: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                last_point: torch.Tensor) -> PositionPrediction:
        normalized = self(last_state)
        # De-normalize in float64: projected coordinates are ~1e7 m, beyond float32's metre precision.
        origin = last_point.double() if self.regresses_offset else mean
        return PositionPrediction(normalized, normalized.double() * std + origin)

    def loss(self, prediction: PositionPrediction, labels: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor) -> torch.Tensor:
        """Mean Euclidean distance to the true position, in projected metres."""
        distance = torch.linalg.vector_norm(prediction.coordinates - labels.double(), dim=-1)
        return distance.mean().to(prediction.normalized.dtype)

    def rank(self, prediction: PositionPrediction, city: CityRows, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The city's `depth` cells nearest to each of its samples' points, and minus their distance (higher first)."""
        points = prediction.coordinates.detach().cpu().numpy()[city.rows]
        cells, distances = city.retriever.query(points, depth)
        return cells, -distances

    def candidate_features(self, prediction: PositionPrediction, candidates: CandidateSet,
                           city: CityRows) -> np.ndarray:
        return candidates.features

    def output_fields(self, prediction: PositionPrediction) -> dict[str, torch.Tensor]:
        return {}


class MixtureHead(nn.Linear):
    """K diagonal Gaussians: `[means (2K) | log-scales (2K) | weight logits (K)]` in normalized coordinates (see
    `mixture_nextlocllm.py`); the reported point is the heaviest mode."""

    attribute_name: ClassVar[str] = "mixture_head"
    extra_candidate_features: ClassVar[int] = 1  # the mixture's log-density at the candidate

    def __init__(self, config: NextLocLLMConfig):
        super().__init__(config.hidden_size, 5 * config.num_mixture_components)
        self.num_components = config.num_mixture_components
        self.distance_loss_weight = config.mixture_distance_loss_weight

    @staticmethod
    def description(config: NextLocLLMConfig) -> str:
        return f"{config.num_mixture_components}-component Gaussian mixture, cells ranked by mixture density"

    def init_head_weights(self) -> None:
        init_linear(self)

    def predict(self, last_state: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                last_point: torch.Tensor) -> PositionPrediction:
        # In float32 even under autocast: bf16 rounds a z-score of 2 by ~1e-2, metres at the scale floor.
        with torch.autocast(last_state.device.type, enabled=False):
            raw = self(last_state.float())
        means, log_scales, log_weights = split_mixture_parameters(raw, self.num_components)
        normalized = means[torch.arange(len(means), device=means.device), log_weights.argmax(-1)]
        metres = (means.double() * std[:, None] + mean[:, None], log_scales.double().exp() * std[:, None],
                  log_weights.double())
        return PositionPrediction(normalized, normalized.double() * std + mean, (means, log_scales, log_weights),
                                  metres)

    def loss(self, prediction: PositionPrediction, labels: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the true position (normalized units), plus the optional best-mode distance."""
        means, log_scales, log_weights = prediction.mixture
        targets = ((labels.double() - mean) / std).float()
        loss = mixture_negative_log_likelihood(means, log_scales, log_weights, targets).mean()
        if self.distance_loss_weight:
            closest = torch.linalg.vector_norm(means - targets[:, None], dim=-1).min(dim=-1).values.mean()
            loss = loss + self.distance_loss_weight * closest
        return loss.to(means.dtype)

    def rank(self, prediction: PositionPrediction, city: CityRows, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The city's `depth` cells of highest density at their centres, and that log-density (per square metre)."""
        means, scales, log_weights = (t.detach().cpu().numpy()[city.rows] for t in prediction.mixture_metres)
        return rank_cells_by_mixture_density(city.retriever, means, scales, log_weights, depth)

    def candidate_features(self, prediction: PositionPrediction, candidates: CandidateSet,
                           city: CityRows) -> np.ndarray:
        """The candidate features plus the mixture's log-density at each cell centre, in normalized units
        (city-agnostic), clipped to [-30, 10] and divided by 10; 0 at padding. A light mode then lifts its cells less
        than a heavy one."""
        retriever = city.retriever
        means, log_scales, log_weights = (t.detach().double().cpu().numpy()[city.rows] for t in prediction.mixture)
        centres = retriever.xy[retriever.rows_of(np.maximum(candidates.cell_ids, 0)).clip(min=0)]
        normalized = (centres - retriever.coordinate_mean) / retriever.coordinate_std
        density = mixture_log_density_np(normalized, means, np.exp(log_scales), log_weights)
        feature = np.where(candidates.mask, np.clip(density, -30.0, 10.0) / 10.0, 0.0).astype(np.float32)
        return np.concatenate([candidates.features, feature[..., None]], axis=-1)

    def output_fields(self, prediction: PositionPrediction) -> dict[str, torch.Tensor]:
        means, scales, log_weights = prediction.mixture_metres
        return {"mixture_means": means, "mixture_scales": scales, "mixture_weights": log_weights.exp()}


class DurationHead(nn.Linear):
    """The next visit's stay duration, regressed as log1p hours (ReLU keeps it >= 0)."""

    attribute_name: ClassVar[str] = "duration_head"

    def __init__(self, config: NextLocLLMConfig):
        super().__init__(config.hidden_size, 1, bias=False)
        self.loss_weight = config.duration_loss_weight

    def predict(self, last_state: torch.Tensor) -> torch.Tensor:
        """`(B,)` log1p hours."""
        return torch.relu(self(last_state)).squeeze(-1)

    def loss(self, log_duration: torch.Tensor, duration_labels: torch.Tensor) -> torch.Tensor:
        """The weighted MSE on log1p hours, ready to add to the position loss."""
        mse = nn.functional.mse_loss(log_duration, torch.log1p(duration_labels.to(log_duration.dtype)))
        return self.loss_weight * mse


class PositionHeadType:
    """`point` / `mixture`: a position head alone; it ranks the cells itself."""

    ranks_candidates = False  # whether the head type has a candidate scorer (train.py warm-starts it)

    def __init__(self, position_head: type[PointHead] | type[MixtureHead]):
        self.position_head = position_head

    def description(self, config: NextLocLLMConfig) -> str:
        """Which prediction head a checkpoint uses, in words (model cards, logs)."""
        return f"{self.position_head.description(config)} (task: {config.task_mode})"

    def layers(self, config: NextLocLLMConfig) -> dict[str, nn.Module]:
        """The modules this head type adds to the model, under their checkpoint names, in construction order."""
        return {self.position_head.attribute_name: self.position_head(config)}

    def run(self, model: nn.Module, inputs: Mapping[str, torch.Tensor | None], cities: Sequence[CityRows] | None,
            mean: torch.Tensor, std: torch.Tensor, last_state: torch.Tensor,
            record_states: torch.Tensor) -> HeadResult:
        head = getattr(model, self.position_head.attribute_name)
        position = head.predict(last_state, mean, std, inputs["current_coordinates"][:, -1])
        labels = inputs["labels"]
        return HeadResult(position, None if labels is None else head.loss(position, labels, mean, std))

    def rank(self, model: nn.Module, result: HeadResult, city: CityRows,
             depth: int) -> tuple[np.ndarray, np.ndarray]:
        """`(n, depth)` the city's best cells for its samples and what they were ranked by (higher first)."""
        return getattr(model, self.position_head.attribute_name).rank(result.position, city, depth)

    def output_fields(self, model: nn.Module, result: HeadResult) -> dict[str, torch.Tensor]:
        return getattr(model, self.position_head.attribute_name).output_fields(result.position)


class CandidateRankerType(PositionHeadType):
    """`point_ranker` / `mixture_ranker`: the position head, and a scorer that re-ranks each sample's candidate set
    (its records' cells and the cells around its last point) from query-time-aware features, the position head's own
    feature and the backbone's states; cells ranked by score, then by the position head for the remaining places."""

    scorer_name = "candidate_scorer"
    ranks_candidates = True

    def description(self, config: NextLocLLMConfig) -> str:
        history = " and the user's earlier cells, with whole-history statistics" if config.candidate_history else ""
        return (f"{self.position_head.description(config)}; candidate ranker re-ranks the input-record cells, the "
                f"cells near the last point{history} (task: {config.task_mode})")

    def layers(self, config: NextLocLLMConfig) -> dict[str, nn.Module]:
        num_features = candidate_feature_size(config.num_poi_classes, config.task_mode, config.candidate_time_features,
                                              config.candidate_history)
        num_features += self.position_head.extra_candidate_features
        scorer = CandidateScorer(num_features, config.hidden_size, config.candidate_ranker_width,
                                 config.candidate_feature_bins)
        return {**super().layers(config), self.scorer_name: scorer}

    def run(self, model: nn.Module, inputs: Mapping[str, torch.Tensor | None], cities: Sequence[CityRows] | None,
            mean: torch.Tensor, std: torch.Tensor, last_state: torch.Tensor,
            record_states: torch.Tensor) -> HeadResult:
        result = super().run(model, inputs, cities, mean, std, last_state, record_states)
        if cities is None or inputs["history_cell"] is None or inputs["current_cell"] is None:
            raise ValueError(f"head_type={model.config.head_type!r} (the candidate ranker) needs city=, history_cell "
                             f"and current_cell")
        candidates = self.candidates(model, inputs, cities, result.position)
        device = last_state.device
        weights = torch.from_numpy(candidates.record_weights).to(device=device, dtype=record_states.dtype)
        scores = getattr(model, self.scorer_name)(
            torch.from_numpy(candidates.features).to(device),
            torch.from_numpy(candidates.mask).to(device),
            last_state,
            weights @ record_states,  # (B, M, T) x (B, T, H): each candidate's mean state over its visits
        )
        ranking_loss = None
        if inputs["target_cell"] is not None and result.loss is not None:
            listwise, _ = candidate_listwise_loss(scores, candidates.cell_ids, inputs["target_cell"])
            ranking_loss = model.config.candidate_loss_weight * listwise.to(result.loss.dtype)
        return HeadResult(result.position, result.loss, candidates, scores, ranking_loss)

    def candidates(self, model: nn.Module, inputs: Mapping[str, torch.Tensor | None], cities: Sequence[CityRows],
                   position: PositionPrediction) -> CandidateSet:
        """Each sample's candidate set, built with its city's cells and statistics (`build_candidates`), with the
        position head's feature appended."""
        config, head = model.config, getattr(model, self.position_head.attribute_name)
        arrays = {name: inputs[name].detach().cpu().numpy() for name in (*RECORD_COLUMNS, *QUERY_COLUMNS, *PAST_COLUMNS)
                  if inputs.get(name) is not None and inputs[name].dim() > 0}
        parts, rows = {}, {}
        for city in cities:
            part = build_candidates(city.retriever, {key: value[city.rows] for key, value in arrays.items()},
                                    config.task_mode, neighbors=config.candidate_neighbors,
                                    max_candidates=config.max_candidates, time_features=config.candidate_time_features,
                                    history=config.candidate_history)
            parts[city.retriever.name] = replace(part, features=head.candidate_features(position, part, city))
            rows[city.retriever.name] = city.rows
        return merge_candidate_sets(parts, rows, len(arrays["history_cell"]))

    def rank(self, model: nn.Module, result: HeadResult, city: CityRows,
             depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Scored candidates first, then the position head's ranking; a cell's score is its candidate score (NaN for
        a cell only the position head listed)."""
        fallback, _ = super().rank(model, result, city, depth)
        candidate_cells = result.candidates.cell_ids[city.rows]
        candidate_scores = result.scores.detach()[city.rows].float().cpu().numpy()
        ranked = merge_rankings(candidate_cells, candidate_scores, fallback, depth)
        # Each ranked cell's candidate score: a sorted lookup of (row, cell) keys, O((M + depth) log M) per row.
        width = int(max(candidate_cells.max(initial=0), ranked.max(initial=0))) + 1
        row_offset = np.arange(len(ranked))[:, None] * width
        keys = np.where(candidate_cells >= 0, candidate_cells + row_offset, -1).ravel()
        order = np.argsort(keys, kind="stable")
        wanted = (ranked + row_offset).ravel()
        position = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
        found = keys[order][position] == wanted
        scores = np.where(found, candidate_scores.ravel()[order[position]], np.nan)
        return ranked, scores.reshape(ranked.shape)

    def output_fields(self, model: nn.Module, result: HeadResult) -> dict[str, torch.Tensor]:
        cells = torch.from_numpy(result.candidates.cell_ids).to(result.scores.device)
        return {**super().output_fields(model, result), "candidate_cells": cells, "candidate_scores": result.scores}


# One entry per `NextLocLLMConfig.head_type` (configuration_nextlocllm.HEAD_TYPES names them for validation).
HEAD_TYPES: dict[str, PositionHeadType] = {
    "point": PositionHeadType(PointHead),
    "mixture": PositionHeadType(MixtureHead),
    "point_ranker": CandidateRankerType(PointHead),
    "mixture_ranker": CandidateRankerType(MixtureHead),
}

__all__ = ["PositionPrediction", "HeadResult", "PointHead", "MixtureHead", "DurationHead", "PositionHeadType",
           "CandidateRankerType", "HEAD_TYPES", "init_linear"]
