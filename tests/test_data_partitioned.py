"""The partitioned build (Dask, by user partitions) builds the city the in-process build builds, field by field."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from nextlocllm_hf.data import load_city_splits
from nextlocllm_hf.data.build import BuildConfig, build_and_save
from nextlocllm_hf.data.city_dataset import SPLITS
from nextlocllm_hf.data.synthetic import SyntheticCityParams, generate_synthetic_city

# What may differ: the layout of the records files, timings, the output folder, the build options that say how it
# was built, which example of a drop reason is shown, and the statistics' last digits (summed per partition).
LAYOUT = {"records_files", "report.seconds", "source.build.output", "source.build.partitions",
          "source.build.scheduler", "source.build.workers", "source.build.block_size", "report.drop_examples"}
STATISTICS = {"coordinate_mean", "coordinate_std"}


@pytest.fixture(scope="module")
def checkins(tmp_path_factory):
    """A synthetic city written as a check-in CSV (UTC epoch seconds and offsets) and its POI file."""
    folder = tmp_path_factory.mktemp("checkins")
    records, pois, _ = generate_synthetic_city(SyntheticCityParams(city="part", n_users=48, records_per_user=120, seed=5))
    frame = pd.DataFrame({"user_id": records["user_id"], "utc_time": records["ts"],
                          "tz_offset_min": (records["local_ts"] - records["ts"]) // 60, "lat": records["lat"],
                          "lon": records["lon"], "venue_id": records["venue_id"], "category": records["category"]})
    frame.to_csv(folder / "checkins.csv", index=False)
    pois.to_csv(folder / "pois.csv", index=False)
    return folder


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def assert_same_city(single, partitioned):
    for split in SPLITS:
        a, b = single.samples(split), partitioned.samples(split)
        assert a.num_rows == b.num_rows
        assert a.num_rows > 0 or split != "train"
        for name in a.schema.names:
            assert a.column(name).equals(b.column(name)), f"{split}: {name} differs"
    pd.testing.assert_frame_equal(single.cells, partitioned.cells)
    a = _flat(json.loads(json.dumps(single.metadata, default=str)))
    b = _flat(json.loads(json.dumps(partitioned.metadata, default=str)))
    assert set(a) == set(b)
    differ = {key for key in a if a[key] != b[key]} - LAYOUT
    assert differ <= STATISTICS, differ
    for key in STATISTICS:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-9)


def _config(checkins, output, **options) -> BuildConfig:
    options.setdefault("input", str(checkins / "checkins.csv"))
    return BuildConfig(city="part", format="csv", output=str(output), show_progress=False, shard_rows=1500, **options)


@pytest.mark.parametrize("split", ["user", "time"])
def test_partitions_equal_the_single_process_build(checkins, tmp_path, split):
    """Three partitions, the input read in many blocks, POIs from the check-ins' venues: the same samples, cells and
    city.json; the folder loads like any city."""
    single = build_and_save(_config(checkins, tmp_path / "single", split=split))
    partitioned = build_and_save(_config(checkins, tmp_path / "parts", split=split, partitions=3,
                                         scheduler="synchronous", block_size="100kB"))
    assert partitioned.metadata["report"]["pois"]["source"] == "distinct venues of the check-ins"
    assert partitioned.metadata["records_files"] > single.metadata["records_files"] > 1
    assert_same_city(single, partitioned)
    city = load_city_splits(tmp_path / "parts")
    assert city.splits["test"][3] == load_city_splits(tmp_path / "single").splits["test"][3]
    partitioned.save(tmp_path / "copy", show_progress=False)  # its records are files already: copied
    assert load_city_splits(tmp_path / "copy").splits["train"][-1] == city.splits["train"][-1]
    assert not list(tmp_path.glob(".parts.partitions-*"))  # the scratch folder is gone


@pytest.mark.timeout(300)  # worker processes: bounded below pytest's 600 s, reaped by conftest
def test_partitions_on_local_processes_with_a_poi_file(checkins, tmp_path):
    options = {"pois": str(checkins / "pois.csv")}
    single = build_and_save(_config(checkins, tmp_path / "single", **options))
    environment = dict(os.environ)
    partitioned = build_and_save(_config(checkins, tmp_path / "parts", partitions=4, scheduler="processes", workers=2,
                                         block_size="150kB", **options))
    assert dict(os.environ) == environment  # the local cluster's OMP_NUM_THREADS=1 stays with its workers
    assert_same_city(single, partitioned)


@pytest.mark.timeout(300)  # worker processes: bounded below pytest's 600 s, reaped by conftest
def test_partitions_on_a_dask_cluster(checkins, tmp_path):
    """The same build through a `distributed` scheduler's address (a local cluster of two worker processes)."""
    import distributed

    from nextlocllm_hf.data.partitioned import environment_restored

    with environment_restored(), distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                          dashboard_address=None) as cluster:
        partitioned = build_and_save(_config(checkins, tmp_path / "parts", partitions=3,
                                             scheduler=cluster.scheduler_address, block_size="200kB"))
    assert_same_city(build_and_save(_config(checkins, tmp_path / "single")), partitioned)


def test_invalid_rows_are_counted_over_the_whole_input(checkins, tmp_path):
    """One block all invalid is within the allowed fraction of the whole input: dropped and counted, as in process;
    above the fraction, the error names the field."""
    frame = pd.read_csv(checkins / "checkins.csv", dtype={"user_id": str, "venue_id": str})
    bad = frame.copy()
    bad.loc[: len(frame) // 25, "lat"] = 123.0  # 4 % of the rows, all in the first blocks
    bad.to_csv(tmp_path / "bad.csv", index=False)
    options = {"input": str(tmp_path / "bad.csv")}
    single = build_and_save(_config(checkins, tmp_path / "single", **options))
    partitioned = build_and_save(_config(checkins, tmp_path / "parts", partitions=2, scheduler="synchronous",
                                         block_size="50kB", **options))
    assert partitioned.metadata["counts"]["drops"]["records"]["invalid_coordinates"] == len(frame) // 25 + 1
    assert_same_city(single, partitioned)
    with pytest.raises(ValueError, match=r"invalid_coordinates: \d+ of \d+ rows have an invalid 'latitude/longitude'"):
        build_and_save(_config(checkins, tmp_path / "strict", partitions=2, scheduler="synchronous",
                               block_size="50kB", max_invalid_fraction=0.01, **options))
    assert not (tmp_path / "strict").exists()


def test_formats_that_are_not_one_table_are_refused(tmp_path):
    with pytest.raises(ValueError, match="format 'synthetic' is not one table read in blocks"):
        build_and_save(BuildConfig(city="s", format="synthetic", output=str(tmp_path / "s"), partitions=2,
                                   show_progress=False))
    with pytest.raises(ValueError, match=r"partitions=-1"):
        BuildConfig(city="s", format="synthetic", partitions=-1).validate()
    with pytest.raises(ValueError, match=r"scheduler='proceses': expected synchronous, threads, processes or"):
        BuildConfig(city="s", format="synthetic", scheduler="proceses").validate()
