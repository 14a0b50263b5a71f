"""City format 2: records stored once, samples as windows over them, gathered on the fly equal to the samples
format 1 stored, field by field."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from reference_samples import assemble_samples

from nextlocllm_hf.batching import CitySamples
from nextlocllm_hf.columns import arrow_to_numpy, rows_to_arrays
from nextlocllm_hf.data import BuildConfig, build_and_save, load_cities, load_city_splits
from nextlocllm_hf.data.city_dataset import SPLITS
from nextlocllm_hf.data.features import city_features
from nextlocllm_hf.data.windows import RECORDS_PATTERN, SAMPLE_FIELDS, CityRecords, shard_bounds

H, L = 6, 2
W = H + L + 1


def build(folder, city: str = "win", seed: int = 5, **options):
    config = BuildConfig(city=city, format="synthetic", seed=seed, output=str(folder), show_progress=False,
                         history_length=H, current_length=L, stride=1, shard_rows=150,
                         synthetic={"n_users": 14, "records_per_user": 40}, **options)
    return build_and_save(config)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("windows") / "win"
    return folder, build(folder)


def format_1_samples(result) -> dict[str, pa.Table]:
    """What format 1 stored: `assemble_samples` over the same records (the reference implementation)."""
    records, columns = result.records, result.record_columns
    rec = {"user": np.asarray(columns["user_id"], dtype=object), "x": columns["x"], "y": columns["y"],
           "day": columns["day"], "hour": columns["hour"], "duration": columns["duration"], "ts": columns["ts"],
           "cell": columns["cell"], "poi": records.poi_frequency.astype(np.float64)[columns["cell"]]}
    features = city_features(H, L, records.poi_frequency.shape[1])
    out = {}
    for split, windows in result.windows.items():
        idx = windows.column("start").to_numpy()[:, None] + np.arange(W)
        out[split], _ = assemble_samples(idx, result.metadata["city"], rec, H, L, features)
    return out


def test_gathered_samples_equal_format_1_samples_field_by_field(built):
    folder, result = built
    reference = format_1_samples(result)
    city = load_city_splits(folder)
    assert len(list(folder.glob(RECORDS_PATTERN))) == result.metadata["records_files"] > 2  # several shards
    for split in SPLITS:
        expected = reference[split]
        assert city.splits[split].num_rows == expected.num_rows > 0
        gathered = rows_to_arrays(city.splits[split], expected.column_names)
        for name in expected.column_names:
            want = arrow_to_numpy(expected.column(name), name)
            assert gathered[name].dtype == want.dtype or name in ("city", "user_id"), name
            np.testing.assert_array_equal(gathered[name], want, err_msg=f"{split}/{name}")
        # Row access through the datasets transform shows the same sample.
        row = city.splits[split][3]
        assert row == expected.slice(3, 1).to_pylist()[0]
        assert result.samples(split).equals(expected)


def test_records_are_stored_once_and_each_window_is_one_users(built):
    folder, result = built
    city = load_city_splits(folder)
    kept = city.metadata["counts"]["records"]["kept"]
    assert city.records.num_records == kept
    samples = sum(city.metadata["counts"]["samples"].values())
    assert samples > kept / 2  # stride 1: format 1 would have stored every record about W times
    users = np.concatenate([pa.ipc.open_stream(pa.memory_map(str(p))).read_all().column("user_id").to_numpy(
        zero_copy_only=False) for p in sorted(folder.glob(RECORDS_PATTERN))])
    for split in SPLITS:
        arrays = rows_to_arrays(city.splits[split], ["user_id", "start"])
        window_users = users[arrays["start"][:, None] + np.arange(W)]
        assert (window_users == arrays["user_id"][:, None]).all()


def test_shards_cut_between_users_and_a_window_never_crosses_one():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), rng.integers(1, 30, 50))
    for max_rows in (1, 7, 40, 10_000):
        bounds = shard_bounds(users, max_rows)
        assert bounds[0][0] == 0 and bounds[-1][1] == len(users)
        assert all(end == next_begin for (_, end), (next_begin, _) in zip(bounds, bounds[1:]))
        for begin, end in bounds:
            assert begin == 0 or users[begin] != users[begin - 1]  # a new user starts every shard
            assert end - begin <= max_rows or len(np.unique(users[begin:end])) == 1


def test_city_samples_gather_batches_and_pickle_for_workers(built):
    folder, result = built
    city = load_city_splits(folder)
    samples = CitySamples(city.splits["train"], {city.name: city.retriever}, task_mode="at_time")
    rows = [5, 0, len(samples) - 1, 5]
    batch = samples.__getitems__(rows)
    arrays = rows_to_arrays(city.splits["train"].select(rows), SAMPLE_FIELDS)
    for part in ("history", "current"):
        for field in ("coordinates", "day", "hour", "duration", "poi", "cell"):
            assert torch.equal(batch[f"{part}_{field}"], torch.from_numpy(arrays[f"{part}_{field}"]))
    assert torch.equal(batch["labels"], torch.from_numpy(arrays["target_coordinates"]))
    assert torch.equal(batch["target_time_gap"], torch.from_numpy(arrays["target_time_gap"]))
    assert batch["city_index"].tolist() == [0] * 4 and samples.city_names == [city.name]
    assert "coordinate_mean" not in batch  # the model reads the statistics from the city's retriever
    clone = pickle.loads(pickle.dumps(samples))  # what a DataLoader worker gets: the records reopened, not copied
    assert "_shards" not in pickle.loads(pickle.dumps(city.records)).__getstate__()
    for name, value in clone.__getitems__(rows).items():
        assert torch.equal(value, batch[name]), name


def test_cities_concatenate_with_their_own_records(built, tmp_path):
    folder, _ = built
    other = tmp_path / "other"
    build(other, city="other", seed=6)
    multi = load_cities([folder, other])
    arrays = rows_to_arrays(multi.splits["test"], ["city", "target_coordinates"])
    for name in ("win", "other"):
        own = rows_to_arrays(multi[name].splits["test"], ["target_coordinates"])["target_coordinates"]
        np.testing.assert_array_equal(arrays["target_coordinates"][arrays["city"] == name], own)
    shuffled = multi.splits["train"].shuffle(seed=0).select(range(5))  # datasets keeps the view
    assert set(shuffled[:]) >= set(SAMPLE_FIELDS)


def test_a_format_1_city_or_missing_records_are_refused_by_name(built, tmp_path):
    folder, _ = built
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    metadata = json.loads((old / "city.json").read_text())
    (old / "city.json").write_text(json.dumps({**metadata, "format_version": 1}))
    with pytest.raises(ValueError, match="format_version 1, this package reads 2 .*rebuild it with nextlocllm-build-city"):
        load_city_splits(old)
    (old / "city.json").write_text(json.dumps(metadata))
    next(iter(sorted(old.glob(RECORDS_PATTERN)))).unlink()
    with pytest.raises(FileNotFoundError, match=r"records-\*\.arrow \(\d+ of \d+ files\)"):
        load_city_splits(old)


def test_a_window_outside_the_records_is_an_error(built):
    _, result = built
    records: CityRecords = result.records
    with pytest.raises(ValueError, match=f"window start {records.num_records} is outside the"):
        records.gather(np.array([0, records.num_records]))
    with pytest.raises(ValueError, match="unknown sample fields"):
        records.gather(np.array([0]), ["history_speed"])
