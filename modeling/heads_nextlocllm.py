"""The prediction heads on the backbone's readout state, each with its loss.

The config's `head_type` picks them: its position head from `POSITION_HEADS` (`config.position_head_type`), and with
a `_ranker` type the candidate ranker on top.
- `point` (the paper): one point, the normalized position or, with `regression_target="offset_from_last"`, the offset
  from the last input point; loss: mean distance in metres.
- `mixture`: `num_mixture_components` weighted 2-D Gaussians in normalized coordinates; loss: negative log-likelihood,
  plus optionally the closest mode's distance (`mixture_distance_loss_weight`).
- `point_ranker` / `mixture_ranker`: that position head, and a scorer that re-ranks a per-sample candidate set
  (`score_candidates`, listwise loss).
`use_duration_head` adds the stay-duration head. The heads are `nn.Linear` subclasses under the attribute names of the
published checkpoints (`regression_head`, `mixture_head`, `duration_head`): calling one gives its raw output, as a
linear layer does; `predict`/`loss` turn that into positions and losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

from .candidates_nextlocllm import (
    CandidateScorer,
    CandidateSet,
    build_candidates,
    candidate_feature_size,
    candidate_listwise_loss,
    merge_candidate_sets,
)
from .configuration_nextlocllm import NextLocLLMConfig
from .mixture_nextlocllm import mixture_negative_log_likelihood, split_mixture_parameters
from .ranking_nextlocllm import city_groups, mixture_density_feature
from .retrieval_nextlocllm import CityRetriever

Mixture = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # means (B, K, 2), log-scales or scales (B, K, 2), log-weights


@dataclass
class PositionPrediction:
    """A position head's output. `normalized`: `(B, 2)` the head's point in units of the city's std (see
    `NextLocLLMOutput.normalized_coordinates`); `coordinates`: `(B, 2)` float64 projected metres; with a mixture,
    `mixture` (normalized: means, log-scales, log-weights) and `mixture_metres` (means, scales, log-weights)."""

    normalized: torch.Tensor
    coordinates: torch.Tensor
    mixture: Mixture | None = None
    mixture_metres: Mixture | None = None


class PointHead(nn.Linear):
    """The paper's head: a linear map of the readout state to a normalized point (no bias)."""

    attribute_name: ClassVar[str] = "regression_head"

    def __init__(self, config: NextLocLLMConfig):
        super().__init__(config.hidden_size, 2, bias=False)
        self.regresses_offset = config.regression_target == "offset_from_last"  # zero-initialized then: "stay"

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


class MixtureHead(nn.Linear):
    """K diagonal Gaussians: `[means (2K) | log-scales (2K) | weight logits (K)]` in normalized coordinates (see
    `mixture_nextlocllm.py`); the reported point is the heaviest mode."""

    attribute_name: ClassVar[str] = "mixture_head"

    def __init__(self, config: NextLocLLMConfig):
        super().__init__(config.hidden_size, 5 * config.num_mixture_components)
        self.num_components = config.num_mixture_components
        self.distance_loss_weight = config.mixture_distance_loss_weight

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


POSITION_HEADS: dict[str, type[PointHead] | type[MixtureHead]] = {"point": PointHead, "mixture": MixtureHead}


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


def build_candidate_scorer(config: NextLocLLMConfig) -> CandidateScorer:
    """The ranker's scorer: the shared candidate features, and with a mixture its log-density at the cell."""
    num_features = candidate_feature_size(config.num_poi_classes, config.task_mode, config.candidate_time_features)
    num_features += config.position_head_type == "mixture"
    return CandidateScorer(num_features, config.hidden_size, config.candidate_ranker_width,
                           config.candidate_feature_bins)


def score_candidates(
    scorer: CandidateScorer,
    config: NextLocLLMConfig,
    batch: Mapping[str, torch.Tensor | None],
    city: str | Sequence[str],
    retriever_of: Callable[[str], CityRetriever],
    position: PositionPrediction,
    mean: torch.Tensor,
    std: torch.Tensor,
    last_state: torch.Tensor,
    record_states: torch.Tensor,
) -> tuple[CandidateSet, torch.Tensor]:
    """Each sample's candidate set (built per city, see `build_candidates`) and the scorer's `(B, M)` scores."""
    arrays = {name: value.detach().cpu().numpy() for name, value in batch.items()
              if value is not None and value.dim() > 0}
    total = len(arrays["history_cell"])
    groups = city_groups(city, total)
    parts = {
        name: build_candidates(retriever_of(name), {key: value[rows] for key, value in arrays.items()},
                               config.task_mode, neighbors=config.candidate_neighbors,
                               max_candidates=config.max_candidates, time_features=config.candidate_time_features)
        for name, rows in groups.items()
    }
    candidates = merge_candidate_sets(parts, groups, total)
    features = candidates.features
    if position.mixture is not None:
        features = mixture_density_feature(candidates, position.mixture, mean, std, city, retriever_of)
    device = last_state.device
    weights = torch.from_numpy(candidates.record_weights).to(device=device, dtype=record_states.dtype)
    scores = scorer(
        torch.from_numpy(features).to(device),
        torch.from_numpy(candidates.mask).to(device),
        last_state,
        weights @ record_states,  # (B, M, T) x (B, T, H): each candidate's mean state over its visits
    )
    return candidates, scores


def candidate_loss(scores: torch.Tensor, candidates: CandidateSet, target_cell: torch.Tensor) -> torch.Tensor:
    """The listwise loss of the true cell among the candidates (weighted by `candidate_loss_weight` in the total)."""
    ranking_loss, _ = candidate_listwise_loss(scores, candidates.cell_ids, target_cell)
    return ranking_loss


__all__ = ["PositionPrediction", "PointHead", "MixtureHead", "POSITION_HEADS", "DurationHead",
           "build_candidate_scorer", "score_candidates", "candidate_loss"]
