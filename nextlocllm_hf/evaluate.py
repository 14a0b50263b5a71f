"""Scoring a model (and the baselines) on a city split: `python -m nextlocllm_hf.evaluate --model DIR --dataset DIR`.

Predictions and the model's own top-k cells (by distance for the paper's head, by density for the mixture head, by
score with the candidate ranker) are gathered across processes with `gather_for_metrics` (every sample exactly once)
and scored with `nextlocllm_hf.metrics`. A city the model never saw is evaluated
zero-shot: its retriever (cells + statistics) is added to the model first.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batching import CitySamples, collate_batch, model_inputs
from .cli import entry_point, positive_int, program_name
from .data.city_dataset import SPLITS
from .metrics import MAX_RANK, compute_metrics, format_table
from .modeling.retrieval_nextlocllm import CityRetriever

ALL_CITIES = "all"  # the key of the scores over every sample of a split


def model_samples(model, split, retrievers: Mapping[str, CityRetriever]) -> CitySamples:
    """`split` as `model` reads it, in the task mode of the model's config and with the users' earlier records when it
    reads them: every split a model trains on or is scored on is made here, so these settings are read in one place,
    and what follows (the baselines, the results) takes them from the samples (`CitySamples`)."""
    config = model.config
    history = config.candidate_history and model.head_type.ranks_candidates  # only a candidate ranker reads the past
    return CitySamples(split, retrievers, task_mode=config.task_mode, history=history,
                       max_past_records=config.max_past_records)


@torch.no_grad()
def predict(
    model, dataloader, city_names: Sequence[str], accelerator=None, description: str = "predict"
) -> dict[str, np.ndarray]:
    """Predicted positions and top-`MAX_RANK` cells of every sample, with targets, gathered from all processes in
    dataset order. The model ranks the cells itself: by distance, mixture density or candidate scores (its head); the
    depth follows each city (one with fewer cells is ranked whole and padded with `NO_CELL`, which never hits, so its
    Hit@20 is its Hit@cells)."""
    model.eval()
    show = accelerator is None or accelerator.is_local_main_process
    chunks: dict[str, list[np.ndarray]] = defaultdict(list)
    for batch in tqdm(dataloader, desc=description, disable=not show, leave=False):
        outputs = model(**model_inputs(batch, city_names), top_k=MAX_RANK)
        values = {
            "coordinates": outputs.coordinates,
            "ranked": outputs.top_k_cells,
            "labels": batch["labels"],
            "target_cell": batch["target_cell"],
            "city_index": batch["city_index"],
        }
        if accelerator is not None:
            values = accelerator.gather_for_metrics(values)
        for name, value in values.items():
            chunks[name].append(value.detach().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def score_predictions(predictions: Mapping[str, np.ndarray], city_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Metrics per city (each sample ranked among its own city's cells) and over all samples (key "all")."""
    ranked = predictions["ranked"]
    scores = {}
    for index, name in enumerate(city_names):
        rows = predictions["city_index"] == index
        if not rows.any():
            continue
        scores[name] = compute_metrics(
            ranked[rows], predictions["target_cell"][rows], predictions["coordinates"][rows], predictions["labels"][rows]
        )
    scores[ALL_CITIES] = compute_metrics(
        ranked, predictions["target_cell"], predictions["coordinates"], predictions["labels"]
    )
    return scores


def evaluate_model(model, samples: CitySamples, batch_size: int = 64, accelerator=None, description="evaluate",
                   num_workers: int = 0):
    """Predict and score a split (batches gathered by `num_workers` processes); returns (metrics per city, raw
    predictions)."""
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, collate_fn=collate_batch,
                        num_workers=num_workers)
    if accelerator is not None:
        loader = accelerator.prepare(loader)
    predictions = predict(model, loader, samples.city_names, accelerator, description)
    return score_predictions(predictions, samples.city_names), predictions


def single_city_view(scores: Mapping[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-city scores; the "all" entry only when several cities share the split (with one, it repeats the city's)."""
    return {k: v for k, v in scores.items() if k != ALL_CITIES or len(scores) > 2}


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    from .baselines import evaluate_rule_baselines
    from .data import load_city_splits
    from .modeling.modeling_nextlocllm import NextLocLLMForCoordinateRegression

    parser = argparse.ArgumentParser(prog=program_name("nextlocllm_hf.evaluate"), description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved model folder or Hub id")
    parser.add_argument("--dataset", required=True, help="a built city folder or Hub dataset id")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--baselines", action="store_true", help="also score the rule baselines on the same samples")
    args = parser.parse_args(argv)

    city = load_city_splits(args.dataset)  # before the model: the cheaper check first
    model = NextLocLLMForCoordinateRegression.from_pretrained(args.model)
    check_compatible(model.config, city.metadata, args.dataset)
    if city.name not in model.cities:
        print(f"city {city.name!r} is new to this model: evaluating zero-shot with its own cells and statistics")
        model.add_city(city.retriever)
    samples = model_samples(model, city.splits[args.split], {city.name: city.retriever})
    scores, _ = evaluate_model(model, samples, args.batch_size)
    rows = {"NextLocLLM": scores[city.name]}
    if args.baselines:
        rows.update(evaluate_rule_baselines(city.splits["train"], city.splits[args.split], city.retriever,
                                            task_mode=samples.task_mode))
    print(f"{city.name} / {args.split} ({len(samples)} samples), task {samples.task_mode}")
    print(format_table(rows))


def check_compatible(config, metadata: Mapping, where: str) -> None:
    """A model and a city dataset must agree on sequence lengths and POI classes; say which field differs."""
    pairs = {
        "history_length": (config.history_length, metadata["history_length"]),
        "current_length": (config.current_length, metadata["current_length"]),
        "poi_classes": (list(config.poi_class_names), list(metadata["poi_classes"])),
    }
    for field, (model_value, data_value) in pairs.items():
        if model_value != data_value:
            raise ValueError(f"{where}: {field}={data_value!r} in the data but {model_value!r} in the model")


if __name__ == "__main__":
    sys.exit(main())
