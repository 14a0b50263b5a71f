"""Does a code change keep the study's numbers? Record every cached prediction with the code before the change, then
recompute them with the code after it and compare byte for byte.

    # with the code before the change: a worktree of the old commit, with this script and study.py copied in (a
    # commit older than issue 25 lacks --record), run on that tree (PYTHONPATH=<worktree>; the editable install maps
    # nextlocllm_hf.modeling to the main checkout, so link <worktree>/nextlocllm_hf/modeling -> ../modeling there)
    python experiments/same_predictions.py --data ../shared/data --before runs/same --record --max_steps 40
    # with the code after it:
    python experiments/same_predictions.py --data ../shared/data --before runs/same --scratch /tmp/regenerate

Compared: every built city file; the rules in both task modes, the geometric-median reference, both feature rankers in
both modes, the id classifier, and every trained model (all four head types, both modes) on both cities, ranked cells
and predicted point; and each model's state-dict keys (recorded by the old code, rebuilt by the new code from the saved
config, and loaded with no missing or unexpected key). The trained models are read from `--before`, never retrained;
the cities are rebuilt into `--scratch`. Exit status 1 when anything differs. A study folder recorded without
`--record` (a full study) is compared on the rows it has a cache of; the rest are counted as skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import MODES, Predictions, Study  # noqa: E402  (the experiments folder is not a package)

CITIES = ("nyc", "calgary")
TASK_MODES = ("next", "at_time")
FEATURE_RANKERS = ("gbdt_ranker", "feature_mlp_ranker")
MODEL_VARIANTS = (*MODES, "mixture", "mixture_ranker")  # with MODES' point_ranker: all four head types
SETTINGS_FILE = "same_predictions.json"  # the budget a recorded folder was trained with


def prediction_keys(study: Study) -> dict[str, callable]:
    """Every cached prediction of the study, by its cache key, with the function that computes it."""
    from nextlocllm_hf.baselines import TIME_AWARE_RULES

    computations: dict[str, callable] = {}
    for city in CITIES:
        for mode in TASK_MODES:
            for rule in rule_names(city):
                key = f"{rule}_{mode}" if rule in TIME_AWARE_RULES else rule
                computations[f"{key}_split0_{city}"] = (
                    lambda c=city, m=mode, r=rule: study.rule_predictions(c, task_mode=m)[r])
            for ranker in FEATURE_RANKERS:
                computations[f"{ranker}_{mode}_seed0_split0_{city}"] = (
                    lambda c=city, m=mode, r=ranker: study.feature_ranker_predictions(r, m, c))
        computations[f"geometric_median_split0_{city}"] = lambda c=city: study.geometric_median_predictions(c)
        for variant in MODEL_VARIANTS:
            computations[f"{variant.replace('/', '_')}_seed0_split0_{city}"] = (
                lambda v=variant, c=city: study.model_predictions(v, 0, c))
    computations["id_classifier_seed0_split0_nyc"] = lambda: study.id_classifier_predictions(0)
    return computations


def rule_names(city: str) -> list[str]:
    from nextlocllm_hf.baselines import RULE_BASELINES

    return [n for n in RULE_BASELINES if not (city == "calgary" and n == "markov_train_users")]


def state_dict_keys(model_dir: Path) -> tuple[list[str], dict]:
    """The model's state-dict keys as the current code builds it from the saved folder, and what loading reported."""
    import nextlocllm_hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(model_dir, output_loading_info=True)
    return sorted(model.state_dict()), {k: sorted(v) for k, v in info.items() if k != "error_msgs"}


def record(study: Study, folder: Path) -> None:
    """Fill `folder` with every prediction (the study's cache) and every model's state-dict keys."""
    for city in CITIES:
        study.city(city)
    keys = {}
    for key, compute in prediction_keys(study).items():
        compute()
        print(f"recorded {key}", flush=True)
    for variant in MODEL_VARIANTS:
        keys[variant] = state_dict_keys(study.run_dir(variant, 0) / "model")[0]
    (folder / "state_dict_keys.json").write_text(json.dumps(keys, indent=1))


def compare(study: Study, before: Path, scratch: Path) -> list[str]:
    differ: list[str] = []
    skipped = 0
    for city in CITIES:
        study.city(city)
        built = before / "data" / f"{city}_split0"
        for old in sorted(built.glob("*.parquet")):
            new = scratch / "data" / built.name / old.name
            if not (new.exists() and new.read_bytes() == old.read_bytes()):
                differ.append(f"data {built.name}/{old.name}")

    for key, compute in prediction_keys(study).items():
        cached = before / "predictions" / f"{key}.npz"
        variant = next((v for v in MODEL_VARIANTS if key.startswith(f"{v.replace('/', '_')}_seed")), None)
        if not cached.exists() or (variant and not (study.run_dir(variant, 0) / "model").is_dir()):
            skipped += 1  # a model is never retrained here
            continue
        new: Predictions = compute()
        with np.load(cached) as old:
            same = np.array_equal(old["ranked"], new.ranked) and np.array_equal(old["xy"], new.xy)
        print(f"{key}: {'same' if same else 'DIFFERENT'}", flush=True)
        if not same:
            differ.append(key)

    recorded = before / "state_dict_keys.json"
    old_keys = json.loads(recorded.read_text()) if recorded.exists() else {}
    for variant, keys in old_keys.items():
        new_keys, loading = state_dict_keys(study.run_dir(variant, 0) / "model")
        same = new_keys == keys and not any(loading.values())
        print(f"state-dict keys {variant}: {'same' if same else f'DIFFERENT {loading}'}", flush=True)
        if not same:
            differ.append(f"state-dict keys {variant}")
    print(f"{skipped} predictions without a cache or a model in {before}")
    return differ


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    parser.add_argument("--before", type=Path, required=True, help="a study folder written by the earlier code")
    parser.add_argument("--scratch", type=Path, help="an empty folder for the rebuilt cities (when comparing)")
    parser.add_argument("--record", action="store_true", help="write --before with the current code")
    parser.add_argument("--max_steps", type=int, default=40, help="training steps of each recorded model")
    args = parser.parse_args(argv)

    if args.record:
        args.before.mkdir(parents=True, exist_ok=True)
        budget = {"backbone": "smollm2-135m", "num_backbone_layers": 2, "per_device_batch_size": 32,
                  "learning_rate": 1e-3, "max_steps": args.max_steps, "eval_steps": args.max_steps,
                  "max_eval_samples": 500}
        settings = {"budget": budget, "id_classifier_epochs": 2}
        (args.before / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
        record(Study(args.data.resolve(), args.before, **settings), args.before)
        print(f"recorded in {args.before}")
        return

    if args.scratch is None:
        parser.error("--scratch: required when comparing (without --record)")
    if args.scratch.exists() and any(args.scratch.iterdir()):
        parser.error(f"--scratch {args.scratch}: not empty")
    args.scratch.mkdir(parents=True, exist_ok=True)
    (args.scratch / "runs").symlink_to((args.before / "runs").resolve())  # the trained models, read only
    stored = args.before / SETTINGS_FILE
    settings = json.loads(stored.read_text()) if stored.exists() else {}
    differ = compare(Study(args.data.resolve(), args.scratch, **settings), args.before, args.scratch)
    print(f"{len(differ)} different: {differ or 'everything the same'}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
