"""Train NextLocLLM on one or more cities with Accelerate, on one process or many.

    python train.py --dataset data/nyc --output_dir runs/nyc
    accelerate launch --multi_gpu --num_processes 4 train.py --dataset data/nyc data/tokyo --output_dir runs/two
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py ...   # two CPU processes (gloo)

What it trains: a recipe (`--recipe`, `modeling/recipes_nextlocllm.py`), by default the recommended `ranker`, or the
authors' model with `--recipe paper`; any option given on the command line wins over the recipe's value. The task
(`--task_mode next` or `at_time`) is always the user's choice.

What it guarantees, unlike the authors' script: the loss goes through the prepared (DDP) model so gradients are
synchronized; evaluation gathers every sample once; the best checkpoint is the one with the best *validation* score
(Hit@1 by default, higher is better); the test split is scored once, at the end, on that checkpoint; and a run
resumes mid-epoch from `--resume_from_checkpoint` to the same parameters as an uninterrupted run.

And that nothing is lost: a finished (or started) run in `--output_dir` is refused unless `--overwrite` or a resume is
asked for; every checkpoint, the best model and the export are written to a hidden sibling and renamed into place, so
an interruption (Ctrl-C, SIGKILL) leaves only complete ones and `--resume_from_checkpoint latest` takes the newest.
Under FSDP and DeepSpeed every rank takes part in saving (`accelerator.get_state_dict` gathers the shards).

And that it is safe and diagnosable: one run writes an `--output_dir` at a time (a lock, `nextlocllm_hf/locks.py`);
resuming reads no pickle beyond tensors and numbers (`nextlocllm_hf/checkpoints.py`); `kill -USR1` makes a stuck rank
print the stacks of its threads.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import signal
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import DataLoaderConfiguration, DistributedType, LoggerType, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import nextlocllm_hf
from nextlocllm_hf.baselines import FeatureMLPRanker, candidate_settings, score_baselines
from nextlocllm_hf.batching import collate_batch, model_inputs
from nextlocllm_hf.checkpoint_selection import BestCheckpointTracker, higher_is_better
from nextlocllm_hf.checkpoints import (
    check_checkpoint_files,
    checkpoints,
    load_best,
    load_checkpoint,
    save_checkpoint,
    save_model,
)
from nextlocllm_hf.cli import (
    entry_point,
    non_negative_float,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
)
from nextlocllm_hf.data import load_cities, load_city_splits
from nextlocllm_hf.evaluate import ALL_CITIES, check_compatible, evaluate_model, model_samples, single_city_view
from nextlocllm_hf.hub_access import check_repo_id, refuse_occupied_repo
from nextlocllm_hf.locks import exclusive_output
from nextlocllm_hf.metrics import DEFAULT_TABLE_COLUMNS, format_table
from nextlocllm_hf.model_card import build_model_card
from nextlocllm_hf.modeling.configuration_nextlocllm import (
    ADAPTATION_MODES,
    HEAD_TYPES,
    POI_TEXT_ENCODINGS,
    REGRESSION_TARGETS,
    TASK_MODES,
    NextLocLLMConfig,
)
from nextlocllm_hf.modeling.heads_nextlocllm import CandidateRankerType
from nextlocllm_hf.modeling.recipes_nextlocllm import DEFAULT_RECIPE, RECIPE_NAMES, RECIPES, get_recipe
from nextlocllm_hf.outputs import (
    existing_outputs,
    name_list,
    remove_folder,
    remove_partials,
    replacing_folder,
    write_text,
)

TRACKER_PROJECT = "nextlocllm"  # `--report_to` logs go to OUTPUT_DIR/nextlocllm
FINISHED_OUTPUTS = ("model", "results.json")  # a run that has these has finished
ADAPTER_OUTPUTS = ("adapter", "adapter_base")  # --export_adapter
RUN_OUTPUTS = ("checkpoint-*", "best", *FINISHED_OUTPUTS, *ADAPTER_OUTPUTS, TRACKER_PROJECT)  # everything a run writes in --output_dir


class FromRecipe:
    """The default of an option that the recipe sets (`--recipe`): replaced by the recipe's value unless given."""

    def __repr__(self) -> str:
        return "the recipe's"


FROM_RECIPE = FromRecipe()


class RecipeHelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in `--help`; an option that a recipe sets shows each recipe's value."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required:
            return action.help or ""
        if action.default is FROM_RECIPE:
            values = ", ".join(f"{name} {recipe.values()[action.dest]}" for name, recipe in RECIPES.items())
            return f"{action.help or ''} (recipe: {values})"
        return super()._get_help_string(action)


def recipe_list() -> str:
    width = max(map(len, RECIPES))
    lines = [f"  {name:<{width}}  {recipe.summary}" for name, recipe in RECIPES.items()]
    return "\n".join(["recipes (--recipe; an option given on the command line wins over its recipe value):", *lines])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"Train NextLocLLM with Accelerate.\n\n{recipe_list()}\nNo recipe sets the task mode: "
                    f"--task_mode (default next; at_time needs the query time at inference).",
        formatter_class=RecipeHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", nargs="+", required=True, help="city folders (or Hub ids) to train on")
    data.add_argument("--zero_shot_dataset", nargs="*", default=[], help="cities to evaluate zero-shot at the end")
    data.add_argument("--max_eval_samples", type=positive_int, default=None,
                      help="cap the validation samples per evaluation (None: every one)")

    # A recipe sets the options whose default is FROM_RECIPE; the others default to the config's own values.
    model = parser.add_argument_group("model")
    model.add_argument("--recipe", default=DEFAULT_RECIPE, choices=RECIPE_NAMES,
                       help="named settings of the model and its training (listed above)")
    model.add_argument("--backbone", default="smollm2-135m", help="Hub id, local folder, or smollm2-135m (embedded)")
    model.add_argument("--init_model", default=None, help="continue from a saved NextLocLLM folder instead")
    model.add_argument("--num_backbone_layers", type=positive_int, default=FROM_RECIPE,
                       help="leading backbone blocks kept")
    model.add_argument("--adaptation", default=NextLocLLMConfig.adaptation, choices=ADAPTATION_MODES,
                       help="which backbone parameters train")
    model.add_argument("--export_adapter", action="store_true",
                       help="with --adaptation lora: also export OUTPUT_DIR/adapter (a PEFT adapter, the model's own "
                            "layers in modules_to_save) and OUTPUT_DIR/adapter_base (the base it loads onto)")
    model.add_argument("--no_prompt", action="store_true", help="drop the natural-language prompt prefix")
    model.add_argument("--no_llm_poi", action="store_true", help="use a linear POI embedding instead")
    model.add_argument("--poi_text_encoding", default=NextLocLLMConfig.poi_text_encoding, choices=POI_TEXT_ENCODINGS,
                       help="POI descriptions through the token-embedding table (paper) or the backbone's blocks")
    model.add_argument("--duration_head", action="store_true", help="also predict the next stay duration")
    model.add_argument("--task_mode", default=NextLocLLMConfig.task_mode, choices=TASK_MODES,
                       help="next: the records alone; at_time: also the target's day, hour and gap (the query)")
    model.add_argument("--regression_target", default=FROM_RECIPE, choices=REGRESSION_TARGETS,
                       help="point head: the paper's absolute position, or the offset from the last input point")
    model.add_argument("--head_type", default=FROM_RECIPE, choices=HEAD_TYPES,
                       help="point (paper) or mixture (Gaussian modes, cells ranked by density); a _ranker type also "
                            "re-ranks the input-record cells and the cells near the last point (listwise loss)")
    model.add_argument("--num_mixture_components", type=positive_int,
                       default=NextLocLLMConfig.num_mixture_components, help="the mixture heads' number of modes")
    model.add_argument("--mixture_distance_loss_weight", type=non_negative_float,
                       default=NextLocLLMConfig.mixture_distance_loss_weight,
                       help="add the distance of the closest mode (normalized units) to the mixture likelihood")
    model.add_argument("--candidate_loss_weight", type=non_negative_float, default=FROM_RECIPE,
                       help="weight of the listwise loss")
    model.add_argument("--no_candidate_time_features", action="store_true",
                       help="drop the time-conditioned candidate features (an ablation)")
    history = model.add_mutually_exclusive_group()
    history.add_argument("--candidate_history", dest="candidate_history", action="store_const", const=True,
                         default=FROM_RECIPE, help="candidate_history on: the ranker also reads the user's earlier "
                                                   "records (whole-history statistics, earlier cells as candidates)")
    history.add_argument("--no_candidate_history", dest="candidate_history", action="store_const", const=False,
                         default=FROM_RECIPE, help="candidate_history off: the ranker reads the sample's records "
                                                   "only (an ablation)")
    model.add_argument("--max_past_records", type=positive_int, default=NextLocLLMConfig.max_past_records,
                       help="with the history: the most recent earlier records read per sample")
    model.add_argument("--max_candidates", type=positive_int, default=FROM_RECIPE,
                       help="candidates per sample for the ranker")
    model.add_argument("--candidate_neighbors", type=positive_int, default=NextLocLLMConfig.candidate_neighbors,
                       help="cells nearest the last input point among the ranker's candidates")

    train = parser.add_argument_group("optimization")
    train.add_argument("--output_dir", required=True,
                       help="where checkpoints, best/, model/ and results.json go; a folder holding an earlier run "
                            "is refused unless --overwrite or --resume_from_checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="replace what is already there: an earlier run in --output_dir (deleted once the data and "
                            "model are checked, at step 0; not when resuming) and the model at --hub_model_id")
    train.add_argument("--epochs", type=positive_int, default=FROM_RECIPE,
                       help="end-to-end epochs (the warm start has its own: --warm_start_epochs)")
    train.add_argument("--max_steps", type=positive_int, default=None,
                       help="bounds every training phase: the end-to-end optimizer steps (overrides --epochs) and the "
                            "features-only warm start's (None: the epochs decide)")
    train.add_argument("--per_device_batch_size", type=positive_int, default=FROM_RECIPE,
                       help="training samples per batch on each process")
    train.add_argument("--per_device_eval_batch_size", type=positive_int, default=64,
                       help="evaluation samples per batch on each process")
    train.add_argument("--dataloader_num_workers", type=non_negative_int, default=0,
                       help="processes gathering batches from the records (0: the training process)")
    train.add_argument("--gradient_accumulation_steps", type=positive_int, default=1,
                       help="batches per optimizer step")
    train.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"],
                       help="autocast precision (None: Accelerate's configuration)")
    train.add_argument("--learning_rate", type=positive_float, default=FROM_RECIPE, help="Adam's learning rate")
    train.add_argument("--ranker_feature_path_learning_rate", type=positive_float, default=FROM_RECIPE,
                       help="learning rate of the candidate scorer's feature path and MLP, which the features-only "
                            "warm start has already trained (None: --learning_rate)")
    train.add_argument("--warm_start_epochs", type=positive_int, default=FROM_RECIPE,
                       help="with a ranker head: the most epochs of the features-only warm start (no backbone) before "
                            "end-to-end training")
    train.add_argument("--warm_start_patience", type=positive_int, default=FROM_RECIPE,
                       help="the warm start stops after this many epochs without a better validation Hit@1")
    train.add_argument("--weight_decay", type=non_negative_float, default=0.01, help="paper: 0.01 (Adam, coupled)")
    train.add_argument("--lr_scheduler", default="plateau", choices=["plateau", "constant"],
                       help="plateau (paper): scale the learning rate by --plateau_factor when the validation "
                            "metric stalls")
    train.add_argument("--plateau_factor", type=open_fraction, default=0.5, help="paper: halve the learning rate")
    train.add_argument("--plateau_patience", type=non_negative_int, default=2, help="evaluations without improvement")
    train.add_argument("--max_grad_norm", type=positive_float, default=None,
                       help="clip gradients (paper and None: no clipping)")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of the initial weights, the batch order, the warm start and the baselines")

    loop = parser.add_argument_group("evaluation and checkpoints")
    loop.add_argument("--eval_steps", type=positive_int, default=None,
                      help="evaluate every N steps (None: each epoch)")
    loop.add_argument("--metric_for_best_model", default="hit@1",
                      choices=[name for name in DEFAULT_TABLE_COLUMNS if name != "count"],
                      help="the validation metric that chooses the best checkpoint (and steps the plateau scheduler)")
    loop.add_argument("--early_stopping_patience", type=non_negative_int, default=0, help="evaluations; 0 disables")
    loop.add_argument("--checkpointing_steps", type=positive_int, default=None,
                      help="save resumable state every N steps (OUTPUT_DIR/checkpoint-N, written whole or not at all)")
    loop.add_argument("--checkpoints_total_limit", type=positive_int, default=None,
                      help="keep only the newest N checkpoints (None: all)")
    loop.add_argument("--resume_from_checkpoint", default=None,
                      help="a checkpoint-N folder, or 'latest': the newest complete checkpoint in --output_dir (step 0 "
                           "when there is none yet, so a job can always be relaunched with it)")
    loop.add_argument("--report_to", type=tracker_names, default="none",
                      help=f"Accelerate trackers to log to, comma-separated: {', '.join(LoggerType.list())} (all: the "
                           f"installed ones), or none; logs go to OUTPUT_DIR/{TRACKER_PROJECT}")
    loop.add_argument("--id_baseline_epochs", type=non_negative_int, default=0,
                      help="also train the ID-classification baseline")
    loop.add_argument("--gbdt_baseline", action="store_true",
                      help="also train the boosted-tree ranker over the model's candidate features (gbdt_ranker)")
    loop.add_argument("--hub_model_id", default=None, help="ORG/NAME the exported model is meant for (model card)")
    loop.add_argument("--push_to_hub", action="store_true",
                      help="push the exported model to --hub_model_id (token: HF_TOKEN or `hf auth login`)")
    loop.add_argument("--hub_revision", default=None, help="branch to push to (None: main)")
    loop.add_argument("--hub_private", action="store_true", help="create the Hub repo private")
    args = parser.parse_args(argv)
    apply_recipe(args)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id ORG/NAME")
    if args.hub_model_id:
        try:
            check_repo_id(args.hub_model_id)
        except ValueError as error:
            parser.error(f"--hub_model_id: {error}")
    if args.export_adapter and args.adaptation != "lora":
        parser.error(f"--export_adapter needs --adaptation lora (got --adaptation {args.adaptation})")
    if args.checkpoints_total_limit and not args.checkpointing_steps:
        parser.error("--checkpoints_total_limit needs --checkpointing_steps (no checkpoint is saved without it)")
    return args


def apply_recipe(args: argparse.Namespace) -> None:
    """Every option the command line left at FROM_RECIPE takes `--recipe`'s value; an option given explicitly keeps
    its own."""
    for name, value in get_recipe(args.recipe).values().items():
        if getattr(args, name) is FROM_RECIPE:
            setattr(args, name, value)


def tracker_names(text: str) -> list[str]:
    """`--report_to`: Accelerate's tracker names (or `all`, or `none`), each one installed, checked before any work."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["none"]:
        return []
    unknown = [name for name in names if name not in LoggerType.list()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected none or trackers among {', '.join(LoggerType.list())}")
    installed = [str(tracker) for tracker in get_available_trackers()]
    if names == ["all"] and not installed:
        raise argparse.ArgumentTypeError("'all': no tracker is installed (pip install 'nextlocllm-hf[tracking]' "
                                         "adds tensorboard)")
    missing = [name for name in names if name != "all" and name not in installed]
    if missing:
        hint = " (pip install 'nextlocllm-hf[tracking]')" if missing == ["tensorboard"] else ""
        raise argparse.ArgumentTypeError(f"{', '.join(missing)}: not installed here{hint}; installed trackers: "
                                         f"{', '.join(installed) or 'none'}")
    return names


def tracker_config(args: argparse.Namespace) -> dict:
    """The run's options as hyper-parameters every tracker takes: numbers, booleans and strings as they are, the
    rest (lists, None) as text."""
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in vars(args).items()}


def check_launch(accelerator: Accelerator, args: argparse.Namespace) -> None:
    """Refuse launches that would silently train something else than asked for."""
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:  # on CPU, wrong launcher flags give one process or unsynced copies
        raise RuntimeError(
            f"launcher started {expected} processes but Accelerate sees {accelerator.num_processes}; on CPU use "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N train.py ...`"
        )
    running = accelerator.distributed_type
    for plugin, kind in (("FSDP", DistributedType.FSDP), ("DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(f"ACCELERATE_USE_{plugin}", "false").lower() == "true" and running != kind:
            raise ValueError(f"the launcher asked for {kind.value}, but Accelerate runs {running.value} (it uses "
                             f"{kind.value} only on GPUs and other accelerators, never on CPU)")
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        if not accelerator.state.fsdp_plugin.use_orig_params:
            raise ValueError("FSDP needs fsdp_use_orig_params: true (configs/accelerate/fsdp.yaml): most backbone "
                             "weights are frozen, and without it FSDP flattens them with the trainable ones")
    if args.checkpointing_steps or args.resume_from_checkpoint:
        # Their resumable state holds Python objects that only a full unpickling reads back (`checkpoints.py`).
        unsafe = {DistributedType.DEEPSPEED: "DeepSpeed's checkpoints (its ZeRO optimizer state)"}
        if running == DistributedType.FSDP and "FULL_STATE_DICT" not in str(accelerator.state.fsdp_plugin.state_dict_type):
            unsafe[running] = "FSDP's sharded checkpoints (their .metadata)"
        if running in unsafe:
            raise ValueError(f"--checkpointing_steps / --resume_from_checkpoint: {unsafe[running]} hold pickled "
                             f"objects, and resuming never unpickles them; resumable runs need DDP, or FSDP with "
                             f"fsdp_state_dict_type: FULL_STATE_DICT (configs/accelerate/fsdp.yaml)")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed clips inside its engine, from its config, and ignores clip_grad_norm_: one setting for both.
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        wanted = args.max_grad_norm or 0.0  # 0: DeepSpeed does not clip
        if config.get("gradient_clipping", "auto") == "auto":
            config["gradient_clipping"] = wanted
        elif float(config["gradient_clipping"]) != wanted:
            raise ValueError(f"the DeepSpeed config clips gradients at {config['gradient_clipping']} but "
                             f"--max_grad_norm is {args.max_grad_norm}: set one of them so that they agree")


def build_model(args: argparse.Namespace, metadata: dict):
    if args.init_model:
        model = nextlocllm_hf.NextLocLLMForCoordinateRegression.from_pretrained(args.init_model)
        check_compatible(model.config, metadata, args.init_model)
        return model
    # Every value is resolved already (the recipe's where no option was given); the config records the recipe.
    return nextlocllm_hf.NextLocLLMForCoordinateRegression.from_backbone(
        args.backbone,
        recipe=args.recipe,
        num_backbone_layers=args.num_backbone_layers,
        history_length=metadata["history_length"],
        current_length=metadata["current_length"],
        poi_class_names=list(metadata["poi_classes"]),
        adaptation=args.adaptation,
        use_prompt=not args.no_prompt,
        use_llm_poi=not args.no_llm_poi,
        poi_text_encoding=args.poi_text_encoding,
        use_duration_head=args.duration_head,
        task_mode=args.task_mode,
        regression_target=args.regression_target,
        head_type=args.head_type,
        num_mixture_components=args.num_mixture_components,
        mixture_distance_loss_weight=args.mixture_distance_loss_weight,
        candidate_time_features=not args.no_candidate_time_features,
        candidate_loss_weight=args.candidate_loss_weight,
        candidate_history=args.candidate_history,
        max_past_records=args.max_past_records,
        max_candidates=args.max_candidates,
        candidate_neighbors=args.candidate_neighbors,
    )


def warm_start_candidate_ranker(model, train_split, validation_split, args: argparse.Namespace,
                                progress: bool = True) -> dict:
    """Train the ranker's features-only part first (cheap: no backbone), on the training split with the epoch chosen
    on validation, and copy it into the model's scorer, whose context path starts at zero; end-to-end training then
    starts from the features-only ranker instead of from scratch. Bounded like the run: at most
    `--warm_start_epochs`, `--warm_start_patience` epochs without a better validation Hit@1, and `--max_steps` steps.
    Returns the best epoch (`epochs`), how many ran, what ended it and the validation Hit@1 of each."""
    config = model.config
    ranker = FeatureMLPRanker(config.task_mode, width=config.candidate_ranker_width,
                              feature_bins=config.candidate_feature_bins, epochs=args.warm_start_epochs,
                              patience=args.warm_start_patience, max_steps=args.max_steps, seed=args.seed,
                              progress=progress, **candidate_settings(config))
    ranker.fit(train_split, validation_split, model.retrievers)
    getattr(model, model.head_type.scorer_name).warm_start_from(ranker.scorer)
    return {"epochs": ranker.best_epoch, "epochs_run": ranker.epochs_run, "steps": ranker.steps_run,
            "stopped": ranker.stopped, "validation_hit@1": ranker.validation_hit_at_1}


# The parts of the training loss (`NextLocLLMOutput`), shown apart: metres and a weighted listwise loss differ by
# orders of magnitude, so their sum alone says nothing about either.
LOSS_PARTS = {"position_loss": "position", "duration_loss": "duration", "ranking_loss": "listwise"}


def loss_parts(outputs) -> dict[str, float]:
    """The loss parts a batch's output has (the position head's; the weighted duration and listwise losses where the
    model has them), as numbers under their short names (the progress bar's; logged with a `_loss` suffix)."""
    return {short: outputs[field].item() for field, short in LOSS_PARTS.items() if outputs.get(field) is not None}


def parameter_groups(model, args: argparse.Namespace) -> list[dict]:
    """The trainable parameters; the candidate scorer's feature path and MLP (what the features-only warm start
    trained) in a group of their own learning rate, the context path (new, from zero) with everything else.
    `model` is the bare module (under FSDP with `use_orig_params` its parameters are the wrapped model's)."""
    scorer = getattr(model, CandidateRankerType.scorer_name, None)
    warm = set()
    if scorer is not None:
        warm = {id(p) for module in (scorer.feature_projection, scorer.mlp) for p in module.parameters()}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in warm]}]
    if warm:
        groups.append({"params": [p for p in model.parameters() if p.requires_grad and id(p) in warm],
                       "lr": args.ranker_feature_path_learning_rate or args.learning_rate})
    return groups


def prepare_model_and_optimizer(accelerator: Accelerator, model, args: argparse.Namespace):
    """FSDP (1) shards the model in `prepare`, and the optimizer must be built over what it leaves (Accelerate's FSDP
    guide); DeepSpeed and FSDP2 take both in one `prepare` call."""

    def optimizer_for(module):
        return torch.optim.Adam(parameter_groups(module, args), lr=args.learning_rate, weight_decay=args.weight_decay)

    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        model = accelerator.prepare(model)
        return model, accelerator.prepare(optimizer_for(accelerator.unwrap_model(model)))
    return accelerator.prepare(model, optimizer_for(model))


def resume_point(args: argparse.Namespace) -> Path | None:
    """The checkpoint to resume from (None: step 0), decided before any work; refuses an `--output_dir` whose earlier
    run would be replaced without `--overwrite`."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"--output_dir {output_dir} is a file, not a folder")
    if args.resume_from_checkpoint:
        checkpoint = Path(args.resume_from_checkpoint)
        if args.resume_from_checkpoint == "latest":
            found = checkpoints(output_dir)
            finished = existing_outputs(output_dir, FINISHED_OUTPUTS)
            if not found and finished and not args.overwrite:
                raise FileExistsError(f"--resume_from_checkpoint latest: {output_dir} holds a finished run "
                                      f"({name_list(finished)}) but no checkpoint to resume from; pass --overwrite "
                                      f"to train it again from step 0")
            if not found:
                return None
            checkpoint = found[-1]
        elif not checkpoint.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {checkpoint}: no such checkpoint folder")
        check_checkpoint_files(checkpoint, int(os.environ.get("RANK", "0")))  # before any work, and never unpickled
        return checkpoint
    taken = existing_outputs(output_dir, RUN_OUTPUTS)
    if taken and not args.overwrite:
        if set(taken) & set(FINISHED_OUTPUTS):
            raise FileExistsError(f"--output_dir {output_dir} holds a finished run ({name_list(taken)}): pass "
                                  f"--overwrite to replace it, or choose another --output_dir")
        raise FileExistsError(f"--output_dir {output_dir} holds an unfinished run ({name_list(taken)}): resume it "
                              f"with --resume_from_checkpoint latest, or pass --overwrite to start afresh")
    return None


def resume_hint(output_dir: Path) -> str:
    found = checkpoints(output_dir) if output_dir.is_dir() else []
    if not found:
        return (f"no checkpoint in {output_dir} yet (--checkpointing_steps N saves them); the same command with "
                f"--resume_from_checkpoint latest starts again from step 0")
    return (f"every checkpoint in {output_dir} is complete (nothing half-written is kept); resume with the same "
            f"command plus --resume_from_checkpoint latest (from {found[-1].name})")


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        # One writer per --output_dir, from before its emptiness check to the last rename (rank 0 holds the lock).
        with exclusive_output(args.output_dir, enabled=int(os.environ.get("RANK", "0")) == 0):
            return train(args).results
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            raise KeyboardInterrupt(resume_hint(Path(args.output_dir))) from None
        raise


@dataclass
class TrainingRun:
    accelerator: Accelerator
    model: torch.nn.Module  # the trained model (unwrapped: its DDP wrapper is gone with the process group)
    results: dict


def train(args: argparse.Namespace) -> TrainingRun:
    output_dir = Path(args.output_dir)
    resume_from = resume_point(args)  # first: refuse to replace a result before any work
    if args.push_to_hub:
        refuse_occupied_repo(args.hub_model_id, repo_type="model", revision=args.hub_revision,
                             overwrite=args.overwrite, what="a model")
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to or None,
        project_dir=str(output_dir),
        # One seeded sampler shared by every process, re-seeded per epoch: resumable and identical across ranks.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    check_launch(accelerator, args)
    set_seed(args.seed)

    # Data first: every inconsistency must surface before a single step.
    cities = load_cities(args.dataset)
    zero_shot = [load_city_splits(path) for path in args.zero_shot_dataset]
    model = build_model(args, next(iter(cities.cities.values())).metadata)
    for city in [*cities.cities.values(), *zero_shot]:
        check_compatible(model.config, city.metadata, city.path)
    for city in cities.cities.values():
        model.add_city(city.retriever)

    train_samples = model_samples(model, cities.splits["train"], cities.retrievers)
    validation_split = cities.splits["validation"]
    if args.max_eval_samples and len(validation_split) > args.max_eval_samples:
        validation_split = validation_split.shuffle(seed=args.seed).select(range(args.max_eval_samples))
    validation_samples = model_samples(model, validation_split, cities.retrievers)
    if len(train_samples) == 0 or len(validation_samples) == 0:
        raise ValueError(f"{args.dataset}: empty train ({len(train_samples)}) or validation split")
    warm_start = None
    if model.head_type.ranks_candidates and not (args.init_model or resume_from):
        accelerator.print(f"warm-starting the candidate ranker on the features alone (at most "
                          f"{args.warm_start_epochs} epochs, patience {args.warm_start_patience}"
                          f"{f', {args.max_steps} steps' if args.max_steps else ''})")
        warm_start = warm_start_candidate_ranker(model, cities.splits["train"], validation_split, args,
                                                 progress=accelerator.is_local_main_process)
        ended = {"epochs": "every epoch ran",
                 "patience": f"stopped early: {args.warm_start_patience} epochs without a better one",
                 "max_steps": f"stopped at --max_steps {args.max_steps}"}[warm_start["stopped"]]
        accelerator.print(f"candidate ranker warm-started: validation hit@1 {max(warm_start['validation_hit@1']):.4f} "
                          f"at epoch {warm_start['epochs']} of {warm_start['epochs_run']} run ({ended})")

    train_loader = DataLoader(
        train_samples,
        batch_size=args.per_device_batch_size,
        shuffle=True,
        collate_fn=collate_batch,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG (dropout) untouched by iterators
        num_workers=args.dataloader_num_workers,
    )
    parameter_counts = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                        sum(p.numel() for p in model.parameters()))  # before FSDP shards them
    model, optimizer = prepare_model_and_optimizer(accelerator, model, args)
    train_loader = accelerator.prepare(train_loader)
    scheduler = None
    if args.lr_scheduler == "plateau":
        # Stepped on the selection metric at every evaluation (not on one mini-batch's loss).
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer.optimizer, mode="max" if higher_is_better(args.metric_for_best_model) else "min",
            factor=args.plateau_factor, patience=args.plateau_patience,
        )
    tracker = BestCheckpointTracker(metric=args.metric_for_best_model, patience=args.early_stopping_patience)

    def trainer_state() -> dict:  # what a checkpoint keeps beside Accelerate's state, as JSON (never pickled)
        return {"tracker": tracker.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None}

    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps is not None else args.epochs * steps_per_epoch
    eval_steps = args.eval_steps or steps_per_epoch
    if accelerator.is_main_process:  # everything is checked: from here on the output folder changes
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_partials(output_dir)  # what an interrupted write left
        if resume_from is None:  # step 0: nothing of an earlier run may mix with this one (refused unless allowed)
            for name in existing_outputs(output_dir, RUN_OUTPUTS):
                if (output_dir / name).is_dir():
                    remove_folder(output_dir / name)
                else:
                    (output_dir / name).unlink()
    accelerator.wait_for_everyone()
    if args.report_to:
        accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(args))

    start_epoch, batches_to_skip = 0, 0
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from, trainer_state())
        if state["tracker"]["metric"] != tracker.metric:
            raise ValueError(f"--resume_from_checkpoint {resume_from}: its best checkpoint was chosen on "
                             f"{state['tracker']['metric']}, this run chooses on {tracker.metric} "
                             f"(--metric_for_best_model)")
        tracker.load_state_dict(state["tracker"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, step_in_epoch = divmod(tracker.completed_steps, steps_per_epoch)
        batches_to_skip = step_in_epoch * args.gradient_accumulation_steps
        accelerator.print(f"resumed from {resume_from} at step {tracker.completed_steps}")
    elif args.resume_from_checkpoint == "latest":
        accelerator.print(f"no complete checkpoint in {output_dir} yet: starting at step 0")

    accelerator.print(
        f"training on {list(cities.cities)}: {len(train_samples)} samples, {steps_per_epoch} steps/epoch, {max_steps} "
        f"steps, {accelerator.num_processes} process(es), trainable parameters "
        f"{parameter_counts[0]:,} of {parameter_counts[1]:,}"
    )
    best_dir = output_dir / "best"

    def validate(step: int) -> None:
        """Score the validation split, step the scheduler, keep the model if it is the best so far."""
        scores, _ = evaluate_model(model, validation_samples, args.per_device_eval_batch_size, accelerator, "validation",
                                   num_workers=args.dataloader_num_workers)
        overall = scores[ALL_CITIES]
        tracker.validation_history.append({"step": step, **overall})
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
                outputs = model(**model_inputs(batch, train_samples.city_names))
                loss = outputs.loss
                # The reference a point head must beat: the distance from the last input point to the target.
                copy_last = torch.linalg.vector_norm(batch["labels"] - batch["current_coordinates"][:, -1], dim=-1)
                accelerator.backward(loss)
                if args.max_grad_norm and accelerator.sync_gradients:
                    # All the prepared model's parameters (frozen ones have no gradient): what FSDP's clipping needs.
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            tracker.completed_steps += 1
            step = tracker.completed_steps
            progress.update(1)
            copy_last_loss = copy_last.mean().item()
            parts = loss_parts(outputs)
            progress.set_postfix({"loss": f"{loss.item():.4g}", **{name: f"{value:.4g}" for name, value in parts.items()},
                                  "copy_last": f"{copy_last_loss:.4g}", "lr": f"{optimizer.param_groups[0]['lr']:.1e}"})
            losses = {"loss": loss.item(), **{f"{name}_loss": value for name, value in parts.items()},
                      "copy_last_loss": copy_last_loss}
            accelerator.log({**{f"train/{name}": value for name, value in losses.items()},
                             "train/lr": optimizer.param_groups[0]["lr"]}, step=step)
            tracker.training_history.append({"step": step, **losses})
            if step % eval_steps == 0 or step == max_steps:
                validate(step)
                model.train()
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir / f"checkpoint-{step}", trainer_state(),
                                args.checkpoints_total_limit)
            if step >= max_steps or tracker.should_stop:
                break
        epoch += 1
    progress.close()
    training_seconds = time.perf_counter() - started
    check_ranks_synchronized(accelerator, model)
    results = {
        "best_step": tracker.best_step,
        "best_validation": {tracker.metric: tracker.best_value},
        "validation_history": tracker.validation_history,
        "training_history": tracker.training_history,
        "training_seconds": training_seconds,
        "task_mode": train_samples.task_mode,
        "ranker_warm_start": warm_start,
    }
    finish(args, accelerator, model, cities, zero_shot, best_dir, results)
    # The DDP wrapper goes before the process group: its reducer owns the group, and freed after `end_training` it
    # would run the group's destructor, which joins gloo's worker threads while holding the GIL that a worker may need
    # to free its last work. One rank then hangs at exit (futex wait) and the launcher waits for it forever.
    wrapper = weakref.ref(model) if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None
    model = accelerator.unwrap_model(model)
    accelerator.free_memory()  # Accelerate's own references to the wrapper, then the garbage collector
    if wrapper is not None and wrapper() is not None:
        raise RuntimeError("the prepared (DDP) model outlived training: ending the process group now could deadlock")
    accelerator.end_training()  # last: it also tears down the process group
    return TrainingRun(accelerator, model, results)


def finish(args, accelerator, model, cities, zero_shot, best_dir: Path, results: dict) -> None:
    """Load the best validation checkpoint, score the test split once (and the baselines), zero-shot cities, export."""
    best_weights = load_best(accelerator, model, best_dir)
    unwrapped = accelerator.unwrap_model(model)
    test_samples = model_samples(unwrapped, cities.splits["test"], cities.retrievers)
    test_scores, _ = evaluate_model(model, test_samples, args.per_device_eval_batch_size, accelerator, "test",
                                   num_workers=args.dataloader_num_workers)
    results["test"] = single_city_view(test_scores)
    for city in zero_shot:
        unwrapped.add_city(city.retriever)
        samples = model_samples(unwrapped, city.splits["test"], {city.name: city.retriever})
        scores, _ = evaluate_model(model, samples, args.per_device_eval_batch_size, accelerator, f"zero-shot {city.name}",
                                   num_workers=args.dataloader_num_workers)
        results.setdefault("zero_shot", {})[city.name] = scores[city.name]
    if accelerator.is_main_process:
        results["baselines"] = score_baselines(cities, zero_shot, unwrapped.config, seed=args.seed,
                                               gbdt=args.gbdt_baseline, id_classifier_epochs=args.id_baseline_epochs,
                                               progress=accelerator.is_local_main_process)
        export(args, unwrapped, best_weights, cities, results)
    accelerator.wait_for_everyone()


def export(args, model, weights: dict, cities, results: dict) -> None:
    """The best model (`weights`: under FSDP the module holds only this rank's shard) with every city's retriever and
    its card, then the results as JSON, each renamed into place once complete; then the table."""
    output_dir = Path(args.output_dir)
    export_dir = output_dir / "model"
    with replacing_folder(export_dir) as partial:
        model.save_pretrained(partial, state_dict=weights)  # with the next-location pipeline
        card = build_model_card(
            model, results, repo_id=args.hub_model_id or export_dir.name, train_cities=list(cities.cities),
            metric_for_best_model=args.metric_for_best_model,
        )
        card.save(partial / "README.md")
    if args.export_adapter:
        export_adapter(export_dir, output_dir)
    write_text(output_dir / "results.json", json.dumps(results, indent=2))
    rows = {f"NextLocLLM / {city}": scores for city, scores in results["test"].items()}
    rows.update({f"NextLocLLM / {city} (zero-shot)": s for city, s in results.get("zero_shot", {}).items()})
    rows.update(results["baselines"])
    print(format_table(rows))
    print(f"best validation {args.metric_for_best_model} at step {results['best_step']}; model exported to {export_dir}")
    if args.push_to_hub:
        from nextlocllm_hf.hub import push_model

        # The card written above already names hub_model_id and the results; push_model validates and uploads it.
        # The target was checked before training (refused when occupied without --overwrite).
        info = push_model(export_dir, args.hub_model_id, revision=args.hub_revision,
                          private=True if args.hub_private else None, overwrite=True)
        print(f"pushed {export_dir} to {args.hub_model_id}: {info.commit_url}")


def export_adapter(export_dir: Path, output_dir: Path) -> None:
    """The exported model (the best weights) split into a PEFT adapter and its base, each renamed into place."""
    from nextlocllm_hf.adapters import export_lora_adapter

    model = nextlocllm_hf.NextLocLLMForCoordinateRegression.from_pretrained(export_dir)
    adapter_dir, base_dir = (output_dir / name for name in ADAPTER_OUTPUTS)
    with replacing_folder(base_dir) as base_partial, replacing_folder(adapter_dir) as adapter_partial:
        sizes = export_lora_adapter(model, adapter_partial, base_partial,
                                    base_model_name_or_path=str(base_dir.resolve()))
    print(f"adapter exported to {adapter_dir} ({sizes['adapter'] / 1e6:.1f} MB of weights), its base to {base_dir} "
          f"({sizes['base'] / 1e6:.1f} MB)")


def check_ranks_synchronized(accelerator: Accelerator, model) -> None:
    """Every process must hold the same trained parameters; diverged ranks mean gradients were never all-reduced.
    (FSDP holds a different shard on each rank by design: nothing to compare.)"""
    if accelerator.num_processes == 1 or accelerator.distributed_type == DistributedType.FSDP:
        return
    parameters = [p for p in model.parameters() if p.requires_grad]
    local = torch.stack([p.detach().double().sum() for p in parameters]).to(accelerator.device)
    gathered = accelerator.gather(local[None]).cpu()
    if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
        raise RuntimeError(f"trained parameters differ across the {accelerator.num_processes} processes")
    accelerator.print(f"trained parameters identical on all {accelerator.num_processes} processes")


if __name__ == "__main__":
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: a stuck rank prints its stacks
    sys.exit(entry_point(main)())
