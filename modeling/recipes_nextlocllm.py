"""Recipes: named, measured settings of a NextLocLLM model and of the run that trains it.

A model has two dozen options, and the best measured combination is far from the paper's defaults (on NYC check-ins
the paper's head reaches 2 % Hit@1, the time-aware candidate ranker 50 %). A recipe names such a combination: the
config values of the model (`config`) and the training settings they were measured with (`training`, `train.py`'s
options). `NextLocLLMForCoordinateRegression.from_backbone(recipe=...)` and `train.py --recipe` apply one, with any
value given explicitly winning, and `NextLocLLMConfig.recipe` records which one built a model.

The task mode is in no recipe: `next` or `at_time` is the question asked ("where next?" or "where at time t?"), and an
`at_time` model needs the query time at inference, so it stays the user's choice (`task_mode`, default `next`).

Every recipe sets the same keys, so the recipe chosen decides each of them whatever the other recipes say.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class Recipe:
    """`summary`: one line (`train.py --help`); `config`: `NextLocLLMConfig` values; `training`: `train.py` options
    (the optimizer, the budget and the features-only warm start of a candidate ranker)."""

    name: str
    summary: str
    config: Mapping[str, Any]
    training: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "training", MappingProxyType(dict(self.training)))

    def values(self) -> dict[str, Any]:
        """Every value the recipe sets, config and training together (their keys never overlap)."""
        return {**self.config, **self.training}


RECIPES: Mapping[str, Recipe] = MappingProxyType({
    recipe.name: recipe for recipe in (
        # The best measured form (issue 26, docs/results.md): the offset head under the time-aware candidate ranker,
        # whose listwise loss outweighs the head's loss in metres (the ranking is the answer), reading the user's whole
        # earlier history; its feature path starts from the features-only warm start, so it learns at a tenth of the
        # main rate. The budget is the study's: SmolLM2 cut to 2 blocks, one epoch. The warm start's best epochs there
        # were 6 (`at_time`) and 7 (`next`) of up to 30 with patience 6; up to 10 with patience 3 picks the same ones.
        Recipe(
            name="ranker",
            summary="recommended: time-aware candidate ranker over the user's whole history (offset head, 2 blocks, "
                    "1 epoch)",
            config={"regression_target": "offset_from_last", "head_type": "point_ranker",
                    "candidate_loss_weight": 10000.0, "candidate_history": True, "max_candidates": 96,
                    "num_backbone_layers": 2},
            training={"learning_rate": 1e-3, "ranker_feature_path_learning_rate": 1e-4, "epochs": 1,
                      "per_device_batch_size": 32, "warm_start_epochs": 10, "warm_start_patience": 3},
        ),
        # The authors' model and training (arXiv 2410.09129): the absolute point head, 6 of GPT-2's 12 blocks, Adam at
        # 2e-4 for 10 epochs. These are the config's class defaults; the warm start applies only if a ranker head is
        # asked for.
        Recipe(
            name="paper",
            summary="the authors' model: absolute point head, 6 blocks, Adam 2e-4, 10 epochs",
            config={"regression_target": "absolute", "head_type": "point", "candidate_loss_weight": 1.0,
                    "candidate_history": False, "max_candidates": 64, "num_backbone_layers": 6},
            training={"learning_rate": 2e-4, "ranker_feature_path_learning_rate": None, "epochs": 10,
                      "per_device_batch_size": 32, "warm_start_epochs": 30, "warm_start_patience": 6},
        ),
    )
})
RECIPE_NAMES = tuple(RECIPES)
DEFAULT_RECIPE = "ranker"


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name is refused with the known ones."""
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"recipe={name!r}: expected one of {RECIPE_NAMES}")
    return RECIPES[name]


__all__ = ["Recipe", "RECIPES", "RECIPE_NAMES", "DEFAULT_RECIPE", "get_recipe"]
