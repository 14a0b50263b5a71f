"""Does a code change keep the study's numbers? Rebuild the cities and recompute the cached predictions with the
current code, then compare them with a study folder written by the code before the change.

    python experiments/same_predictions.py --data ../shared/data --before runs/study --scratch /tmp/regenerate

The trained models are read from `--before` (not retrained); the cities are rebuilt from `--data` into `--scratch`,
and every built file and every prediction (ranked cells and predicted point) is compared byte for byte. Exit status 1
when anything differs. Rows that `--before` has no cache of are skipped and counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import MODES, Predictions, Study  # noqa: E402  (the experiments folder is not a package)

CITIES = ("nyc", "calgary")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    parser.add_argument("--before", type=Path, required=True, help="a study folder written by the earlier code")
    parser.add_argument("--scratch", type=Path, required=True, help="an empty folder for the rebuilt cities")
    args = parser.parse_args(argv)
    if args.scratch.exists() and any(args.scratch.iterdir()):
        parser.error(f"--scratch {args.scratch}: not empty")
    args.scratch.mkdir(parents=True, exist_ok=True)
    (args.scratch / "runs").symlink_to((args.before / "runs").resolve())  # the trained models, read only
    study = Study(args.data.resolve(), args.scratch)
    differ: list[str] = []
    skipped = 0

    for city in CITIES:
        study.city(city)
        built = args.before / "data" / f"{city}_split0"
        for old in sorted(built.glob("*.parquet")):
            new = args.scratch / "data" / built.name / old.name
            if not (new.exists() and new.read_bytes() == old.read_bytes()):
                differ.append(f"data {built.name}/{old.name}")

    def compare(key: str, compute) -> None:
        nonlocal skipped
        cached = args.before / "predictions" / f"{key}.npz"
        if not cached.exists():
            skipped += 1
            return
        new: Predictions = compute()
        with np.load(cached) as old:
            same = np.array_equal(old["ranked"], new.ranked) and np.array_equal(old["xy"], new.xy)
        print(f"{key}: {'same' if same else 'DIFFERENT'}", flush=True)
        if not same:
            differ.append(key)

    for city in CITIES:
        for mode in ("next", "at_time"):
            for rule, predictions in study.rule_predictions(city, task_mode=mode).items():
                key = f"{rule}_{mode}_split0_{city}" if rule == "hour_frequency" else f"{rule}_split0_{city}"
                compare(key, lambda p=predictions: p)
        compare(f"geometric_median_split0_{city}", lambda c=city: study.geometric_median_predictions(c))
        for variant in MODES:
            if not (args.before / "runs" / study.run_dir(variant, 0).name / "model").is_dir():
                skipped += 1  # never loaded from a cache: that would train it
                continue
            compare(f"{variant.replace('/', '_')}_seed0_split0_{city}",
                    lambda v=variant, c=city: study.model_predictions(v, 0, c))
    print(f"{len(differ)} different, {skipped} without a cache in {args.before}: {differ or 'everything the same'}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
