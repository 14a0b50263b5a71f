"""Taxonomy: default classes, shipped mappings, unmapped names reported."""

import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from nextlocllm_hf.data.taxonomy import DEFAULT_POI_CLASSES, CategoryMapping, OsmMapping, normalize_name


def test_default_classes_in_paper_order():
    assert list(DEFAULT_POI_CLASSES) == ["Entertainment", "Commercial", "Education", "Public Service", "Residential"]


def test_default_classes_match_model_config():
    mod = pytest.importorskip("nextlocllm_hf.modeling.configuration_nextlocllm")
    assert list(mod.NextLocLLMConfig().poi_class_names) == list(DEFAULT_POI_CLASSES)


def test_shipped_files_use_default_classes_and_are_consistent():
    for name in ("foursquare", "osm"):
        path = resources.files("nextlocllm_hf.data").joinpath("mappings", f"{name}.json")
        d = json.loads(path.read_text(encoding="utf-8"))
        assert d["classes"] == list(DEFAULT_POI_CLASSES)
    m = CategoryMapping.foursquare()  # raises if a name is in two classes
    assert len(m.names) > 250


@pytest.mark.parametrize("name,cls", [
    ("Coffee Shop", "Commercial"), ("Home (private)", "Residential"), ("Subway", "Public Service"),
    ("University", "Education"), ("Park", "Entertainment"), ("Bar", "Entertainment"), ("Office", "Commercial"),
    ("Ramen /  Noodle House", "Commercial"), ("caf\x1a\x1a", "Commercial"), ("  gym / FITNESS center ", "Entertainment"),
    ("Residential", "Residential"),
])
def test_foursquare_lookup(name, cls):
    m = CategoryMapping.foursquare()
    assert m.classes[m.lookup(name)] == cls


def test_unmapped_names_counted_and_root_fallback():
    m = CategoryMapping.foursquare()
    cats = pd.Series(["Coffee Shop", "Moon Base", "Moon Base", None, "", "Alien Bar"])
    roots = pd.Series(["Food", "Travel & Transport", "", None, "", "Nightlife Spot"])
    idx, st = m.map(cats)
    assert idx[0] == 1 and (idx[1:] == -1).all()
    assert st["unmapped"] == {"Moon Base": 2, "<missing>": 2, "Alien Bar": 1}
    idx, st = m.map(cats, roots)
    assert list(idx) == [1, 3, -1, -1, -1, 0]
    assert st["via_root"] == 2 and st["unmapped"] == {"Moon Base": 1, "<missing>": 2}


def test_extended_and_bad_mapping(tmp_path):
    p = tmp_path / "map.json"
    p.write_text(json.dumps({"classes": list(DEFAULT_POI_CLASSES), "names": {"Moon Base": "Education"}}))
    m = CategoryMapping.foursquare().extended(CategoryMapping.from_json(p))
    assert m.lookup("moon base") == 2 and m.lookup("Coffee Shop") == 1
    p.write_text(json.dumps({"classes": list(DEFAULT_POI_CLASSES), "names": {"Moon Base": "Space"}}))
    with pytest.raises(ValueError, match="Space"):
        CategoryMapping.from_json(p)


def test_osm_mapping():
    m = OsmMapping.from_json()
    df = pd.DataFrame({
        "amenity": ["restaurant", "school", None, None, "hospital", None, "bench_of_mystery"],
        "shop": [None, None, "bakery", None, None, None, None],
        "tourism": [None, None, None, "hotel", None, None, None],
        "leisure": [None, None, None, None, None, "park", None],
    })
    idx, st = m.map(df)
    assert list(idx) == [1, 2, 1, 4, 3, 0, -1]
    assert st["unmapped"] == {"amenity=bench_of_mystery": 1}


def test_normalize_name():
    assert normalize_name("  Ramen /  Noodle\tHouse ") == "ramen / noodle house"
    assert normalize_name("Café") == normalize_name("Cafe\u0301")
    assert np.all(np.array([normalize_name(c) for c in DEFAULT_POI_CLASSES]) == [c.casefold() for c in DEFAULT_POI_CLASSES])
