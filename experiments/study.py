"""The machinery behind every table of the real-data study: build the cities, train, predict, score.

Every method is scored on the same rows: NYC test samples of one user split, or all Calgary samples for zero-shot
(Calgary is never trained or tuned on, so all of its samples are unseen). Per-sample rankings are cached under the
work folder, so a table re-scores without re-training; a training run is skipped when its exported model exists.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from nextlocllm_hf.data.city_dataset import SPLITS
from nextlocllm_hf.modeling.recipes_nextlocllm import get_recipe

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "experiments" / "results"
MAX_RANK = 20

CITY_SOURCES = {
    "nyc": {
        "input": "foursquare_tsmc2014_nyc/nyc_checkins.csv",
        "pois": "foursquare_tsmc2014_nyc/nyc_pois.csv",
    },
    "calgary": {"input": "foursquare_tist2015_calgary/calgary_checkins.csv", "pois": None},
}

# What one CPU machine affords per run (see docs/results.md, "Compute budget"); the same for every variant, given
# explicitly so that it wins over each recipe's own budget (the `ranker` recipe's is this one: it was measured here).
BUDGET = {
    "backbone": "smollm2-135m",
    "num_backbone_layers": 2,
    "epochs": 1,
    "per_device_batch_size": 32,
    "learning_rate": 1e-3,
    "eval_steps": 207,
    "max_eval_samples": 5000,
}

# Ablations: extra train.py flags on the paper's model (`--recipe paper`, at the budget above).
PAPER = ["--recipe", "paper"]
VARIANTS: dict[str, list[str]] = {
    "nextlocllm": PAPER,
    "no_prompt": [*PAPER, "--no_prompt"],
    "no_llm_poi": [*PAPER, "--no_llm_poi"],
    "poi_hidden_states": [*PAPER, "--poi_text_encoding", "hidden_states"],
    "lora": [*PAPER, "--adaptation", "lora"],
}

# Heads beyond the paper (issue 8), same budget: a Gaussian mixture ranked by density, and the candidate ranker
# on top of it or of the paper's point (whose loss is in metres, hence the weight).
HEADS: dict[str, list[str]] = {
    "mixture": [*PAPER, "--head_type", "mixture", "--num_mixture_components", "5"],
    "mixture_ranker": [*PAPER, "--head_type", "mixture_ranker", "--num_mixture_components", "5"],
    "point_ranker": [*PAPER, "--head_type", "point_ranker", "--candidate_loss_weight", "1000"],
}

# Issue 12: every method in both task modes. The model's rows, keyed "<variant>/<mode>": the recommended recipe (the
# time-aware candidate ranker over the user's whole history, `recipes_nextlocllm.py` says why each value), it without
# the time-conditioned features and without the history, and the paper's model with its point head as an offset from
# the last point or absolute.
RANKER = ["--recipe", "ranker"]
MODES: dict[str, list[str]] = {
    "nextlocllm_ranker/at_time": [*RANKER, "--task_mode", "at_time"],
    "nextlocllm_ranker/next": [*RANKER, "--task_mode", "next"],
    "nextlocllm_offset_head/next": [*PAPER, "--task_mode", "next", "--regression_target", "offset_from_last"],
    "nextlocllm_paper_head/next": [*PAPER, "--task_mode", "next"],
    "nextlocllm_ranker_no_time_features/at_time": [*RANKER, "--task_mode", "at_time", "--no_candidate_time_features"],
    "nextlocllm_ranker_no_history/at_time": [*RANKER, "--task_mode", "at_time", "--no_candidate_history"],
}

# The learned baselines see the candidates and features of the recommended recipe's ranker (`gbdt_ranker_no_history`
# in the ranking table is the boosted ranker on the 45-record window alone).
RANKER_CANDIDATES = {"history": get_recipe("ranker").config["candidate_history"],
                     "max_candidates": get_recipe("ranker").config["max_candidates"]}

ID_CLASSIFIER_EPOCHS = 15


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU only"


@dataclass
class Predictions:
    """One method on one set of rows: top-k cells per sample and the predicted position (Mercator metres)."""

    ranked: np.ndarray
    xy: np.ndarray


@dataclass
class Study:
    data_dir: Path
    work_dir: Path
    seeds: Sequence[int] = (0, 1, 2)
    budget: Mapping[str, object] = field(default_factory=lambda: dict(BUDGET))  # train.py flags of every run
    id_classifier_epochs: int = ID_CLASSIFIER_EPOCHS
    _cities: dict = field(default_factory=dict)
    _rankers: dict = field(default_factory=dict)  # fitted feature rankers, shared by the cities they rank

    # -------------------------------------------------------------------------------------------------------------
    # data

    def city(self, name: str, split_seed: int = 0):
        """The built city (cached in the work folder), with the user split drawn by `split_seed`."""
        from nextlocllm_hf.data import load_city_splits
        from nextlocllm_hf.data.build import BuildConfig, build_and_save

        key = (name, split_seed)
        if key not in self._cities:
            folder = self.work_dir / "data" / f"{name}_split{split_seed}"
            if not (folder / "city.json").exists():
                source = CITY_SOURCES[name]
                pois = self.data_dir / source["pois"] if source["pois"] else None
                result = build_and_save(BuildConfig(
                    city=name, format="foursquare", input=str(self.data_dir / source["input"]),
                    pois=str(pois) if pois else None, output=str(folder), seed=split_seed,
                ))
                print(result.report.render())
            self._cities[key] = load_city_splits(str(folder))
        return self._cities[key]

    def rows(self, name: str, split_seed: int = 0):
        """The evaluation rows: the test split of a training city; every sample of the zero-shot city."""
        from nextlocllm_hf.data.windows import concatenate_windows

        city = self.city(name, split_seed)
        if name == "calgary":
            return concatenate_windows([city.splits[s] for s in SPLITS])
        return city.splits["test"]

    def targets(self, name: str, split_seed: int = 0) -> dict[str, np.ndarray]:
        from nextlocllm_hf.columns import rows_to_arrays

        arrays = rows_to_arrays(self.rows(name, split_seed), ("target_cell", "target_coordinates", "user_id"))
        return {
            "cell": np.asarray(arrays["target_cell"], dtype=np.int64).reshape(-1),
            "xy": np.asarray(arrays["target_coordinates"], dtype=np.float64),
            "user": np.asarray(arrays["user_id"]).astype(str),
        }

    # -------------------------------------------------------------------------------------------------------------
    # training

    def run_dir(self, variant: str, seed: int, split_seed: int = 0) -> Path:
        return self.work_dir / "runs" / f"{variant.replace('/', '_')}_seed{seed}_split{split_seed}"

    def train(self, variant: str, seed: int, split_seed: int = 0) -> Path:
        """Train one variant on NYC with `train.py` in a fresh process; returns the run folder."""
        run_dir = self.run_dir(variant, seed, split_seed)
        if (run_dir / "results.json").exists():
            return run_dir
        nyc = self.city("nyc", split_seed)
        command = [
            sys.executable, str(REPO_ROOT / "train.py"), "--dataset", nyc.path, "--output_dir", str(run_dir),
            "--seed", str(seed), *[f"--{k}={v}" for k, v in self.budget.items()], *{**VARIANTS, **HEADS, **MODES}[variant],
            "--resume_from_checkpoint", "latest",  # an interrupted attempt continues; a fresh folder starts at 0
        ]
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"training {run_dir.name} (log: {run_dir / 'train.log'})", flush=True)
        with open(run_dir / "train.log", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return run_dir

    def training_record(self, variant: str, seed: int, split_seed: int = 0) -> dict:
        results = json.loads((self.run_dir(variant, seed, split_seed) / "results.json").read_text())
        keys = ("best_step", "best_validation", "validation_history", "training_seconds", "training_history",
                "ranker_warm_start")
        return {k: results[k] for k in keys if k in results}

    # -------------------------------------------------------------------------------------------------------------
    # predictions (cached per method, city and split)

    def _cached(self, key: str, compute) -> Predictions:
        path = self.work_dir / "predictions" / f"{key}.npz"
        if path.exists():
            with np.load(path) as stored:
                return Predictions(stored["ranked"], stored["xy"])
        predictions = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, ranked=predictions.ranked, xy=predictions.xy)
        return predictions

    def model_predictions(self, variant: str, seed: int, city_name: str, split_seed: int = 0) -> Predictions:
        """The trained variant on a city's evaluation rows, ranked by its own head among that city's cells."""

        def compute() -> Predictions:
            import nextlocllm_hf  # noqa: F401  (registers the Auto classes)
            from transformers import AutoModel

            from nextlocllm_hf.evaluate import evaluate_model, model_samples

            model = AutoModel.from_pretrained(self.train(variant, seed, split_seed) / "model")
            city = self.city(city_name, split_seed)
            if city.name not in model.cities:
                model.add_city(city.retriever)  # zero-shot: the new city's cells and statistics
            samples = model_samples(model, self.rows(city_name, split_seed), {city.name: city.retriever})
            _, raw = evaluate_model(model, samples, batch_size=128, description=f"{variant} seed {seed} {city_name}")
            return Predictions(raw["ranked"], raw["coordinates"])  # ranked by the model's own head

        return self._cached(f"{variant.replace('/', '_')}_seed{seed}_split{split_seed}_{city_name}", compute)

    def rule_predictions(self, city_name: str, split_seed: int = 0, task_mode: str = "next") -> dict[str, Predictions]:
        """Every rule baseline; in the zero-shot city no rule may learn from that city's other users. The time-aware
        rules refer to the query in `at_time` mode and to the last record in `next` mode."""
        from nextlocllm_hf.baselines import RULE_BASELINES, TIME_AWARE_RULES, rank_rule_baselines, top1_centroid_xy

        city = self.city(city_name, split_seed)
        zero_shot = city_name == "calgary"
        names = [n for n in RULE_BASELINES if not (zero_shot and n == "markov_train_users")]
        retriever = city.retriever
        out = {}
        for name in names:
            def compute(name=name) -> Predictions:
                ranked = rank_rule_baselines(
                    None if zero_shot else city.splits["train"], self.rows(city_name, split_seed), retriever,
                    k=MAX_RANK, names=[name], task_mode=task_mode,
                )[name]
                return Predictions(ranked, top1_centroid_xy(ranked, retriever))

            key = f"{name}_{task_mode}" if name in TIME_AWARE_RULES else name
            out[name] = self._cached(f"{key}_split{split_seed}_{city_name}", compute)
        return out

    def feature_ranker_predictions(self, name: str, task_mode: str, city_name: str, seed: int = 0,
                                   split_seed: int = 0, **settings) -> Predictions:
        """A learned ranker over the model's candidate features without a language model (`gbdt_ranker`,
        `feature_mlp_ranker`), trained on NYC's training users and selected on its validation users."""
        from nextlocllm_hf.baselines import FEATURE_RANKERS, top1_centroid_xy

        def compute() -> Predictions:
            key = (name, task_mode, seed, split_seed, tuple(sorted(settings.items())))
            if key not in self._rankers:
                nyc = self.city("nyc", split_seed)
                self._rankers[key] = FEATURE_RANKERS[name](task_mode, seed=seed, **settings).fit(
                    nyc.splits["train"], nyc.splits["validation"], nyc.retriever)
            ranker = self._rankers[key]
            retriever = self.city(city_name, split_seed).retriever
            ranked = ranker.rank(self.rows(city_name, split_seed), retriever, MAX_RANK)
            return Predictions(ranked, top1_centroid_xy(ranked, retriever))

        suffix = "".join(f"_{key}{value}" for key, value in sorted(settings.items()))
        return self._cached(f"{name}_{task_mode}{suffix}_seed{seed}_split{split_seed}_{city_name}", compute)

    def geometric_median_predictions(self, city_name: str, split_seed: int = 0) -> Predictions:
        """A point reference: the geometric median of the sample's input positions, ranked by its nearest cells."""

        def compute() -> Predictions:
            from nextlocllm_hf.columns import rows_to_arrays

            arrays = rows_to_arrays(self.rows(city_name, split_seed), ("history_coordinates", "current_coordinates"))
            points = np.concatenate([arrays["history_coordinates"], arrays["current_coordinates"]], axis=1)
            median = geometric_median(points)
            ranked, _ = self.city(city_name, split_seed).retriever.query(median, MAX_RANK)
            return Predictions(ranked, median)

        return self._cached(f"geometric_median_split{split_seed}_{city_name}", compute)

    def id_classifier_predictions(self, seed: int, split_seed: int = 0) -> Predictions:
        """The LSTM over cell ids (classification over NYC's cells): the paper's non-coordinate alternative."""
        from nextlocllm_hf.baselines import rank_with_id_classifier, top1_centroid_xy, train_id_classifier

        def compute() -> Predictions:
            city = self.city("nyc", split_seed)
            retriever = city.retriever
            classifier, _ = train_id_classifier(
                city.splits["train"], city.splits["validation"], retriever.num_cells,
                epochs=self.id_classifier_epochs, seed=seed,
            )
            ranked = rank_with_id_classifier(classifier, city.splits["test"], MAX_RANK, num_cells=retriever.num_cells)
            return Predictions(ranked, top1_centroid_xy(ranked, retriever))

        return self._cached(f"id_classifier_seed{seed}_split{split_seed}_nyc", compute)


def geometric_median(points: np.ndarray, iterations: int = 200) -> np.ndarray:
    """`(N, T, 2)` -> `(N, 2)`: the point minimizing the summed distance to each row's points (Weiszfeld's iteration,
    started at the mean; a point that lands on an input is kept there, which is optimal or within a step of it)."""
    estimate = points.mean(axis=1)
    for _ in range(iterations):
        distance = np.linalg.norm(points - estimate[:, None], axis=-1)
        weights = 1.0 / np.maximum(distance, 1e-6)
        updated = (weights[..., None] * points).sum(axis=1) / weights.sum(axis=1, keepdims=True)
        if np.abs(updated - estimate).max() < 1e-3:
            return updated
        estimate = updated
    return estimate


# -----------------------------------------------------------------------------------------------------------------
# scoring


def hits(predictions: Predictions, targets: Mapping[str, np.ndarray], k: int) -> np.ndarray:
    from nextlocllm_hf.metrics import target_ranks

    ranks = target_ranks(predictions.ranked, targets["cell"])
    return ((ranks >= 1) & (ranks <= k)).astype(np.float64)


def score(runs: Sequence[Predictions], targets: Mapping[str, np.ndarray]) -> dict:
    """Metrics of one method (mean and std over its seeded runs) with user-level uncertainty of Hit@1 and Hit@10.

    The interval is for the seed-averaged score: each sample's hit indicator is averaged over the runs, then users
    are resampled (see `nextlocllm_hf.uncertainty`).
    """
    from nextlocllm_hf.metrics import compute_metrics
    from nextlocllm_hf.uncertainty import per_user_mean, user_bootstrap_interval

    per_run = [compute_metrics(p.ranked, targets["cell"], p.xy, targets["xy"]) for p in runs]
    result = {
        "runs": len(runs),
        "mean": {k: float(np.mean([m[k] for m in per_run])) for k in per_run[0]},
        "std": {k: float(np.std([m[k] for m in per_run], ddof=1)) if len(runs) > 1 else 0.0 for k in per_run[0]},
        "per_run": per_run,
    }
    for k in (1, 10):
        averaged = np.mean([hits(p, targets, k) for p in runs], axis=0)
        result[f"hit@{k}_user_ci95"] = user_bootstrap_interval(averaged, targets["user"]).as_dict()
        result[f"per_user_hit@{k}"] = per_user_mean(averaged, targets["user"])
    return result


def paired_gap(a: Sequence[Predictions], b: Sequence[Predictions], targets: Mapping[str, np.ndarray], k: int) -> dict:
    """Hit@k of method a minus method b on the same samples, with a user-bootstrap 95 % interval."""
    from nextlocllm_hf.uncertainty import paired_difference_interval

    mean_a = np.mean([hits(p, targets, k) for p in a], axis=0)
    mean_b = np.mean([hits(p, targets, k) for p in b], axis=0)
    return paired_difference_interval(mean_a, mean_b, targets["user"]).as_dict()


def strongest(scores: Mapping[str, dict], names: Sequence[str], metric: str) -> str:
    return max(names, key=lambda n: scores[n]["mean"][metric])


def write_results(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "budget": BUDGET, **payload}, indent=2))
    print(f"wrote {path}")
    return path
