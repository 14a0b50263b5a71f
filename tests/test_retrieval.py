"""The KD-tree retriever against a brute-force ranking, and its safetensors + JSON round trip."""

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import make_retriever, random_cells

from nextlocllm_hf import CityRetriever
from nextlocllm_hf.modeling.retrieval_nextlocllm import (
    RETRIEVERS_CONFIG_NAME,
    RETRIEVERS_WEIGHTS_NAME,
    load_retrievers,
    save_retrievers,
)


def brute_force_top_k(xy: np.ndarray, cell_ids: np.ndarray, points: np.ndarray, k: int):
    distances = np.linalg.norm(points[:, None, :] - xy[None, :, :], axis=-1)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return cell_ids[order], np.take_along_axis(distances, order, axis=1)


@pytest.mark.parametrize("k", [1, 5, 10, 37])
def test_top_k_equals_brute_force_on_random_cells(k):
    rng = np.random.default_rng(k)
    # Continuous random centroids and shuffled non-contiguous ids: no distance ties, no id/row coincidence.
    xy = rng.uniform([-8.3e6, 4.9e6], [-8.2e6, 5.0e6], size=(400, 2))
    cell_ids = rng.permutation(10_000)[:400]
    retriever = CityRetriever("rand", cell_ids, xy, np.zeros((400, 2)), rng.random((400, 5)), xy.mean(0), xy.std(0))
    points = rng.uniform([-8.31e6, 4.89e6], [-8.19e6, 5.01e6], size=(300, 2))
    ids, distances = retriever.query(points, k)
    expected_ids, expected_distances = brute_force_top_k(xy, cell_ids, points, k)
    assert ids.shape == (300, k) and distances.shape == (300, k)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-12)


def test_query_rejects_k_larger_than_city_and_bad_points():
    retriever = make_retriever("tiny", num_cells=7)
    with pytest.raises(ValueError, match=r"k=8: .*7 candidate cells.*'tiny'"):
        retriever.query(np.zeros((1, 2)), 8)
    with pytest.raises(ValueError, match="k=0"):
        retriever.query(np.zeros((1, 2)), 0)
    with pytest.raises(ValueError, match="NaN or inf"):
        retriever.query(np.array([[np.nan, 0.0]]), 1)


def test_constructor_names_bad_fields():
    cells = random_cells(5)
    with pytest.raises(ValueError, match="coordinate_std"):
        CityRetriever.from_cells("c", cells, [0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"lack columns \['poi_frequency'\]"):
        CityRetriever.from_cells("c", cells.drop(columns="poi_frequency"), [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="not unique"):
        CityRetriever.from_cells("c", cells.assign(cell_id=0), [0.0, 0.0], [1.0, 1.0])


def test_several_cities_round_trip(tmp_path):
    cities = {
        "nyc": make_retriever("nyc", 60, seed=1),
        "calgary": make_retriever("calgary", 25, seed=2, centre=(-12_710_000.0, 6_610_000.0)),
    }
    save_retrievers(cities, tmp_path)
    loaded = load_retrievers(str(tmp_path / RETRIEVERS_CONFIG_NAME), str(tmp_path / RETRIEVERS_WEIGHTS_NAME))
    assert list(loaded) == ["nyc", "calgary"]
    points = np.random.default_rng(0).normal(cities["calgary"].xy.mean(0), 2000, size=(20, 2))
    for name, original in cities.items():
        restored = loaded[name]
        for field in ("cell_ids", "xy", "latlon", "poi_frequency", "coordinate_mean", "coordinate_std"):
            np.testing.assert_array_equal(getattr(restored, field), getattr(original, field))
        np.testing.assert_array_equal(restored.query(points, 5)[0], original.query(points, 5)[0])


def test_damaged_retriever_files_give_clear_errors(tmp_path):
    save_retrievers({"nyc": make_retriever("nyc")}, tmp_path)
    weights = tmp_path / RETRIEVERS_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read retriever arrays"):
        load_retrievers(str(tmp_path / RETRIEVERS_CONFIG_NAME), str(weights))
    with pytest.raises(ValueError, match="is missing"):
        load_retrievers(str(tmp_path / RETRIEVERS_CONFIG_NAME), None)
    (tmp_path / RETRIEVERS_CONFIG_NAME).write_text(json.dumps({"nothing": []}))
    with pytest.raises(ValueError, match="not a valid retrievers.json"):
        load_retrievers(str(tmp_path / RETRIEVERS_CONFIG_NAME), str(weights))


# ------------------------------------------------------------------------------------------------------ the grid
@pytest.fixture(scope="module")
def built_city(tmp_path_factory):
    from nextlocllm_hf.data import BuildConfig, build_and_save, load_city_splits

    folder = tmp_path_factory.mktemp("grid")
    # candidates = visited cells: the grid has holes (squares of the city that are no candidate)
    build_and_save(BuildConfig(city="gridcity", format="synthetic", output=str(folder), seed=3, candidates="visited",
                               synthetic={"n_users": 8, "records_per_user": 60, "extent_km": 4.0}, show_progress=False))
    return load_city_splits(folder)


def test_the_grid_travels_with_the_retriever_and_places_points_like_the_builder(built_city, tmp_path):
    from nextlocllm_hf.columns import rows_to_arrays

    retriever = built_city.retriever
    assert retriever.grid is not None and retriever.grid.to_dict() == built_city.metadata["grid"]
    save_retrievers({retriever.name: retriever}, tmp_path)
    loaded = load_retrievers(str(tmp_path / RETRIEVERS_CONFIG_NAME), str(tmp_path / RETRIEVERS_WEIGHTS_NAME))
    assert loaded[retriever.name].grid == retriever.grid
    # Every record of every sample lies in the cell the builder gave it.
    arrays = rows_to_arrays(built_city.splits["train"], ("history_coordinates", "history_cell"))
    rows, inside = loaded[retriever.name].locate(arrays["history_coordinates"].reshape(-1, 2))
    assert inside.all()
    np.testing.assert_array_equal(retriever.cell_ids[rows], arrays["history_cell"].reshape(-1))


def test_a_retriever_file_without_the_grid_reads_the_cell_size_from_the_centroids(built_city, tmp_path):
    """Files saved before the grid was stored: the centroids' spacing gives the same cells inside the city."""
    retriever = built_city.retriever
    save_retrievers({retriever.name: retriever}, tmp_path)
    index = json.loads((tmp_path / RETRIEVERS_CONFIG_NAME).read_text())
    for city in index["cities"]:
        del city["grid"]
    (tmp_path / RETRIEVERS_CONFIG_NAME).write_text(json.dumps(index))
    old = load_retrievers(str(tmp_path / RETRIEVERS_CONFIG_NAME), str(tmp_path / RETRIEVERS_WEIGHTS_NAME))
    old = old[retriever.name]
    assert old.grid is None
    assert old.cell_spacing == pytest.approx(retriever.grid.cell_size_projected, abs=2e-3)
    size = retriever.grid.cell_size_projected
    rng = np.random.default_rng(0)
    # points well inside grid squares (10 cm from any edge), over and around the city's cells
    low, high = retriever.xy.min(axis=0) - 2 * size, retriever.xy.max(axis=0) + 2 * size
    points = rng.uniform(low, high, size=(4000, 2))
    offset = (points - [retriever.grid.origin_x, retriever.grid.origin_y]) % size
    points = points[((offset > 0.1) & (offset < size - 0.1)).all(axis=1)]
    rows, inside = retriever.locate(points)
    old_rows, old_inside = old.locate(points)
    known = inside & old_inside
    assert known.sum() > 100 and (rows[known] >= 0).any() and (rows[known] < 0).any()
    np.testing.assert_array_equal(old_rows[known], rows[known])


def test_the_duration_cap_travels_with_the_retriever(built_city, tmp_path):
    """The cap the city was built with (city.json) reaches inference; no cap stays None; older files get the
    builder's default; a bad cap names the field."""
    retriever = built_city.retriever
    assert retriever.max_duration_hours == built_city.metadata["max_duration_hours"] == 24.0
    uncapped = CityRetriever.from_city({**built_city.metadata, "city": "uncapped", "max_duration_hours": None},
                                       built_city.cells)
    six = CityRetriever.from_city({**built_city.metadata, "city": "six", "max_duration_hours": 6.0},
                                  built_city.cells)
    assert uncapped.max_duration_hours is None and six.max_duration_hours == 6.0
    save_retrievers({r.name: r for r in (uncapped, six)}, tmp_path)
    loaded = load_retrievers(str(tmp_path / RETRIEVERS_CONFIG_NAME), str(tmp_path / RETRIEVERS_WEIGHTS_NAME))
    assert loaded["uncapped"].max_duration_hours is None and loaded["six"].max_duration_hours == 6.0
    index = json.loads((tmp_path / RETRIEVERS_CONFIG_NAME).read_text())
    for city in index["cities"]:
        del city["max_duration_hours"]  # a file written before the cap was stored
    (tmp_path / RETRIEVERS_CONFIG_NAME).write_text(json.dumps(index))
    older = load_retrievers(str(tmp_path / RETRIEVERS_CONFIG_NAME), str(tmp_path / RETRIEVERS_WEIGHTS_NAME))
    assert {r.max_duration_hours for r in older.values()} == {24.0}
    with pytest.raises(ValueError, match=r"city 'bad': max_duration_hours=-1.0 must be positive hours or None"):
        CityRetriever.from_city({**built_city.metadata, "city": "bad", "max_duration_hours": -1.0}, built_city.cells)


def test_a_city_folder_reads_as_the_retriever_the_dataset_holds(built_city, tmp_path):
    """`from_folder` (inference in a new city) reads what `load_city_splits` holds: the same cells, statistics, grid,
    cap, POI table by cell id and class names, which survive a save and load; a folder that is no built city, and
    class names that are no list of names, are refused by name."""
    retriever, loaded = built_city.retriever, CityRetriever.from_folder(built_city.path)
    for field in ("cell_ids", "xy", "latlon", "poi_frequency", "coordinate_mean", "coordinate_std", "poi_table"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(retriever, field), err_msg=field)
    assert loaded.grid == retriever.grid and loaded.max_duration_hours == retriever.max_duration_hours
    assert loaded.poi_classes == retriever.poi_classes == built_city.metadata["poi_classes"]
    for cell, frequency in zip(retriever.cell_ids, retriever.poi_frequency):
        np.testing.assert_array_equal(retriever.poi_table[cell], frequency)
    save_retrievers({retriever.name: retriever}, tmp_path)
    again = load_retrievers(str(tmp_path / RETRIEVERS_CONFIG_NAME), str(tmp_path / RETRIEVERS_WEIGHTS_NAME))
    assert again[retriever.name].poi_classes == retriever.poi_classes
    with pytest.raises(FileNotFoundError, match=r"is not a built city folder \(missing \['city.json', 'cells.parquet'\]"):
        CityRetriever.from_folder(tmp_path)
    with pytest.raises(ValueError, match=r"poi_classes='abcde' must be a list of class names"):
        CityRetriever.from_city({**built_city.metadata, "poi_classes": "abcde"}, built_city.cells)


def test_what_a_person_reads_about_a_cell_travels_with_the_retriever(built_city, tmp_path):
    """`poi_counts` and `top_categories` come from a city's cells table and survive a save and load; a city or a
    retrievers file without them (built or saved before they were kept, or POIs without names) loads with None; a
    table that disagrees with the cells is refused by name."""
    retriever = built_city.retriever
    np.testing.assert_array_equal(retriever.poi_counts, np.stack(built_city.cells["poi_counts"]))
    assert retriever.top_categories is None  # synthetic POIs carry classes, no category names
    names = [["Coffee Shop", "Bar"] if index % 3 == 0 else [] for index in range(retriever.num_cells)]
    named = CityRetriever.from_city({**built_city.metadata, "city": "named"},
                                    built_city.cells.assign(top_categories=names))
    assert named.top_categories == names
    older = CityRetriever.from_city({**built_city.metadata, "city": "older"},
                                    built_city.cells.drop(columns=["poi_counts", "top_categories"]))
    assert older.poi_counts is None and older.top_categories is None
    save_retrievers({r.name: r for r in (named, older)}, tmp_path)
    config, weights = str(tmp_path / RETRIEVERS_CONFIG_NAME), str(tmp_path / RETRIEVERS_WEIGHTS_NAME)
    loaded = load_retrievers(config, weights)
    assert loaded["named"].top_categories == names and loaded["older"].top_categories is None
    np.testing.assert_array_equal(loaded["named"].poi_counts, retriever.poi_counts)
    assert loaded["older"].poi_counts is None
    index = json.loads((tmp_path / RETRIEVERS_CONFIG_NAME).read_text())
    del index["cities"][0]["category_names"]
    (tmp_path / RETRIEVERS_CONFIG_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"city 'named' has top_categories codes beyond its category_names \(None"):
        load_retrievers(config, weights)
    with pytest.raises(ValueError, match=r"city 'bad': top_categories holds 2 cells, expected"):
        replace(retriever, name="bad", top_categories=[["Bar"], []])
    with pytest.raises(ValueError, match=r"city 'bad': poi_counts has shape \(\d+, 4\), expected \(\d+, 5\)"):
        replace(retriever, name="bad", poi_counts=retriever.poi_counts[:, :4])
