"""Baselines ranking a city's candidate cells on the same samples as the model.

Rules (``rules.py``, no learning except ``markov_train_users``)::

    from nextlocllm_hf.baselines import RULE_BASELINES, rank_rule_baselines, metrics_for_rankings
    rankings = rank_rule_baselines(city.splits["train"], city.splits["test"], city.retriever, k=20)
    table = metrics_for_rankings(rankings, city.splits["test"], city.retriever)   # {name: compute_metrics(...)}
    table = evaluate_rule_baselines(city.splits["train"], city.splits["test"], city.retriever)  # both steps

Learned rankers over the model's candidate features, without a language model (``feature_rankers.py``)::

    ranker = GBDTRanker("at_time").fit(city.splits["train"], city.splits["validation"], city.retriever)
    ranked = ranker.rank(other_city.splits["test"], other_city.retriever, k=20)   # zero-shot works the same way

ID classification (``id_classifier.py``, LSTM over cell ids + hour + day, softmax over the city's cells)::

    model, history = train_id_classifier(train, validation, retriever.num_cells, epochs=10, batch_size=256,
                                         learning_rate=1e-3, seed=0)
    ranked = rank_with_id_classifier(model, test, k=20, num_cells=retriever.num_cells)

All of them on a training run's test samples, as `train.py` reports them (``scoring.py``)::

    rows = score_baselines(cities, zero_shot, model.config, seed=0, gbdt=True, id_classifier_epochs=10)
    ranker = GBDTRanker(model.config.task_mode, **candidate_settings(model.config))   # the model's candidates
"""

from __future__ import annotations

from .feature_rankers import FEATURE_RANKERS, FeatureMLPRanker, GBDTRanker
from .id_classifier import IDClassifier, rank_with_id_classifier, train_id_classifier
from .rules import (
    RULE_BASELINES,
    LastLocation,
    MarkovFrequencyMixture,
    MarkovTrainUsers,
    MarkovWithinSample,
    MostFrequent,
    HourFrequency,
    TIME_AWARE_RULES,
    make_rule,
    NearestCells,
    RuleBaseline,
    evaluate_rule_baselines,
    metrics_for_rankings,
    pad_with_nearest,
    rank_rule_baselines,
    rows_to_arrays,
    top1_centroid_xy,
)
from .scoring import candidate_settings, score_baselines

__all__ = [
    "FEATURE_RANKERS",
    "FeatureMLPRanker",
    "GBDTRanker",
    "HourFrequency",
    "TIME_AWARE_RULES",
    "make_rule",
    "RULE_BASELINES",
    "RuleBaseline",
    "LastLocation",
    "MostFrequent",
    "MarkovWithinSample",
    "MarkovTrainUsers",
    "MarkovFrequencyMixture",
    "NearestCells",
    "rank_rule_baselines",
    "evaluate_rule_baselines",
    "metrics_for_rankings",
    "top1_centroid_xy",
    "pad_with_nearest",
    "rows_to_arrays",
    "IDClassifier",
    "train_id_classifier",
    "rank_with_id_classifier",
    "candidate_settings",
    "score_baselines",
]
