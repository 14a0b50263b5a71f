"""Does the partitioned build give the study's cities exactly as the in-process build does?

    python experiments/same_partitioned.py --cities /tmp/v2/data/nyc_split0 /tmp/v2/data/calgary_split0 --scratch /tmp/p

Each city is rebuilt twice with the options its `city.json` records (`source.build`): in process, and partitioned
(4 user partitions on a local cluster of 2 processes, the input read in 1 MB blocks so that it has many), and the two
are compared with the test suite's rule (`tests/test_data_partitioned.assert_same_city`: every sample field of every
split, the cells and city.json, but for how the build ran). Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_data_partitioned import assert_same_city  # noqa: E402

from nextlocllm_hf.data.build import BuildConfig, build_and_save  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cities", type=Path, nargs="+", required=True, help="built city folders (their city.json)")
    parser.add_argument("--scratch", type=Path, required=True, help="a folder for the rebuilds")
    args = parser.parse_args(argv)
    failed = 0
    for folder in args.cities:
        build = json.loads((folder / "city.json").read_text())["source"]["build"]
        build = {k: tuple(v) if isinstance(v, list) else v for k, v in build.items()}
        common = {**build, "overwrite": True, "show_progress": False}
        single = build_and_save(BuildConfig(**{**common, "output": str(args.scratch / f"{folder.name}-in-process")}))
        parts = build_and_save(BuildConfig(**{**common, "output": str(args.scratch / f"{folder.name}-partitioned"),
                                              "partitions": 4, "scheduler": "processes", "workers": 2,
                                              "block_size": "1MB"}))
        try:
            assert_same_city(single, parts)
            print(f"{folder.name}: the same city ({', '.join(f'{s} {len(t):,}' for s, t in parts.windows.items())} "
                  f"samples; {parts.metadata['records_files']} records files partitioned, "
                  f"{single.metadata['records_files']} in process)")
        except AssertionError as error:
            failed += 1
            print(f"{folder.name}: DIFFERENT: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
