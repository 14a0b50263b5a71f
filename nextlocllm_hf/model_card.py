"""Model cards filled from `model_cards/nextlocllm.md` with `huggingface_hub`'s card tools and real metrics."""

from __future__ import annotations

from importlib import resources
from typing import Mapping, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .metrics import format_table

TEMPLATE = "nextlocllm.md"
REPORTED_METRICS = ("hit@1", "hit@5", "hit@10", "mrr", "mean_error_m")


def build_model_card(
    model,
    results: Mapping,
    repo_id: str,
    train_cities: Sequence[str],
    dataset_ids: Sequence[str] = (),
    metric_for_best_model: str = "hit@1",
) -> ModelCard:
    """A card whose metadata lists every (city, metric) test result and whose body shows them as a table.

    `results` is `train.py`'s results.json content: `{"test": {city: metrics}, "zero_shot": {...}, "best_step": N}`.
    """
    config = model.config
    eval_results = []
    for setting, scores_by_city in (("test", results.get("test", {})), ("zero-shot", results.get("zero_shot", {}))):
        for city, scores in scores_by_city.items():
            if city == "all":
                continue
            for metric in REPORTED_METRICS:
                eval_results.append(
                    EvalResult(
                        task_type="next-location-prediction",
                        task_name=f"Next-location prediction ({setting})",
                        dataset_type=f"nextlocllm-city/{city}",
                        dataset_name=f"{city} ({setting})",
                        dataset_split="test",
                        metric_type=metric,
                        metric_name=metric,
                        metric_value=round(float(scores[metric]), 6),
                    )
                )
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        library_name="transformers",
        license="apache-2.0",
        base_model=_hub_base_model(config.backbone_name_or_path),
        datasets=list(dataset_ids) or None,
        tags=["next-location-prediction", "human-mobility", "nextlocllm", "coordinate-regression"],
        metrics=list(REPORTED_METRICS),
        eval_results=eval_results or None,
    )
    rows = {f"{city} (test)": s for city, s in results.get("test", {}).items() if city != "all"}
    rows.update({f"{city} (zero-shot)": s for city, s in results.get("zero_shot", {}).items() if city != "all"})
    template = resources.files("nextlocllm_hf.model_cards").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        repo_id=repo_id,
        history_length=config.history_length,
        current_length=config.current_length,
        backbone=config.backbone_name_or_path or config.llm_config.model_type,
        num_backbone_layers=config.num_backbone_layers,
        adaptation=config.adaptation,
        total_parameters=f"{sum(p.numel() for p in model.parameters()):,}",
        trainable_parameters=f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
        use_prompt=config.use_prompt,
        use_llm_poi=config.use_llm_poi,
        use_duration_head=config.use_duration_head,
        task_mode=config.task_mode,
        head=model.head_description,
        poi_classes=", ".join(config.poi_class_names),
        cities=", ".join(model.cities) or "none",
        first_city=model.cities[0] if model.cities else "CITY",
        at_argument=', at="2012-06-01 18:00"' if config.task_mode == "at_time" else "",
        train_cities=", ".join(train_cities),
        metric_for_best_model=metric_for_best_model,
        best_step=results.get("best_step", "?"),
        results_table="```\n" + format_table(rows) + "\n```" if rows else "No evaluation recorded.",
    )


def _hub_base_model(name_or_path: str | None) -> str | None:
    """Only a Hub id is a valid `base_model`; the embedded SmolLM2 is HuggingFaceTB/SmolLM2-135M-Instruct."""
    if name_or_path == "smollm2-135m":
        return "HuggingFaceTB/SmolLM2-135M-Instruct"
    if name_or_path and name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        return name_or_path
    return None
