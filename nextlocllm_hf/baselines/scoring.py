"""Every baseline of a training run, scored on the very samples its model was tested on: the rules in each training
city (optionally the ID classifier and the boosted-tree ranker too) and, without learning from them, the zero-shot
cities. `train.py` reports these rows beside the model's in `results.json` and its table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..metrics import MAX_RANK
from .feature_rankers import GBDTRanker
from .id_classifier import rank_with_id_classifier, train_id_classifier
from .rules import RULE_BASELINES, evaluate_rule_baselines, metrics_for_rankings

if TYPE_CHECKING:
    from ..data.city_dataset import CityDataset, MultiCityDataset


def score_baselines(
    cities: MultiCityDataset,
    zero_shot: Sequence[CityDataset],
    task_mode: str,
    *,
    seed: int = 0,
    gbdt: bool = False,
    id_classifier_epochs: int = 0,
) -> dict[str, dict[str, float]]:
    """`{"RULE / CITY": metrics}` on each city's test split: every rule in the training `cities`; with
    `id_classifier_epochs`, an ID classifier trained that long per city (`id_lstm`); with `gbdt`, one boosted-tree
    ranker fitted on all training cities (`gbdt_ranker`). A `zero_shot` city ("RULE / CITY (zero-shot)") gets the rules
    that need no training data, and the ranker, which transfers. `task_mode` is the model's; `seed` the learners'."""
    baselines = {}
    ranker = None
    if gbdt:
        ranker = GBDTRanker(task_mode, seed=seed).fit(cities.splits["train"], cities.splits["validation"],
                                                      cities.retrievers)
    for name, city in cities.cities.items():
        retriever = city.retriever
        test = city.splits["test"]
        depth = min(MAX_RANK, retriever.num_cells)  # a small city is ranked whole (scored padded)
        baselines.update({
            f"{rule} / {name}": scores
            for rule, scores in evaluate_rule_baselines(city.splits["train"], test, retriever,
                                                        task_mode=task_mode).items()
        })
        learned = {}
        if id_classifier_epochs:
            classifier, _ = train_id_classifier(city.splits["train"], city.splits["validation"], retriever.num_cells,
                                                epochs=id_classifier_epochs, seed=seed)
            learned["id_lstm"] = rank_with_id_classifier(classifier, test, depth, num_cells=retriever.num_cells)
        if ranker is not None:
            learned["gbdt_ranker"] = ranker.rank(test, retriever, depth)
        if learned:  # the test targets read once for both
            baselines.update({f"{learner} / {name}": scores
                              for learner, scores in metrics_for_rankings(learned, test, retriever).items()})
    rules = [rule for rule in RULE_BASELINES if rule != "markov_train_users"]  # no rule learns from a new city
    for city in zero_shot:
        retriever = city.retriever
        test = city.splits["test"]
        scores = evaluate_rule_baselines(None, test, retriever, names=rules, task_mode=task_mode)
        baselines.update({f"{rule} / {city.name} (zero-shot)": s for rule, s in scores.items()})
        if ranker is not None:
            ranked = ranker.rank(test, retriever, min(MAX_RANK, retriever.num_cells))
            baselines[f"gbdt_ranker / {city.name} (zero-shot)"] = metrics_for_rankings(
                {"gbdt_ranker": ranked}, test, retriever)["gbdt_ranker"]
    return baselines
