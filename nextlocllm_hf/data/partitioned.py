"""The partitioned build: a city of any size in bounded memory, by user partitions, on Dask.

`build.build_city` holds a whole city in one process (about 0.55 GB per million records); this build holds one
partition of users at a time per worker, so its memory is set by `--partitions`, not by the city. It runs the
in-process build's own steps (`build_steps.py`) on each partition and combines their summaries, so it builds the same
city (`tests/test_data_partitioned.py` compares the two field by field).

Why Dask: its tasks run unchanged on one thread (`--scheduler synchronous`), on the cores of one machine
(`processes`: a local `dask.distributed` cluster) or on a cluster (the address of a `distributed` scheduler, with the
output folder on a file system the workers share), and its `read_csv` cuts one large file into byte blocks. Spark
needs a JVM and Ray Data a Ray runtime; Dask is plain Python on the pandas/pyarrow stack the builder already uses.

Stages (the driver keeps only what is per user or per cell: extents, venues, visited cells, users, windows):

1. read: the records table (`formats.TABLES`) in blocks; each block's records (the reader's own rule) are cut into
   `partitions` buckets by a hash of the user id and written as Parquet into a scratch folder;
2. clean each partition (`clean_records`): its points' extent and its venues (for POIs from check-ins);
3. the grid from the extents; per partition: cells of the records, segments, durations and windows;
4. POIs and candidate cells from the visited cells, the split from the users; per partition: the records shard(s)
   written into the city folder, the train share of the coordinate statistics and the windows;
5. the windows in user order (as the in-process build orders them), the cells, city.json and the card.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..modeling.records_nextlocllm import decoding, sniff_sep, text_codec
from ..outputs import replacing_folder
from .build_config import BuildConfig, BuildResult, read_options, write_city_tables
from .build_steps import (city_metadata, clean_records, coordinate_moments, coordinate_statistics, fit_grid,
                          input_duration_range, kept_record_columns, poi_table, pois_and_cells, record_extent,
                          refuse_empty, refuse_no_window, split_labels, user_windows, venue_summary)
from .city_dataset import SPLITS
from .formats import TABLES
from .formats.pois import read_pois
from .report import BuildReport
from .windows import RECORDS_PATTERN, CityRecords, shard_bounds, windows_table, write_records


@dataclass
class Scratch:
    """The folders a partitioned build passes its partitions through (removed when the build ends)."""

    root: Path

    def read(self, partition: int) -> Path:
        return self.root / "read" / f"partition-{partition:05d}"

    def clean(self, partition: int) -> Path:
        return self.root / "clean" / f"partition-{partition:05d}.parquet"

    def kept(self, partition: int) -> Path:
        return self.root / "kept" / f"partition-{partition:05d}.parquet"

    def windows(self, partition: int) -> Path:
        return self.root / "kept" / f"partition-{partition:05d}.npz"


def user_partition(user_ids: pd.Series, partitions: int) -> np.ndarray:
    """The partition of each record: a hash of its user id (stable across processes and runs)."""
    hashes = pd.util.hash_pandas_object(user_ids.astype("string"), index=False).to_numpy()
    return (hashes % np.uint64(partitions)).astype(np.int64)


# ------------------------------------------------------------------------------------------ the tasks
def _read_block(frame: pd.DataFrame, table, opts, partitions: int, scratch: Scratch,
                partition_info: dict | None = None) -> pd.DataFrame:
    """Stage 1: one block of the input table -> its records, into the user partitions. Returns the block's report,
    pickled in a one-row frame (a `map_partitions` function returns frames)."""
    block = partition_info["number"]
    report = BuildReport(defer_checks=True)
    report.input_rows = len(frame)
    records = table.to_records(frame, report, opts)
    part = user_partition(records["user_id"], partitions)
    for p in np.unique(part):
        folder = scratch.read(int(p))
        folder.mkdir(parents=True, exist_ok=True)
        records[part == p].to_parquet(folder / f"block-{block:07d}.parquet", index=False)
    return pd.DataFrame({"report": pd.Series([pickle.dumps(report)], dtype=object)})


def _clean_partition(partition: int, cfg: BuildConfig, scratch: Scratch) -> dict:
    """Stage 2: clean one partition's records (in input order, as the in-process build does)."""
    report = BuildReport(defer_checks=True)
    files = sorted(scratch.read(partition).glob("block-*.parquet"))
    if not files:
        return {"report": report, "records": 0, "extent": None, "venues": None}
    records = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    report.input_users = int(records["user_id"].nunique())
    records, names = clean_records(records, cfg, report)
    records.to_parquet(scratch.clean(partition), index=False)
    return {"report": report, "records": len(records), "extent": record_extent(records) if len(records) else None,
            "venues": venue_summary(records, names) if len(records) else None}


def _read_clean_partition(partition: int, scratch: Scratch) -> tuple[pd.DataFrame, np.ndarray]:
    """Stage 2's output for stage 3: one partition's clean records and its user names (by user code)."""
    records = pd.read_parquet(scratch.clean(partition))
    names = np.asarray(pd.unique(records["user_id"]), dtype=object)  # sorted by `clean_records`, as the codes are
    return records, names


def _window_partition(partition: int, cfg: BuildConfig, grid, max_gap: float | None, scratch: Scratch) -> dict:
    """Stage 3: one partition's records on the grid, their segments, durations and windows."""
    report = BuildReport(defer_checks=True)
    records, names = _read_clean_partition(partition, scratch)
    row, col, inside = grid.locate(records["x"].to_numpy(), records["y"].to_numpy())
    report.drop("outside_grid", int((~inside).sum()))
    records = records[inside].reset_index(drop=True)
    keys = grid.key(row[inside], col[inside])
    visited, visited_records = np.unique(keys, return_counts=True)
    ucode, ts = records["ucode"].to_numpy(), records["ts"].to_numpy(dtype=np.int64)
    found = user_windows(ucode, ts, cfg, max_gap, report)
    windows = found.windows
    in_samples = np.zeros(len(records), dtype=bool)
    in_samples[windows.ravel()] = True
    columns = kept_record_columns(records, names, keys, found)  # `cell` holds the grid key until the cells exist
    pd.DataFrame(columns).to_parquet(scratch.kept(partition), index=False)
    row_in_kept = np.cumsum(found.kept) - 1
    users, per_user = np.unique(ucode[windows[:, 0]], return_counts=True)  # windows are in (user, time) order
    shards = np.asarray(shard_bounds(ucode[found.kept], cfg.shard_rows), dtype=np.int64).reshape(-1, 2)
    np.savez(scratch.windows(partition), start=row_in_kept[windows[:, 0]], target=row_in_kept[windows[:, -1]],
             shards=shards)
    return {
        "report": report, "visited": visited, "visited_records": visited_records,
        "window_users": names[users], "windows_per_user": per_user, "target_ts": ts[windows[:, -1]],
        "shards": len(shards),
        "counts": {"records_clean": len(records), "records_kept": int(found.kept.sum()),
                   "users_kept": int(found.users_kept.size), "segments_kept": found.segments_kept,
                   "records_in_samples": int(in_samples.sum()),
                   "records_window_tail": int((found.kept & ~in_samples).sum()), "clipped": found.clipped},
        "longest_segment": found.longest_segment,
    }


def _write_partition(partition: int, labels: np.ndarray, cell_keys: np.ndarray, first_shard: int, shards: int,
                     cfg: BuildConfig, scratch: Scratch, out: Path) -> dict:
    """Stage 4: one partition's records shard(s) into the city folder; its train statistics and its windows."""
    kept = pd.read_parquet(scratch.kept(partition))
    columns = {name: kept[name].to_numpy() for name in kept.columns}
    columns["cell"] = np.searchsorted(cell_keys, columns["cell"]).astype(np.int64)
    windows = np.load(scratch.windows(partition))
    write_records(out, columns, [tuple(b) for b in windows["shards"]], first=first_shard, count=shards)
    starts, targets = windows["start"], windows["target"]
    H, L = cfg.history_length, cfg.current_length
    train = starts[labels == 0]
    rows = np.unique((train[:, None] + np.arange(H + L + 1)).ravel()) if len(train) else np.zeros(0, np.int64)
    xy = np.stack([columns["x"][rows], columns["y"][rows]], axis=1)
    return {
        "moments": coordinate_moments(xy) if len(rows) else (0, None, None),
        "duration_range": input_duration_range(columns["duration"], train, H + L) if len(train) else None,
        "target_unknown": int(np.isnan(columns["duration"][targets]).sum()),
        "starts": {name: starts[labels == i] for i, name in enumerate(SPLITS)},
    }


# ------------------------------------------------------------------------------------------ the driver
@contextmanager
def dask_scheduler(scheduler: str, workers: int | None):
    """How `_compute` runs tasks: `synchronous` or `threads` (Dask's local schedulers), `processes` (a
    `dask.distributed` LocalCluster of single-threaded worker processes) or a distributed scheduler's address.

    Processes go through `distributed` rather than Dask's multiprocessing scheduler: that one sends every task's
    result back through this process (a 64 MB block of input would pass through the driver twice), while a
    distributed worker keeps what it computed for the tasks that need it."""
    if scheduler in ("synchronous", "threads"):
        yield {"scheduler": scheduler, **({"num_workers": workers} if workers else {})}
        return
    from distributed import Client, LocalCluster

    if scheduler == "processes":
        with environment_restored(), LocalCluster(n_workers=workers or os.cpu_count(), threads_per_worker=1,
                                                  processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield {"client": client}
        return
    with Client(scheduler) as client:
        yield {"client": client}


@contextmanager
def environment_restored():
    """Give back this process's environment as it was: a LocalCluster sets OMP_NUM_THREADS=1 (and more) for its
    workers in `os.environ`, which would leave the caller's torch, and every process it starts, on one thread."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _compute(tasks: list, compute: dict, description: str, show_progress: bool) -> list:
    """The results of Dask `tasks`, in order, with a progress bar of the finished tasks."""
    import dask
    from tqdm.auto import tqdm

    if "client" in compute:
        from distributed import as_completed

        futures = compute["client"].compute(tasks)
        for _ in tqdm(as_completed(futures), total=len(futures), desc=description, disable=not show_progress):
            pass
        return compute["client"].gather(futures)
    if show_progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc=description):
            return list(dask.compute(*tasks, **compute))
    return list(dask.compute(*tasks, **compute))


def _read_into_partitions(table, opts, cfg: BuildConfig, scratch: Scratch, compute: dict) -> list[BuildReport]:
    """Stage 1 over the whole input: the table's blocks read (as the in-process reader reads the whole file) and
    cut into the user partitions, block by block; returns the blocks' reports in input order."""
    import dask
    import dask.dataframe as dd

    # A block that does not decode fails in its worker; the error names the file's line, as the in-process read's.
    with decoding(table.path, table.encoding):
        if table.is_parquet:
            frames = dd.read_parquet(table.path)
        else:
            kwargs = {k: v for k, v in table.read_kwargs.items() if k != "low_memory"}  # dask reads each block whole
            kwargs.setdefault("sep", sniff_sep(table.path, table.encoding))
            # Dask infers column types from the first block: integers read as floats, so that a later block with a
            # missing value does not contradict them (the readers convert numbers themselves).
            frames = dd.read_csv(table.path, blocksize=cfg.block_size, assume_missing=True,
                                 encoding=text_codec(table.encoding), **kwargs)
        with dask.config.set({"dataframe.convert-string": False}):  # the reports stay pickled bytes
            reports = frames.map_partitions(_read_block, table, opts, cfg.partitions, scratch,
                                            meta=pd.DataFrame({"report": pd.Series([], dtype=object)}))
            done = _compute(reports.to_delayed(), compute, f"{cfg.city}: read {frames.npartitions} blocks",
                            cfg.show_progress)
    return [pickle.loads(r) for frame in done for r in frame["report"]]


def _window_order(summaries: list[dict]) -> tuple[np.ndarray, list[np.ndarray]]:
    """All users with windows (sorted names) and, for each partition, the global rank of its windows' users:
    the in-process build's order of windows is (user name, time)."""
    names = np.concatenate([s["window_users"] for s in summaries]).astype(object)
    order = np.argsort(names.astype(str), kind="stable")
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    bounds = np.cumsum([0, *(len(s["window_users"]) for s in summaries)])
    window_rank = [np.repeat(rank[b:e], s["windows_per_user"]) for s, b, e in zip(summaries, bounds[:-1], bounds[1:])]
    return names[order], window_rank


def build_partitioned(cfg: BuildConfig) -> BuildResult:
    """Build and write `cfg.output` partition by partition (`cfg.partitions` user partitions on `cfg.scheduler`);
    the caller (`build.build_and_save`) holds the output's lock and has checked it is free."""
    import dask

    cfg.validate()
    if cfg.format not in TABLES:
        raise ValueError(f"--partitions: format {cfg.format!r} is not one table read in blocks; the partitioned build "
                         f"takes {sorted(TABLES)} (build {cfg.format} in process: --partitions 0)")
    t0 = time.perf_counter()
    opts = read_options(cfg)
    table = TABLES[cfg.format](cfg.input, opts)
    report = BuildReport(city=cfg.city, format=cfg.format)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Scratch(Path(tempfile.mkdtemp(prefix=f".{output.name}.partitions-", dir=output.parent)))
    for sub in ("read", "clean", "kept"):
        (scratch.root / sub).mkdir()
    P, show = cfg.partitions, cfg.show_progress
    try:
        with dask_scheduler(cfg.scheduler, cfg.workers) as compute, replacing_folder(output) as out:
            # 1. read, into user partitions
            for r in _read_into_partitions(table, opts, cfg, scratch, compute):
                report.merge(r)
            report.check_fractions(cfg.max_invalid_fraction)
            for text in table.notes:
                report.note(text)
            # 2. clean
            cleaned = _compute([dask.delayed(_clean_partition)(p, cfg, scratch) for p in range(P)], compute,
                               f"{cfg.city}: clean {P} partitions", show)
            for c in cleaned:
                report.merge(c["report"])
            report.check_fractions(cfg.max_invalid_fraction)
            refuse_empty(sum(c["records"] for c in cleaned), report)
            extents = np.array([c["extent"] for c in cleaned if c["extent"] is not None])
            grid = fit_grid(cfg, table.grid, (extents[:, 0].min(), extents[:, 1].max(), extents[:, 2].min(),
                                              extents[:, 3].max(), extents[:, 4].min(), extents[:, 5].max()))
            # 3. grid cells, segments, windows
            live = [p for p, c in enumerate(cleaned) if c["records"]]
            max_gap = cfg.segment_gap_hours()
            found = _compute([dask.delayed(_window_partition)(p, cfg, grid, max_gap, scratch) for p in live],
                             compute, f"{cfg.city}: windows of {len(live)} partitions", show)
            for f in found:
                report.merge(f["report"])
            counts = {key: sum(f["counts"][key] for f in found) for key in found[0]["counts"]}
            report.info["records_clean"] = counts["records_clean"]
            pois, poi_source = (read_pois(cfg.pois, report, opts) if cfg.pois else (None, ""))
            venues = [c["venues"] for c in cleaned if c["venues"] is not None]
            pois, poi_source = poi_table(pois, poi_source, venues, report)
            visited, inverse = np.unique(np.concatenate([f["visited"] for f in found]), return_inverse=True)
            visited_records = np.bincount(inverse, weights=np.concatenate([f["visited_records"] for f in found]))
            cells, cell_keys, freq, city_max, poi_info = pois_and_cells(
                pois, poi_source, grid, visited, visited_records.astype(np.int64), cfg, report)
            if not sum(len(f["target_ts"]) for f in found):
                refuse_no_window(cfg, max(f["longest_segment"] for f in found))
            report.info.update({k: counts[k] for k in ("records_kept", "users_kept", "segments_kept",
                                                       "records_in_samples", "records_window_tail")})
            # 4. split, records shards, train statistics
            names, window_rank = _window_order(found)
            ranks = np.concatenate(window_rank)
            order = np.argsort(ranks, kind="stable")
            labels_in_order, boundaries = split_labels(cfg, ranks[order], names,
                                                       np.concatenate([f["target_ts"] for f in found])[order])
            labels = np.empty(len(ranks), dtype=np.int64)
            labels[order] = labels_in_order
            cut = np.cumsum([0, *(len(r) for r in window_rank)])
            first_shard = np.cumsum([0, *(f["shards"] for f in found)])
            shards = int(first_shard[-1])
            written = _compute([dask.delayed(_write_partition)(p, labels[cut[i]:cut[i + 1]], cell_keys,
                                                                int(first_shard[i]), shards, cfg, scratch, out)
                                for i, p in enumerate(live)], compute, f"{cfg.city}: write {len(live)} partitions",
                               show)
            # 5. windows in user order, statistics, metadata
            offsets = np.cumsum([0, *(f["counts"]["records_kept"] for f in found)])
            windows, split_users = {}, {}
            for i, name in enumerate(SPLITS):
                rank = np.concatenate([r[labels[cut[k]:cut[k + 1]] == i] for k, r in enumerate(window_rank)])
                start = np.concatenate([w["starts"][name] + offsets[k] for k, w in enumerate(written)])
                order = np.argsort(rank, kind="stable")
                windows[name] = windows_table(cfg.city, names[rank[order]], start[order])
                split_users[name] = int(np.unique(rank).size)
            if len(windows["train"]) == 0:
                raise ValueError("the training split is empty")
            mean, std = coordinate_statistics([w["moments"] for w in written], report)
            ranges = [w["duration_range"] for w in written if w["duration_range"] is not None]
            duration_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))
            report.info["durations"] = {"cap_hours": cfg.max_duration_hours or None, "clipped": counts["clipped"],
                                        "target_unknown": sum(w["target_unknown"] for w in written)}
            report.info["samples"] = {name: len(windows[name]) for name in SPLITS}
            report.info["split_users"] = split_users
            report.info["seconds"] = time.perf_counter() - t0
            metadata = city_metadata(cfg, report, table.source, poi_source, poi_info, grid, city_max, mean, std,
                                     duration_range, shards, boundaries, max_gap)
            write_city_tables(out, windows, cells, metadata)
    finally:
        shutil.rmtree(scratch.root, ignore_errors=True)
    files = sorted(output.glob(RECORDS_PATTERN))
    records = CityRecords(files, freq, cfg.history_length, cfg.current_length)
    bounds = [(int(b), int(e)) for b, e in zip(records.offsets[:-1], records.offsets[1:])]
    return BuildResult(windows, records, None, bounds, cells, metadata, report)
