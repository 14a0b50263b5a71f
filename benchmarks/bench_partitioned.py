"""The partitioned build against the in-process build, by city size and worker count; train.py at the largest size.

    python benchmarks/bench_partitioned.py --records 1000000 3000000 20000000 --workers 1 2 [--out benchmarks/PARTITIONED.md]

For each size, a synthetic city (`records_per_user` 520) is written as a check-in CSV (UTC epoch seconds, offsets,
venues and categories: what `--format csv` reads), block of users by block of users (`SyntheticCityParams.user_block`),
so that no process ever holds it whole. It is then built from that file by `nextlocllm-build-city` in its own process:
in process (`--partitions 0`, up to `--in_process_max` records) and partitioned on a local Dask cluster (`--scheduler processes`) with each
`--workers` count. Peak memory is sampled every 0.1 s over the whole process tree (the command and its workers,
summed; the driver alone; its largest worker). At the largest size, `train.py` trains on the partitioned
city (`--train_steps` steps, batch 32, 2 backbone layers, 256 validation samples) and its process's memory is sampled
likewise, through training and validation and `--test_seconds` into the test pass (which, over the whole test split
on 2 CPU cores, would take hours). Writes a Markdown table to `--out` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RECORDS_PER_USER = 520
USERS_PER_BLOCK = 2000
PARTITION_RECORDS = 1_250_000  # records per partition: about 1 GB of a worker's memory

WRITE = """
import sys
import pandas as pd, pyarrow as pa, pyarrow.csv as csv
from nextlocllm_hf.data.synthetic import SyntheticCityParams, generate_synthetic_city
users, per_block, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
writer, rows = None, 0
for block, first in enumerate(range(0, users, per_block)):
    records, _, _ = generate_synthetic_city(SyntheticCityParams(city="bench", seed=0, n_users=min(per_block, users - first),
                                                                records_per_user=%d, user_block=block))
    frame = pd.DataFrame({"user_id": records["user_id"], "utc_time": records["ts"],
                          "tz_offset_min": (records["local_ts"] - records["ts"]) // 60, "lat": records["lat"],
                          "lon": records["lon"], "venue_id": records["venue_id"], "category": records["category"]})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    writer = writer or csv.CSVWriter(path, table.schema)
    writer.write_table(table)
    rows += len(frame)
writer.close()
print(rows)
""" % RECORDS_PER_USER


class TreeMemory:
    """Peak resident memory of a process and all its descendants, sampled every 0.1 s: summed, of the process
    itself (the build's driver) and of its largest descendant (a worker)."""

    def __init__(self, process: subprocess.Popen):
        self.root = psutil.Process(process.pid)
        self.total = self.root_peak = self.largest = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                root = self.root.memory_info().rss
                sizes = []
                for p in self.root.children(recursive=True):
                    try:
                        sizes.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                self.total = max(self.total, root + sum(sizes))
                self.root_peak, self.largest = max(self.root_peak, root), max(self.largest, max(sizes, default=0))
            except psutil.Error:
                pass
            time.sleep(0.1)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def measured(command: list[str], env: dict, stop_after: tuple[str, float] | None = None) -> dict:
    """Run `command`, sampling its tree's memory; `stop_after = (text, seconds)`: end it that long after `text`
    appears in its output."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    memory = TreeMemory(process)
    seen_at, output = None, []
    for line in process.stdout:
        output.append(line)
        if stop_after and seen_at is None and stop_after[0] in line:
            seen_at = time.perf_counter()
            threading.Timer(stop_after[1], process.terminate).start()
    process.wait()
    memory.stop()
    if process.returncode and seen_at is None:
        raise RuntimeError("".join(output[-60:]))
    return {"seconds": time.perf_counter() - start, "tree_peak": memory.total, "driver_peak": memory.root_peak,
            "worker_peak": memory.largest,
            "output": "".join(output), "stopped_at": None if seen_at is None else seen_at - start}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--in_process_max", type=int, default=3_100_000)
    parser.add_argument("--train_steps", type=int, default=40)
    parser.add_argument("--test_seconds", type=float, default=60.0)
    parser.add_argument("--scratch", type=Path, default=None, help="where the CSVs and cities go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "PARTITIONED.md")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows, train_row = [], None
    with tempfile.TemporaryDirectory(prefix="bench-partitioned-", dir=args.scratch) as tmp:
        scratch = Path(tmp)
        for records in args.records:
            users = max(1, round(records / RECORDS_PER_USER))
            csv_path = scratch / f"checkins-{records}.csv"
            written = subprocess.run([sys.executable, "-c", WRITE, str(users), str(USERS_PER_BLOCK), str(csv_path)],
                                     capture_output=True, text=True, env=env, cwd=scratch, check=True)
            rows_written = int(written.stdout.split()[-1])
            partitions = max(2, -(-rows_written // PARTITION_RECORDS))
            variants = [("in process", ["--partitions", "0"])] if records <= args.in_process_max else []
            variants += [(f"{partitions} partitions, {w} worker(s)",
                          ["--partitions", str(partitions), "--scheduler", "processes", "--workers", str(w)])
                         for w in args.workers]
            for name, options in variants:
                folder = scratch / f"city-{records}-{len(rows)}"
                run = measured([sys.executable, "-m", "nextlocllm_hf.build_city", "--format", "csv", "--input",
                                str(csv_path), "--city", "bench", "--output", str(folder), "--no-progress", *options],
                               env)
                metadata = json.loads((folder / "city.json").read_text())
                row = {"records": rows_written, "users": users, "variant": name, "seconds": run["seconds"],
                       "tree_peak": run["tree_peak"], "driver_peak": run["driver_peak"],
                       "worker_peak": run["worker_peak"],
                       "samples": sum(metadata["counts"]["samples"].values()),
                       "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}
                rows.append(row)
                print(json.dumps(row), flush=True)
                last_folder = folder
            if records == max(args.records) and args.train_steps:
                output = scratch / "train-run"
                # The paper's model, as measured: train.py's reading of the records, without a ranker's warm start.
                run = measured([sys.executable, "train.py", "--dataset", str(last_folder), "--output_dir", str(output),
                                "--recipe", "paper", "--num_backbone_layers", "2", "--per_device_batch_size", "32", "--max_steps",
                                str(args.train_steps), "--eval_steps", str(args.train_steps), "--max_eval_samples",
                                "256"], env, stop_after=(f"step {args.train_steps}: validation", args.test_seconds))
                train_row = {"records": rows_written, "seconds": run["seconds"], "tree_peak": run["tree_peak"],
                             "stopped_at": run["stopped_at"],
                             "training_line": next((line for line in run["output"].splitlines()
                                                    if line.startswith("training on")), "")}
                print(json.dumps(train_row), flush=True)
            csv_path.unlink()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    lines = [
        "# The partitioned build (Dask, by user partitions) against the in-process build",
        "",
        f"`python benchmarks/bench_partitioned.py --records {' '.join(map(str, args.records))} --workers "
        f"{' '.join(map(str, args.workers))}`; machine: {machine}. Input: a check-in CSV per size "
        f"({RECORDS_PER_USER} records per user on average); the build reads it whole (in process) or in 64 MB blocks "
        f"(partitioned, about {PARTITION_RECORDS:,} records per partition). Peak RSS sampled every 0.1 s: the whole "
        "process tree summed, the command itself (the driver; the whole build when in process) and its largest worker.",
        "",
        "| records | users | build | samples | wall s | peak RSS GB (tree) | driver GB | largest worker GB | on disk MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        worker = f"{row['worker_peak'] / 1e9:.2f}" if row["worker_peak"] else "-"  # in process: no worker
        lines.append(f"| {row['records']:,} | {row['users']:,} | {row['variant']} | {row['samples']:,} | "
                     f"{row['seconds']:.0f} | {row['tree_peak'] / 1e9:.2f} | {row['driver_peak'] / 1e9:.2f} | "
                     f"{worker} | {row['bytes'] / 1e6:.0f} |")
    if train_row:
        lines += ["", f"`train.py` on the {train_row['records']:,}-record city ({train_row['training_line']}): "
                  f"peak RSS {train_row['tree_peak'] / 1e9:.2f} GB over {args.train_steps} steps, a validation and "
                  f"{args.test_seconds:.0f} s of the test pass (ended there: {train_row['stopped_at']:.0f} s to the "
                  f"end of training)."]
    table = "\n".join(lines) + "\n"
    args.out.write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
