"""Every baseline of a training run, scored on the very samples its model was tested on: the rules in each training
city (optionally the ID classifier and the boosted-tree ranker too) and, without learning from them, the zero-shot
cities. `train.py` reports these rows beside the model's in `results.json` and its table."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from tqdm.auto import tqdm

from ..metrics import MAX_RANK
from .feature_rankers import GBDTRanker
from .id_classifier import rank_with_id_classifier, train_id_classifier
from .rules import RULE_BASELINES, evaluate_rule_baselines, metrics_for_rankings

if TYPE_CHECKING:
    from ..data.city_dataset import CityDataset, MultiCityDataset
    from ..modeling.configuration_nextlocllm import NextLocLLMConfig


def candidate_settings(config: NextLocLLMConfig) -> dict[str, Any]:
    """A model's candidate settings as the feature rankers take them (`CandidateFeatureRanker`): a learned baseline or
    the model's warm start then ranks the candidates the model ranks, from the same features."""
    return {"neighbors": config.candidate_neighbors, "max_candidates": config.max_candidates,
            "time_features": config.candidate_time_features, "history": config.candidate_history,
            "max_past_records": config.max_past_records}


def score_baselines(
    cities: MultiCityDataset,
    zero_shot: Sequence[CityDataset],
    config: NextLocLLMConfig,
    *,
    seed: int = 0,
    gbdt: bool = False,
    id_classifier_epochs: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """`{"RULE / CITY": metrics}` on each city's test split: every rule in the training `cities`; with
    `id_classifier_epochs`, an ID classifier trained that long per city (`id_lstm`); with `gbdt`, one boosted-tree
    ranker fitted on all training cities (`gbdt_ranker`) over the candidates and features of the model whose `config`
    is given. A `zero_shot` city ("RULE / CITY (zero-shot)") gets the rules that need no training data, and the ranker,
    which transfers. The time-aware rules take the model's task mode; `seed` is the learners'. `progress`: a bar over
    these steps, and the learners' own bars."""
    task_mode = config.task_mode
    steps = len(cities.cities) * (1 + bool(id_classifier_epochs) + gbdt) + gbdt + len(zero_shot) * (1 + gbdt)
    baselines = {}
    with tqdm(total=steps, desc="baselines", unit="step", disable=not progress) as bar:

        @contextmanager
        def step(what: str) -> Iterator[None]:
            bar.set_postfix_str(what)
            yield
            bar.update(1)

        ranker = None
        if gbdt:
            with step("gbdt_ranker: fit"):
                ranker = GBDTRanker(task_mode, seed=seed, progress=progress, **candidate_settings(config)).fit(
                    cities.splits["train"], cities.splits["validation"], cities.retrievers)
        for name, city in cities.cities.items():
            retriever = city.retriever
            test = city.splits["test"]
            depth = min(MAX_RANK, retriever.num_cells)  # a small city is ranked whole (scored padded)
            with step(f"rules / {name}"):
                baselines.update({
                    f"{rule} / {name}": scores
                    for rule, scores in evaluate_rule_baselines(city.splits["train"], test, retriever,
                                                                task_mode=task_mode, progress=progress).items()
                })
            learned = {}
            if id_classifier_epochs:
                with step(f"id_lstm / {name}"):
                    classifier, _ = train_id_classifier(city.splits["train"], city.splits["validation"],
                                                        retriever.num_cells, epochs=id_classifier_epochs, seed=seed,
                                                        progress=progress)
                    learned["id_lstm"] = rank_with_id_classifier(classifier, test, depth, num_cells=retriever.num_cells)
            if ranker is not None:
                with step(f"gbdt_ranker / {name}"):
                    learned["gbdt_ranker"] = ranker.rank(test, retriever, depth)
            if learned:  # the test targets read once for both
                baselines.update({f"{learner} / {name}": scores
                                  for learner, scores in metrics_for_rankings(learned, test, retriever).items()})
        rules = [rule for rule in RULE_BASELINES if rule != "markov_train_users"]  # no rule learns from a new city
        for city in zero_shot:
            retriever = city.retriever
            test = city.splits["test"]
            with step(f"rules / {city.name} (zero-shot)"):
                scores = evaluate_rule_baselines(None, test, retriever, names=rules, task_mode=task_mode,
                                                 progress=progress)
                baselines.update({f"{rule} / {city.name} (zero-shot)": s for rule, s in scores.items()})
            if ranker is not None:
                with step(f"gbdt_ranker / {city.name} (zero-shot)"):
                    ranked = ranker.rank(test, retriever, min(MAX_RANK, retriever.num_cells))
                    baselines[f"gbdt_ranker / {city.name} (zero-shot)"] = metrics_for_rankings(
                        {"gbdt_ranker": ranked}, test, retriever)["gbdt_ranker"]
    return baselines
