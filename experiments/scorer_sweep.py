"""Features-only candidate scorer settings against gbdt_ranker on the study's NYC split, selected on validation.

    python experiments/scorer_sweep.py --data ../shared/data at_time gbdt '{"width": 256, "feature_bins": 8}' ...

A variant is `gbdt` (the boosted ranker with its defaults) or a JSON dict of `FeatureMLPRanker` settings (width,
feature_bins, learning_rate, epochs, patience, batch_size, seed). One JSON line per variant goes to stdout: validation
Hit@1 by epoch, the best, and the test Hit@1 of the epoch validation chose. The candidate tables of the three splits
are built once per mode and cached in runs/sweep/.

experiments/results/scorer_sweep.jsonl holds the lines that chose today's scorer defaults. Its variants with
`set_context`, `dropout` or `wd` came from a prototype scorer that also tried a set context (attention or mean
pooling over the candidates), dropout and weight decay (`git show dc32f41:experiments/scorer_sweep.py`). None of those
beat plain piecewise-linear encoding on validation, so they were left out of `CandidateScorer`.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from study import Study  # noqa: E402  (the experiments folder is not a package)

from nextlocllm_hf.baselines.feature_rankers import (  # noqa: E402
    CandidateTable,
    FeatureMLPRanker,
    GBDTRanker,
    hit_at_1,
)
from nextlocllm_hf.data.city_dataset import SPLITS  # noqa: E402


def candidate_tables(data_dir: Path, work_dir: Path, task_mode: str) -> dict[str, CandidateTable]:
    """The NYC split's candidate tables (built by the rankers' own `table`, so every variant sees the same rows)."""
    cache = work_dir / f"nyc_{task_mode}_tables.pkl"
    if cache.exists():
        with open(cache, "rb") as stored:
            return pickle.load(stored)
    nyc = Study(data_dir, HERE.parent / "runs" / "study").city("nyc")
    tables = {split: GBDTRanker(task_mode).table(nyc.splits[split], nyc.retriever) for split in SPLITS}
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(cache, "wb") as stored:
        pickle.dump(tables, stored)
    return tables


def measure(variant: str, task_mode: str, tables: dict[str, CandidateTable]) -> dict:
    """Fit one variant on train (selected on validation) and score it on validation and test."""
    started = time.time()
    if variant == "gbdt":
        ranker, label = GBDTRanker(task_mode), "gbdt"
    else:
        settings = json.loads(variant)
        ranker, label = FeatureMLPRanker(task_mode, **settings), settings
    ranker.fit_tables(tables["train"], tables["validation"])
    line = {"variant": label,
            "val": round(100 * max(ranker.validation_hit_at_1), 2),
            "test": round(100 * hit_at_1(ranker.scores(tables["test"]), tables["test"]), 2)}
    if variant == "gbdt":
        line["best_iter"] = ranker.best_iteration
    else:
        line["hist"] = [round(100 * h, 2) for h in ranker.validation_hit_at_1]
    return {**line, "s": round(time.time() - started)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    parser.add_argument("--work_dir", type=Path, default=HERE.parent / "runs" / "sweep")
    parser.add_argument("task_mode", choices=("next", "at_time"))
    parser.add_argument("variants", nargs="+", help="gbdt, or a JSON dict of FeatureMLPRanker settings")
    args = parser.parse_args(argv)
    for variant in args.variants:
        if variant != "gbdt":
            try:
                FeatureMLPRanker(args.task_mode, **json.loads(variant))
            except (json.JSONDecodeError, TypeError) as error:
                parser.error(f"variant {variant!r}: not gbdt or a JSON dict of FeatureMLPRanker settings ({error})")
    torch.set_num_threads(2)
    tables = candidate_tables(args.data.resolve(), args.work_dir, args.task_mode)
    for variant in args.variants:
        print(json.dumps(measure(variant, args.task_mode, tables)), flush=True)


if __name__ == "__main__":
    main()
