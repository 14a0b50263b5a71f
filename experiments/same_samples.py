"""Do the study's cities hold the same samples in city format 2 (records once, windows) as in format 1?

    python experiments/same_samples.py --data ../shared/data --before runs/v1-cities --scratch /tmp/v2-cities

`--before` holds `nyc_split0/` and `calgary_split0/` as the format-1 builder wrote them (with the study's options);
the cities are rebuilt with the current code into `--scratch`, and every sample field of every split is compared
with format 1's stored column, exactly (float64 coordinates bit for bit), as are `cells.parquet` and `city.json`
(but for what format 2 adds: the format version, the records files; and for timings and the options that say how
the build ran: shard size, output folder, the partitioned build's settings). Identical inputs give a trained model
identical predictions, so the study's numbers stand. Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import Study  # noqa: E402  (the experiments folder is not a package)

from nextlocllm_hf.columns import arrow_to_numpy, rows_to_arrays  # noqa: E402
from nextlocllm_hf.data.city_dataset import SPLITS  # noqa: E402

CITIES = ("nyc", "calgary")
FORMAT_2_KEYS = ("format_version", "window_length", "records_files")  # city.json keys format 2 adds or changes
# build options that say how the build ran (files, folder, the partitioned build's engine), not what it built
RUN_OPTIONS = ("shard_rows", "output", "partitions", "scheduler", "workers", "block_size")


def comparable_metadata(metadata: dict) -> dict:
    """`city.json` without what format 2 adds, timings and how the build ran."""
    metadata = {key: value for key, value in metadata.items() if key not in (*FORMAT_2_KEYS, "report")}
    metadata["source"] = {**metadata["source"], "build": {key: value for key, value in
                                                          metadata["source"]["build"].items() if key not in RUN_OPTIONS}}
    return metadata


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder (../shared/data)")
    parser.add_argument("--before", type=Path, required=True, help="the format-1 builds of the study's cities")
    parser.add_argument("--scratch", type=Path, required=True, help="an empty folder for the format-2 builds")
    args = parser.parse_args(argv)
    if args.scratch.exists() and any(args.scratch.iterdir()):
        parser.error(f"--scratch {args.scratch}: not empty")
    study = Study(args.data.resolve(), args.scratch)
    differ: list[str] = []
    for name in CITIES:
        city = study.city(name)
        old = args.before / f"{name}_split0"
        new = args.scratch / "data" / f"{name}_split0"
        if (old / "cells.parquet").read_bytes() != (new / "cells.parquet").read_bytes():
            differ.append(f"{name}: cells.parquet")
        before = json.loads((old / "city.json").read_text(encoding="utf-8"))
        if comparable_metadata(before) != comparable_metadata(city.metadata):
            differ.append(f"{name}: city.json")
        for split in SPLITS:
            table = pq.read_table(old / f"{split}.parquet")
            gathered = rows_to_arrays(city.splits[split], table.column_names)
            fields = [column for column in table.column_names
                      if not np.array_equal(arrow_to_numpy(table.column(column), column), gathered[column])]
            print(f"{name}/{split}: {table.num_rows} samples, {len(table.column_names)} fields, "
                  f"{'all the same' if not fields else 'DIFFERENT: ' + ', '.join(fields)}", flush=True)
            differ += [f"{name}/{split}: {field}" for field in fields]
    print(f"{len(differ)} different" + (": " + "; ".join(differ) if differ else ": the same samples"))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
