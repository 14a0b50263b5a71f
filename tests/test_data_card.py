"""A built city folder carries a dataset card: huggingface_hub parses it, `datasets` follows its configs, and it says
what the data is (license as given, fields with units, POI class order, build options, counts)."""

import re

import pytest
from huggingface_hub import DatasetCard

from nextlocllm_hf.data import BuildConfig, build_and_save, load_city_splits
from nextlocllm_hf.data.card import field_description
from nextlocllm_hf.data.features import city_features

CITATION = "@article{demo2026, title={A demo}, year={2026}}"


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    folder = tmp_path_factory.mktemp("carded") / "town"
    build_and_save(BuildConfig(city="town", format="synthetic", output=str(folder), seed=3, show_progress=False,
                               history_length=6, current_length=2,
                               synthetic={"n_users": 14, "records_per_user": 40, "extent_km": 3.0},
                               license="cc-by-4.0", license_terms="Attribute the demo authors.", citation=CITATION))
    return folder


def test_the_card_parses_with_huggingface_hub_and_says_what_the_data_is(city):
    card = DatasetCard.load(city / "README.md", repo_type="dataset")
    metadata = load_city_splits(city).metadata
    assert card.data.license == "cc-by-4.0" and "synthetic" in card.data.tags
    assert card.data.size_categories == ["1K<n<10K" if sum(metadata["counts"]["samples"].values()) >= 1000
                                         else "n<1K"]
    assert card.data.configs == [{"config_name": "town", "data_files": [
        {"split": split, "path": f"{split}.parquet"} for split in ("train", "validation", "test")]}]
    assert "Terms: Attribute the demo authors." in card.text and CITATION in card.text
    assert "0: Entertainment, 1: Commercial, 2: Education, 3: Public Service, 4: Residential" in card.text
    assert f"train {metadata['counts']['samples']['train']:,}" in card.text
    assert "| `history_length` | `6` |" in card.text and "| `current_length` | `2` |" in card.text
    for field, feature in city_features(6, 2, 5).items():
        assert f"| `{field}` |" in card.text and field_description(field) in card.text
    assert "/tmp" not in card.text and str(city) not in card.text  # no path of the builder's machine


def test_datasets_loads_the_folder_through_the_card_configs(city, tmp_path):
    from datasets import Dataset, load_dataset

    loaded = load_dataset(str(city), "town", cache_dir=str(tmp_path / "cache"))
    local = load_city_splits(city)
    assert sorted(loaded) == ["test", "train", "validation"]
    for split, dataset in local.splits.items():  # the windows
        assert loaded[split].to_list() == dataset.to_list()
    records = [Dataset.from_file(str(path)) for path in sorted(city.glob("records-*.arrow"))]
    assert sum(r.num_rows for r in records) == local.records.num_records
    assert records[0].column_names == ["user_id", "ts", "x", "y", "day", "hour", "duration", "cell"]


def test_every_sample_field_has_a_description():
    for field in city_features(40, 5, 5):
        assert field_description(field)
    with pytest.raises(KeyError):
        field_description("history_colour")


def test_a_rebuild_with_overwrite_replaces_the_card(city):
    build_and_save(BuildConfig(city="town", format="synthetic", output=str(city), seed=3, show_progress=False,
                               history_length=6, current_length=2, overwrite=True,
                               synthetic={"n_users": 14, "records_per_user": 40, "extent_km": 3.0}))
    card = DatasetCard.load(city / "README.md", repo_type="dataset")
    assert card.data.license == "unknown" and "Terms:" not in card.text


@pytest.mark.parametrize("license", ["CC BY 4.0", "", "cc-by/4.0"])
def test_a_license_that_is_no_hub_id_is_refused_before_building(tmp_path, license):
    with pytest.raises(ValueError, match=re.escape(f"license={license!r}")):
        build_and_save(BuildConfig(city="x", format="synthetic", output=str(tmp_path / "x"), license=license,
                                   show_progress=False))
    assert not (tmp_path / "x").exists()
