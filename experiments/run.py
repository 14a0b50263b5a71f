"""One command per table of docs/results.md; each writes experiments/results/<table>.json.

    python experiments/run.py supervised  --data ../shared/data     # NYC test: NextLocLLM (3 seeds) vs every baseline
    python experiments/run.py zero_shot   --data ../shared/data     # trained on NYC, scored on all of Calgary
    python experiments/run.py ablations   --data ../shared/data     # prompt, LLM-POI, POI text, LoRA, ID, KD-tree
    python experiments/run.py heads       --data ../shared/data     # mixture head and candidate ranker (beyond the paper)
    python experiments/run.py split_seeds --data ../shared/data     # does the ranking of methods hold on another split?
    python experiments/run.py ranking     --data ../shared/data     # both task modes: model heads vs gbdt and rules
    python experiments/report.py                                    # plots + tables into docs/

Trained models, predictions and built cities are cached in --work_dir (default runs/study), so tables that share
runs train them once. The data stays where it is: nothing from --data is copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import (  # noqa: E402  (the experiments folder is not a package)
    BUDGET,
    HEADS,
    ID_CLASSIFIER_EPOCHS,
    MODES,
    RANKER_CANDIDATES,
    REPO_ROOT,
    VARIANTS,
    Study,
    paired_gap,
    score,
    strongest,
    write_results,
)

MODEL = "nextlocllm"
RANKING_RESULTS = REPO_ROOT / "experiments" / "results" / "ranking.json"
ID_CLASSIFIER = "id_classifier"


def _rows_description(study: Study, city: str, split_seed: int) -> dict:
    targets = study.targets(city, split_seed)
    return {"samples": int(len(targets["cell"])), "users": int(len(set(targets["user"]))), "split_seed": split_seed}


def _gaps_to_strongest_baseline(methods: dict, scores: dict, targets: dict) -> dict:
    """Paired Hit@1 and Hit@10 differences between the model and the best other method on each metric."""
    baselines = [name for name in methods if name != MODEL]
    paired = {}
    for metric, k in (("hit@1", 1), ("hit@10", 10)):
        best = strongest(scores, baselines, metric)
        paired[f"{MODEL} - {best} ({metric})"] = paired_gap(methods[MODEL], methods[best], targets, k)
    return paired


def supervised(study: Study) -> None:
    targets = study.targets("nyc")
    methods = {
        MODEL: [study.model_predictions(MODEL, seed, "nyc") for seed in study.seeds],
        ID_CLASSIFIER: [study.id_classifier_predictions(seed) for seed in study.seeds],
        **{name: [p] for name, p in study.rule_predictions("nyc").items()},
    }
    scores = {name: score(runs, targets) for name, runs in methods.items()}
    paired = _gaps_to_strongest_baseline(methods, scores, targets)
    write_results("supervised_nyc", {
        "table": "NYC test, supervised", "rows": {"nyc/test": _rows_description(study, "nyc", 0)},
        "seeds": list(study.seeds), "id_classifier_epochs": ID_CLASSIFIER_EPOCHS,
        "methods": {name: {"nyc/test": s} for name, s in scores.items()}, "paired_differences": paired,
        "training": {f"{MODEL} seed {seed}": study.training_record(MODEL, seed) for seed in study.seeds},
    })


def zero_shot(study: Study) -> None:
    targets = study.targets("calgary")
    methods = {
        MODEL: [study.model_predictions(MODEL, seed, "calgary") for seed in study.seeds],
        **{name: [p] for name, p in study.rule_predictions("calgary").items()},
    }
    scores = {name: score(runs, targets) for name, runs in methods.items()}
    supervised_hit1 = score([study.model_predictions(MODEL, seed, "nyc") for seed in study.seeds],
                            study.targets("nyc"))["mean"]["hit@1"]
    paired = _gaps_to_strongest_baseline(methods, scores, targets)
    write_results("zero_shot_calgary", {
        "table": "Calgary (all samples, never trained on), model trained on NYC",
        "rows": {"calgary/all": _rows_description(study, "calgary", 0)}, "seeds": list(study.seeds),
        "methods": {name: {"calgary/all": s} for name, s in scores.items()}, "paired_differences": paired,
        "nyc_test_hit@1": supervised_hit1,
        "hit@1_kept": scores[MODEL]["mean"]["hit@1"] / supervised_hit1 if supervised_hit1 else None,
    })


def ablations(study: Study) -> None:
    """Each variant once (seed 0), on NYC test and zero-shot on Calgary; paired against the full model."""
    payload: dict = {"table": "ablations (seed 0)", "methods": {}, "paired_differences": {}, "training": {}}
    for city in ("nyc", "calgary"):
        targets = study.targets(city)
        rows = "nyc/test" if city == "nyc" else "calgary/all"
        payload.setdefault("rows", {})[rows] = _rows_description(study, city, 0)
        runs = {variant: [study.model_predictions(variant, 0, city)] for variant in VARIANTS}
        rules = study.rule_predictions(city)
        runs["kd_tree_around_last_point"] = [rules["nearest_cells"]]
        if city == "nyc":
            runs[ID_CLASSIFIER] = [study.id_classifier_predictions(0)]
        for name, predictions in runs.items():
            payload["methods"].setdefault(name, {})[rows] = score(predictions, targets)
            if name != MODEL:
                payload["paired_differences"][f"{name} - {MODEL} ({rows}, hit@1)"] = paired_gap(
                    predictions, runs[MODEL], targets, 1
                )
    payload["training"] = {variant: study.training_record(variant, 0) for variant in VARIANTS}
    payload["variant_flags"] = VARIANTS
    write_results("ablations", payload)


def heads(study: Study) -> None:
    """The heads beyond the paper (seed 0) against the paper's head (all seeds) and every baseline, NYC and Calgary."""
    payload: dict = {"table": "prediction heads", "methods": {}, "paired_differences": {}, "rows": {},
                     "head_flags": HEADS}
    for city in ("nyc", "calgary"):
        targets = study.targets(city)
        rows = "nyc/test" if city == "nyc" else "calgary/all"
        payload["rows"][rows] = _rows_description(study, city, 0)
        methods = {  # heads first: they are what this table adds
            **{head: [study.model_predictions(head, 0, city)] for head in HEADS},
            MODEL: [study.model_predictions(MODEL, seed, city) for seed in study.seeds],
            **{name: [p] for name, p in study.rule_predictions(city).items()},
        }
        if city == "nyc":
            methods[ID_CLASSIFIER] = [study.id_classifier_predictions(seed) for seed in study.seeds]
        scores = {name: score(runs, targets) for name, runs in methods.items()}
        for name, s in scores.items():
            payload["methods"].setdefault(name, {})[rows] = s
        rules = [name for name in methods if name not in (MODEL, *HEADS, ID_CLASSIFIER)]
        for metric, k in (("hit@1", 1), ("hit@10", 10)):
            best = strongest(scores, rules, metric)
            for head in HEADS:
                payload["paired_differences"][f"{head} - {best} ({rows}, {metric})"] = paired_gap(
                    methods[head], methods[best], targets, k
                )
                payload["paired_differences"][f"{head} - {MODEL} seed 0 ({rows}, {metric})"] = paired_gap(
                    methods[head], methods[MODEL][:1], targets, k
                )
    payload["training"] = {head: study.training_record(head, 0) for head in HEADS}
    write_results("heads", payload)


def split_seeds(study: Study) -> None:
    """NextLocLLM (seed 0), the ID classifier (seed 0) and the rules on two user splits: is the order the same?"""
    payload: dict = {"table": "NYC test on two user splits", "methods": {}, "ranking_by_hit@1": {}, "rows": {}}
    for split_seed in (0, 1):
        rows = f"nyc/test split {split_seed}"
        targets = study.targets("nyc", split_seed)
        payload["rows"][rows] = _rows_description(study, "nyc", split_seed)
        methods = {
            MODEL: [study.model_predictions(MODEL, 0, "nyc", split_seed)],
            ID_CLASSIFIER: [study.id_classifier_predictions(0, split_seed)],
            **{name: [p] for name, p in study.rule_predictions("nyc", split_seed).items()},
        }
        scores = {name: score(runs, targets) for name, runs in methods.items()}
        for name, s in scores.items():
            payload["methods"].setdefault(name, {})[rows] = s
        payload["ranking_by_hit@1"][rows] = sorted(scores, key=lambda n: -scores[n]["mean"]["hit@1"])
    write_results("split_seeds", payload)


def ranking(study: Study, reuse: Sequence[str] = ()) -> None:
    """Issue 12: NYC test and Calgary zero-shot in both task modes; every method on the same rows; paired
    user-bootstrap gaps of each learned method against the strongest baseline of its mode (rules, point references
    and learned rankers without a language model).

    `reuse` names model variants whose rows (scores, paired gaps against the baselines, training record) are copied
    from the committed ranking.json instead of retrained: only for variants whose code path has not changed since,
    to spend one machine's hours on what did. The payload lists them."""
    previous = json.loads(RANKING_RESULTS.read_text()) if reuse else {}
    for variant in reuse:
        if variant not in MODES or variant not in previous.get("training", {}):
            raise SystemExit(f"--reuse {variant}: not a ranking variant of {RANKING_RESULTS}")
    payload: dict = {"table": "task modes: NextLocLLM heads vs the boosted ranker and the rules (seed 0)",
                     "methods": {}, "paired_differences": {}, "rows": {}, "strongest_baseline": {},
                     "model_flags": MODES, "candidate_settings": RANKER_CANDIDATES,
                     # a reused row keeps the flags it was trained with (equivalent recipes may be spelled differently)
                     "reused_from_previous_run": {variant: previous["model_flags"][variant] for variant in reuse}}
    for city in ("nyc", "calgary"):
        targets = study.targets(city)
        split = "test" if city == "nyc" else "all"
        for mode in ("next", "at_time"):
            key = f"{city}/{split}/{mode}"
            payload["rows"][key] = _rows_description(study, city, 0)
            rules = study.rule_predictions(city, task_mode=mode)
            baselines = {
                **{name: [p] for name, p in rules.items()},
                "geometric_median": [study.geometric_median_predictions(city)],
                "gbdt_ranker": [study.feature_ranker_predictions("gbdt_ranker", mode, city, **RANKER_CANDIDATES)],
                "gbdt_ranker_no_history": [study.feature_ranker_predictions("gbdt_ranker", mode, city)],
                "feature_mlp_ranker": [study.feature_ranker_predictions("feature_mlp_ranker", mode, city,
                                                                        **RANKER_CANDIDATES)],
            }
            models = {variant.split("/")[0]: [study.model_predictions(variant, 0, city)]
                      for variant in MODES if variant.endswith(f"/{mode}") and variant not in reuse}
            methods = {**models, **baselines}
            scores = {name: score(runs, targets) for name, runs in methods.items()}
            for name, s in scores.items():
                payload["methods"].setdefault(name, {})[key] = s
            rule_names = [*rules, "geometric_median"]
            for metric, k in (("hit@1", 1), ("hit@10", 10)):
                best_rule = strongest(scores, rule_names, metric)
                best_baseline = strongest(scores, list(baselines), metric)
                payload["strongest_baseline"][f"{key} {metric}"] = {"rule": best_rule, "any": best_baseline}
                for name in [*models, "gbdt_ranker", "feature_mlp_ranker"]:
                    for other in dict.fromkeys([best_rule, best_baseline, "gbdt_ranker"]):
                        if other != name:
                            payload["paired_differences"][f"{name} - {other} ({key}, {metric})"] = paired_gap(
                                methods[name], methods[other], targets, k)
                # what the user's earlier history adds, to the model and to the boosted trees
                for name, other in (("nextlocllm_ranker", "nextlocllm_ranker_no_history"),
                                    ("gbdt_ranker", "gbdt_ranker_no_history")):
                    if name in methods and other in methods:
                        payload["paired_differences"][f"{name} - {other} ({key}, {metric})"] = paired_gap(
                            methods[name], methods[other], targets, k)
    for variant in reuse:
        name = variant.split("/")[0]
        payload["methods"][name] = previous["methods"][name]
        payload["paired_differences"].update(
            {gap: value for gap, value in previous["paired_differences"].items() if gap.startswith(f"{name} - ")})
    payload["training"] = {variant: previous["training"][variant] if variant in reuse
                           else study.training_record(variant, 0) for variant in MODES}
    write_results("ranking", payload)


TABLES = {
    "supervised": supervised,
    "zero_shot": zero_shot,
    "ablations": ablations,
    "heads": heads,
    "split_seeds": split_seeds,
    "ranking": ranking,
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Run one table of the real-data study.")
    parser.add_argument("table", choices=[*TABLES, "all"])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    parser.add_argument("--work_dir", type=Path, default=REPO_ROOT / "runs" / "study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of the main rows")
    parser.add_argument("--reuse", nargs="+", default=[], metavar="VARIANT",
                        help="ranking: copy these model variants' rows from the committed ranking.json (unchanged "
                             "code path) instead of retraining them")
    args = parser.parse_args(argv)
    if not (args.data / "foursquare_tsmc2014_nyc").is_dir():
        parser.error(f"--data {args.data}: no foursquare_tsmc2014_nyc folder there")
    study = Study(args.data.resolve(), args.work_dir, seeds=tuple(args.seeds))
    print(f"budget per training run: {BUDGET}")
    if args.reuse and args.table != "ranking":
        parser.error("--reuse applies to the ranking table only")
    for name in TABLES if args.table == "all" else [args.table]:
        TABLES[name](study, args.reuse) if name == "ranking" else TABLES[name](study)


if __name__ == "__main__":
    main()
