"""Train NextLocLLM on one or more cities with Accelerate, on one process or many.

    python train.py --dataset data/nyc --output_dir runs/nyc
    accelerate launch --multi_gpu --num_processes 4 train.py --dataset data/nyc data/tokyo --output_dir runs/two
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py ...   # two CPU processes (gloo)

What it guarantees, unlike the authors' script: the loss goes through the prepared (DDP) model so gradients are
synchronized; evaluation gathers every sample once; the best checkpoint is the one with the best *validation* score
(Hit@1 by default, higher is better); the test split is scored once, at the end, on that checkpoint; and a run
resumes mid-epoch from `--resume_from_checkpoint` to the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import nextlocllm_hf
from nextlocllm_hf.baselines import (
    RULE_BASELINES,
    FeatureMLPRanker,
    GBDTRanker,
    evaluate_rule_baselines,
    metrics_for_rankings,
    rank_with_id_classifier,
    train_id_classifier,
)
from nextlocllm_hf.batching import CitySamples, collate_batch, model_inputs
from nextlocllm_hf.checkpoint_selection import BestCheckpointTracker, higher_is_better
from nextlocllm_hf.data import load_cities, load_city_splits
from nextlocllm_hf.evaluate import ALL_CITIES, MAX_RANK, check_compatible, evaluate_model
from nextlocllm_hf.metrics import format_table
from nextlocllm_hf.model_card import build_model_card

REPO_ROOT = Path(__file__).resolve().parent


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train NextLocLLM with Accelerate.")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", nargs="+", required=True, help="city folders (or Hub ids) to train on")
    data.add_argument("--zero_shot_dataset", nargs="*", default=[], help="cities to evaluate zero-shot at the end")
    data.add_argument("--max_eval_samples", type=int, default=None, help="cap the validation samples per evaluation")

    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="smollm2-135m", help="Hub id, local folder, or smollm2-135m (embedded)")
    model.add_argument("--init_model", default=None, help="continue from a saved NextLocLLM folder instead")
    model.add_argument("--num_backbone_layers", type=int, default=6)
    model.add_argument("--adaptation", default="norms", choices=["norms", "lora", "full", "frozen"])
    model.add_argument("--no_prompt", action="store_true", help="drop the natural-language prompt prefix")
    model.add_argument("--no_llm_poi", action="store_true", help="use a linear POI embedding instead")
    model.add_argument("--poi_text_encoding", default="token_embeddings", choices=["token_embeddings", "hidden_states"],
                       help="POI descriptions through the token-embedding table (paper) or the backbone's blocks")
    model.add_argument("--duration_head", action="store_true", help="also predict the next stay duration")
    model.add_argument("--task_mode", default="next", choices=["next", "at_time"],
                       help="next: the records alone; at_time: also the target's day, hour and gap (the query)")
    model.add_argument("--regression_target", default="absolute", choices=["absolute", "offset_from_last"],
                       help="point head: the paper's absolute position, or the offset from the last input point")
    model.add_argument("--num_mixture_components", type=int, default=0,
                       help="K > 0: Gaussian-mixture head ranking cells by density (0: the paper's point head)")
    model.add_argument("--mixture_distance_loss_weight", type=float, default=0.0,
                       help="add the distance of the closest mode (normalized units) to the mixture likelihood")
    model.add_argument("--candidate_ranker", action="store_true",
                       help="re-rank the input-record cells and the cells near the last point (listwise loss)")
    model.add_argument("--candidate_loss_weight", type=float, default=1.0, help="weight of the listwise loss")
    model.add_argument("--no_candidate_time_features", action="store_true",
                       help="drop the time-conditioned candidate features (an ablation)")
    model.add_argument("--max_candidates", type=int, default=64, help="candidates per sample for the ranker")
    model.add_argument("--candidate_neighbors", type=int, default=10,
                       help="cells nearest the last input point among the ranker's candidates")

    train = parser.add_argument_group("optimization")
    train.add_argument("--output_dir", required=True)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--max_steps", type=int, default=None, help="optimizer steps; overrides --epochs")
    train.add_argument("--per_device_batch_size", type=int, default=32)
    train.add_argument("--per_device_eval_batch_size", type=int, default=64)
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    train.add_argument("--learning_rate", type=float, default=2e-4, help="paper: Adam 2e-4")
    train.add_argument("--ranker_feature_path_learning_rate", type=float, default=None,
                       help="learning rate of the candidate scorer's feature path and MLP, which the features-only "
                            "warm start has already trained (default: --learning_rate)")
    train.add_argument("--weight_decay", type=float, default=0.01, help="paper: 0.01 (Adam, coupled)")
    train.add_argument("--lr_scheduler", default="plateau", choices=["plateau", "constant"])
    train.add_argument("--plateau_factor", type=float, default=0.5, help="paper: halve the learning rate")
    train.add_argument("--plateau_patience", type=int, default=2, help="evaluations without improvement")
    train.add_argument("--max_grad_norm", type=float, default=None, help="clip gradients (paper: no clipping)")
    train.add_argument("--seed", type=int, default=0)

    loop = parser.add_argument_group("evaluation and checkpoints")
    loop.add_argument("--eval_steps", type=int, default=None, help="evaluate every N steps (default: each epoch)")
    loop.add_argument("--metric_for_best_model", default="hit@1")
    loop.add_argument("--early_stopping_patience", type=int, default=0, help="evaluations; 0 disables")
    loop.add_argument("--checkpointing_steps", type=int, default=None, help="save resumable state every N steps")
    loop.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint-N folder, or 'latest'")
    loop.add_argument("--report_to", default="none", choices=["none", "tensorboard"])
    loop.add_argument("--id_baseline_epochs", type=int, default=0, help="also train the ID-classification baseline")
    loop.add_argument("--gbdt_baseline", action="store_true",
                      help="also train the boosted-tree ranker over the model's candidate features (gbdt_ranker)")
    loop.add_argument("--hub_model_id", default=None, help="ORG/NAME the exported model is meant for (model card)")
    loop.add_argument("--push_to_hub", action="store_true",
                      help="push the exported model to --hub_model_id (token: HF_TOKEN or `hf auth login`)")
    loop.add_argument("--hub_revision", default=None, help="branch to push to (default main)")
    loop.add_argument("--hub_private", action="store_true", help="create the Hub repo private")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id ORG/NAME")
    return args


def check_world_size(accelerator: Accelerator) -> None:
    """On CPU, wrong launcher flags silently give one process or unsynchronized copies: refuse both."""
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise RuntimeError(
            f"launcher started {expected} processes but Accelerate sees {accelerator.num_processes}; on CPU use "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N train.py ...`"
        )


def build_model(args: argparse.Namespace, statistics: dict):
    if args.init_model:
        model = nextlocllm_hf.NextLocLLMForCoordinateRegression.from_pretrained(args.init_model)
        check_compatible(model.config, statistics, args.init_model)
        return model
    return nextlocllm_hf.NextLocLLMForCoordinateRegression.from_backbone(
        args.backbone,
        num_backbone_layers=args.num_backbone_layers,
        history_length=statistics["history_length"],
        current_length=statistics["current_length"],
        poi_class_names=list(statistics["poi_classes"]),
        adaptation=args.adaptation,
        use_prompt=not args.no_prompt,
        use_llm_poi=not args.no_llm_poi,
        poi_text_encoding=args.poi_text_encoding,
        use_duration_head=args.duration_head,
        task_mode=args.task_mode,
        regression_target=args.regression_target,
        num_mixture_components=args.num_mixture_components,
        mixture_distance_loss_weight=args.mixture_distance_loss_weight,
        use_candidate_ranker=args.candidate_ranker,
        candidate_time_features=not args.no_candidate_time_features,
        candidate_loss_weight=args.candidate_loss_weight,
        max_candidates=args.max_candidates,
        candidate_neighbors=args.candidate_neighbors,
    )


def warm_start_candidate_ranker(model, train_split, validation_split, seed: int) -> dict:
    """Train the ranker's features-only part first (cheap: no backbone), on the training split with the epoch chosen
    on validation, and copy it into the model's scorer, whose context path starts at zero; end-to-end training then
    starts from the features-only ranker instead of from scratch."""
    config = model.config
    ranker = FeatureMLPRanker(config.task_mode, width=config.candidate_ranker_width,
                              feature_bins=config.candidate_feature_bins, neighbors=config.candidate_neighbors,
                              max_candidates=config.max_candidates, time_features=config.candidate_time_features,
                              seed=seed).fit(train_split, validation_split, model.retrievers)
    model.candidate_scorer.warm_start_from(ranker.scorer)
    return {"epochs": ranker.best_epoch, "validation_hit@1": ranker.validation_hit_at_1}


def parameter_groups(model, args: argparse.Namespace) -> list[dict]:
    """The trainable parameters; the candidate scorer's feature path and MLP (what the features-only warm start
    trained) in a group of their own learning rate, the context path (new, from zero) with everything else."""
    scorer = getattr(model, "candidate_scorer", None)
    warm = set()
    if scorer is not None:
        warm = {id(p) for module in (scorer.feature_projection, scorer.mlp) for p in module.parameters()}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in warm]}]
    if warm:
        groups.append({"params": [p for p in model.parameters() if p.requires_grad and id(p) in warm],
                       "lr": args.ranker_feature_path_learning_rate or args.learning_rate})
    return groups


def latest_checkpoint(output_dir: Path) -> Path:
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint-* folder in {output_dir}")
    return checkpoints[-1]


def main(argv: Sequence[str] | None = None) -> dict:
    return train(parse_args(argv)).results


@dataclass
class TrainingRun:
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by Accelerate (DDP-wrapped on several processes)
    results: dict


def train(args: argparse.Namespace) -> TrainingRun:
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(output_dir),
        # One seeded sampler shared by every process, re-seeded per epoch: resumable and identical across ranks.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    check_world_size(accelerator)
    set_seed(args.seed)

    # Data first: every inconsistency must surface before a single step.
    cities = load_cities(args.dataset)
    statistics = {name: city.statistics for name, city in cities.cities.items()}
    first = next(iter(statistics.values()))
    zero_shot = [load_city_splits(path) for path in args.zero_shot_dataset]
    model = build_model(args, first)
    for city in [*cities.cities.values(), *zero_shot]:
        check_compatible(model.config, city.statistics, city.path)
    for city in cities.cities.values():
        model.add_city(city.retriever())

    task_mode = model.config.task_mode
    train_samples = CitySamples(cities.splits["train"], statistics, task_mode=task_mode)
    validation_split = cities.splits["validation"]
    if args.max_eval_samples and len(validation_split) > args.max_eval_samples:
        validation_split = validation_split.shuffle(seed=args.seed).select(range(args.max_eval_samples))
    validation_samples = CitySamples(validation_split, statistics, task_mode=task_mode)
    if len(train_samples) == 0 or len(validation_samples) == 0:
        raise ValueError(f"{args.dataset}: empty train ({len(train_samples)}) or validation split")
    warm_start = None
    if model.config.use_candidate_ranker and not (args.init_model or args.resume_from_checkpoint):
        warm_start = warm_start_candidate_ranker(model, cities.splits["train"], validation_split, args.seed)
        accelerator.print(f"candidate ranker warm-started on the features alone: validation hit@1 "
                          f"{max(warm_start['validation_hit@1']):.4f} after {warm_start['epochs']} epochs")

    train_loader = DataLoader(
        train_samples,
        batch_size=args.per_device_batch_size,
        shuffle=True,
        collate_fn=collate_batch,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG (dropout) untouched by iterators
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameter_groups(model, args), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = None
    if args.lr_scheduler == "plateau":
        # Stepped on the selection metric at every evaluation (not on one mini-batch's loss).
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max" if higher_is_better(args.metric_for_best_model) else "min",
            factor=args.plateau_factor, patience=args.plateau_patience,
        )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    tracker = BestCheckpointTracker(metric=args.metric_for_best_model, patience=args.early_stopping_patience)
    accelerator.register_for_checkpointing(tracker)
    if scheduler is not None:
        accelerator.register_for_checkpointing(scheduler)

    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_steps = args.max_steps or args.epochs * steps_per_epoch
    eval_steps = args.eval_steps or steps_per_epoch
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    if args.report_to != "none":
        accelerator.init_trackers("nextlocllm", config={k: str(v) for k, v in vars(args).items()})

    start_epoch, batches_to_skip = 0, 0
    if args.resume_from_checkpoint:
        checkpoint = (
            latest_checkpoint(output_dir) if args.resume_from_checkpoint == "latest" else Path(args.resume_from_checkpoint)
        )
        accelerator.load_state(str(checkpoint))
        start_epoch, step_in_epoch = divmod(tracker.completed_steps, steps_per_epoch)
        batches_to_skip = step_in_epoch * args.gradient_accumulation_steps
        accelerator.print(f"resumed from {checkpoint} at step {tracker.completed_steps}")

    accelerator.print(
        f"training on {list(statistics)}: {len(train_samples)} samples, {steps_per_epoch} steps/epoch, {max_steps} "
        f"steps, {accelerator.num_processes} process(es), trainable parameters "
        f"{sum(p.numel() for p in trainable):,} of {sum(p.numel() for p in model.parameters()):,}"
    )
    best_dir = output_dir / "best"
    validation_history, training_history = [], []

    def validate(step: int) -> None:
        """Score the validation split, step the scheduler, keep the model if it is the best so far."""
        scores, _ = evaluate_model(model, validation_samples, args.per_device_eval_batch_size, accelerator, "validation")
        overall = scores[ALL_CITIES]
        validation_history.append({"step": step, **overall})
        accelerator.log({f"validation/{k}": v for k, v in overall.items()}, step=step)
        if scheduler is not None and step > 0:
            scheduler.step(overall[tracker.metric])
        if tracker.update(overall[tracker.metric], step):
            save_model(accelerator, model, best_dir)
        accelerator.print(
            f"step {step}: validation {tracker.metric}={overall[tracker.metric]:.4f} "
            f"mean error {overall['mean_error_m']:.0f} m (best {tracker.best_value:.4f} at step {tracker.best_step})"
        )

    if warm_start is not None:  # the warm-started model is a candidate too: training must beat it on validation
        validate(0)
    progress = tqdm(total=max_steps, initial=tracker.completed_steps, disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    epoch = start_epoch
    while tracker.completed_steps < max_steps and not tracker.should_stop:
        model.train()
        train_loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_loader, batches_to_skip) if batches_to_skip else train_loader
        batches_to_skip = 0
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**model_inputs(batch, train_samples.city_names)).loss
                # The reference a point head must beat: the distance from the last input point to the target.
                copy_last = torch.linalg.vector_norm(batch["labels"] - batch["current_coordinates"][:, -1], dim=-1)
                accelerator.backward(loss)
                if args.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            tracker.completed_steps += 1
            step = tracker.completed_steps
            progress.update(1)
            copy_last_loss = copy_last.mean().item()
            progress.set_postfix(loss=f"{loss.item():.4g}", copy_last=f"{copy_last_loss:.4g}",
                                 lr=f"{optimizer.param_groups[0]['lr']:.1e}")
            accelerator.log({"train/loss": loss.item(), "train/copy_last_loss": copy_last_loss,
                             "train/lr": optimizer.param_groups[0]["lr"]}, step=step)
            training_history.append({"step": step, "loss": loss.item(), "copy_last_loss": copy_last_loss})
            if step % eval_steps == 0 or step == max_steps:
                validate(step)
                model.train()
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                accelerator.save_state(str(output_dir / f"checkpoint-{step}"))
            if step >= max_steps or tracker.should_stop:
                break
        epoch += 1
    progress.close()
    training_seconds = time.perf_counter() - started
    check_ranks_synchronized(accelerator, trainable)
    results = {
        "best_step": tracker.best_step,
        "best_validation": {tracker.metric: tracker.best_value},
        "validation_history": validation_history,
        "training_history": training_history,
        "training_seconds": training_seconds,
        "task_mode": task_mode,
        "ranker_warm_start": warm_start,
    }
    finish(args, accelerator, model, cities, zero_shot, best_dir, results)
    accelerator.end_training()  # last: it also tears down the process group
    return TrainingRun(accelerator, model, results)


def finish(args, accelerator, model, cities, zero_shot, best_dir: Path, results: dict) -> None:
    """Load the best validation checkpoint, score the test split once (and the baselines), zero-shot cities, export."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.load_state_dict(load_file(str(best_dir / "model.safetensors")), strict=True)
    statistics = {name: city.statistics for name, city in cities.cities.items()}
    task_mode = unwrapped.config.task_mode
    test_samples = CitySamples(cities.splits["test"], statistics, task_mode=task_mode)
    test_scores, _ = evaluate_model(model, test_samples, args.per_device_eval_batch_size, accelerator, "test")
    results["test"] = single_city_view(test_scores)
    for city in zero_shot:
        unwrapped.add_city(city.retriever())
        samples = CitySamples(city.splits["test"], {city.name: city.statistics}, task_mode=task_mode)
        scores, _ = evaluate_model(model, samples, args.per_device_eval_batch_size, accelerator, f"zero-shot {city.name}")
        results.setdefault("zero_shot", {})[city.name] = scores[city.name]
    if accelerator.is_main_process:
        results["baselines"] = score_baselines(args, cities, zero_shot, task_mode)
        export(args, unwrapped, cities, results)
    accelerator.wait_for_everyone()


def single_city_view(scores: dict) -> dict:
    """Per-city scores; the "all" entry only when several cities share the split."""
    return {k: v for k, v in scores.items() if k != ALL_CITIES or len(scores) > 2}


def score_baselines(args, cities, zero_shot, task_mode: str) -> dict:
    """The rule baselines (and optionally the ID classifier and the boosted ranker) on the very samples the model was
    tested on."""
    baselines = {}
    gbdt = None
    if args.gbdt_baseline:
        retrievers = {name: city.retriever() for name, city in cities.cities.items()}
        gbdt = GBDTRanker(task_mode, seed=args.seed).fit(cities.splits["train"], cities.splits["validation"], retrievers)
    for name, city in cities.cities.items():
        retriever = city.retriever()
        rows = {
            f"{rule} / {name}": scores
            for rule, scores in evaluate_rule_baselines(city.splits["train"], city.splits["test"], retriever,
                                                        task_mode=task_mode).items()
        }
        if args.id_baseline_epochs:
            classifier, _ = train_id_classifier(
                city.splits["train"], city.splits["validation"], retriever.num_cells,
                epochs=args.id_baseline_epochs, seed=args.seed,
            )
            ranked = rank_with_id_classifier(classifier, city.splits["test"], MAX_RANK, num_cells=retriever.num_cells)
            rows[f"id_lstm / {name}"] = metrics_for_rankings({"id_lstm": ranked}, city.splits["test"], retriever)["id_lstm"]
        if gbdt is not None:
            ranked = gbdt.rank(city.splits["test"], retriever, MAX_RANK)
            rows[f"gbdt_ranker / {name}"] = metrics_for_rankings({"gbdt": ranked}, city.splits["test"], retriever)["gbdt"]
        baselines.update(rows)
    for city in zero_shot:
        # Zero-shot: no rule may learn from the new city's training split.
        rules = [rule for rule in RULE_BASELINES if rule != "markov_train_users"]
        scores = evaluate_rule_baselines(None, city.splits["test"], city.retriever(), names=rules, task_mode=task_mode)
        baselines.update({f"{rule} / {city.name} (zero-shot)": s for rule, s in scores.items()})
        if gbdt is not None:
            ranked = gbdt.rank(city.splits["test"], city.retriever(), MAX_RANK)
            baselines[f"gbdt_ranker / {city.name} (zero-shot)"] = metrics_for_rankings(
                {"gbdt": ranked}, city.splits["test"], city.retriever())["gbdt"]
    return baselines


def export(args, model, cities, results: dict) -> None:
    """The best model with every city's retriever, its card, and the results as JSON; then the table."""
    output_dir = Path(args.output_dir)
    export_dir = output_dir / "model"
    model.save_pretrained(export_dir)
    card = build_model_card(
        model, results, repo_id=args.hub_model_id or export_dir.name, train_cities=list(cities.cities),
        metric_for_best_model=args.metric_for_best_model,
    )
    card.save(export_dir / "README.md")
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    rows = {f"NextLocLLM / {city}": scores for city, scores in results["test"].items()}
    rows.update({f"NextLocLLM / {city} (zero-shot)": s for city, s in results.get("zero_shot", {}).items()})
    rows.update(results["baselines"])
    print(format_table(rows))
    print(f"best validation {args.metric_for_best_model} at step {results['best_step']}; model exported to {export_dir}")
    if args.push_to_hub:
        from nextlocllm_hf.hub import push_model

        # The card written above already names hub_model_id and the results; push_model validates and uploads it.
        info = push_model(export_dir, args.hub_model_id, revision=args.hub_revision,
                          private=True if args.hub_private else None)
        print(f"pushed {export_dir} to {args.hub_model_id}: {info.commit_url}")


def check_ranks_synchronized(accelerator: Accelerator, parameters: list[torch.nn.Parameter]) -> None:
    """Every process must hold the same trained parameters; diverged ranks mean gradients were never all-reduced."""
    if accelerator.num_processes == 1:
        return
    local = torch.stack([p.detach().double().sum() for p in parameters]).to(accelerator.device)
    gathered = accelerator.gather(local[None]).cpu()
    if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
        raise RuntimeError(f"trained parameters differ across the {accelerator.num_processes} processes")
    accelerator.print(f"trained parameters identical on all {accelerator.num_processes} processes")


def save_model(accelerator: Accelerator, model, folder: Path) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(folder)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
