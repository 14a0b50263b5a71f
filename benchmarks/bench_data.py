"""Building and feeding synthetic cities of growing size: city format 2 (records once, windows) against format 1.

    python benchmarks/bench_data.py --records 1000000 3000000 --baseline f99a203 [--out benchmarks/DATA.md]

For each size, a synthetic city (`records_per_user` 520, as `build_city.py --format synthetic` makes them) is built
by each variant in its own process, which reports its peak RSS: the current code (format 2), and the code of the
`--baseline` commit (format 1), unpacked with `git archive` into a scratch folder. Then the current code feeds
training batches from the built train split (`CitySamples`, batch 64, shuffled, the first `--batches`), in a fresh
process with its own peak RSS. Writes a Markdown table to `--out`, and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDS_PER_USER = 520

BUILD = """
import json, resource, sys, time
import nextlocllm_hf
from nextlocllm_hf.data.build import BuildConfig, build_and_save
users, output = int(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
result = build_and_save(BuildConfig(city="bench", format="synthetic", seed=0, output=output, show_progress=False,
                                    synthetic={"n_users": users, "records_per_user": %d}))
print(json.dumps({"package": nextlocllm_hf.__file__, "seconds": time.perf_counter() - start, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "records": result.metadata["counts"]["records"]["kept"],
                  "samples": sum(result.metadata["counts"]["samples"].values())}))
""" % RECORDS_PER_USER

FEED = """
import json, resource, sys, time
import numpy as np
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from nextlocllm_hf.batching import CitySamples, collate_batch
from nextlocllm_hf.data import load_city_splits
folder, batches = sys.argv[1], int(sys.argv[2])
start = time.perf_counter()
city = load_city_splits(folder)
samples = CitySamples(city.splits["train"], {city.name: city.retriever}, task_mode="at_time")
loaded = time.perf_counter() - start
import torch
loader = DataLoader(samples, batch_size=64, shuffle=True, collate_fn=collate_batch, generator=torch.Generator().manual_seed(0))
start, n = time.perf_counter(), 0
for batch in loader:
    n += 1
    if n == batches:
        break
print(json.dumps({"load_seconds": loaded, "batches_per_second": n / (time.perf_counter() - start),
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run(script: str, args: list[str], cwd: Path, pythonpath: str | None = None) -> dict:
    """`script` in a fresh interpreter started in `cwd` (not the checkout, whose package `-c` would import first)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def baseline_tree(commit: str, scratch: Path) -> str:
    """The baseline commit's package, importable: `git archive`, with the flat `modeling/` inside it, where the
    installed package has it."""
    tree = scratch / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "nextlocllm_hf", "modeling"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    shutil.move(str(tree / "modeling"), str(tree / "nextlocllm_hf" / "modeling"))
    return str(tree)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--baseline", default=None, help="a commit of the format-1 builder to pair with")
    parser.add_argument("--baseline_max_records", type=int, default=3_100_000,
                        help="sizes above this are not built with the baseline (it would not fit)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "DATA.md")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        scratch = Path(tmp)
        old_tree = baseline_tree(args.baseline, scratch) if args.baseline else None
        for records in args.records:
            users = max(1, round(records / RECORDS_PER_USER))
            variants = [("format 2", None)]
            if old_tree and records <= args.baseline_max_records:
                variants.append((f"format 1 ({args.baseline[:7]})", old_tree))
            for name, tree in variants:
                folder = scratch / f"city-{records}-{name.split()[1]}"
                built = run(BUILD, [str(users), str(folder)], scratch, tree)
                row = {"variant": name, "users": users, **built, "bytes": folder_bytes(folder)}
                if tree is None:
                    row.update({f"feed_{k}": v for k, v in run(FEED, [str(folder), str(args.batches)], scratch).items()})
                rows.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(folder)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    lines = [
        "# Building and feeding synthetic cities: format 2 against format 1",
        "",
        f"`python benchmarks/bench_data.py --records {' '.join(map(str, args.records))}"
        + (f" --baseline {args.baseline}`" if args.baseline else "`") + f"; machine: {machine}.",
        "Each build and each feed ran in its own process; peak RSS is that process's. Feeding: `CitySamples` over "
        f"the train split, `at_time` fields, batches of 64 shuffled, {args.batches} batches.",
        "",
        "| records | users | variant | samples | build s | build peak RSS GB | on disk MB | feed load s | batches/s | feed peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        feed = (f"{row['feed_load_seconds']:.1f} | {row['feed_batches_per_second']:.0f} | "
                f"{row['feed_peak_rss'] / 1e9:.2f}") if "feed_peak_rss" in row else "- | - | -"
        lines.append(f"| {row['records']:,} | {row['users']:,} | {row['variant']} | {row['samples']:,} | "
                     f"{row['seconds']:.0f} | {row['peak_rss'] / 1e9:.2f} | {row['bytes'] / 1e6:.0f} | {feed} |")
    table = "\n".join(lines) + "\n"
    args.out.write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
