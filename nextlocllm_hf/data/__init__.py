"""City datasets for NextLocLLM: build (``dataset_scripts/build_city.py``) and load.

Public API::

    from nextlocllm_hf.data import load_city_splits, load_cities, DEFAULT_POI_CLASSES
    city = load_city_splits("path/to/nyc")      # CityDataset: .name .splits .cells .metadata .retriever
    multi = load_cities(["data/nyc", "data/calgary"])   # .splits concatenated, .cities, .retrievers

Heavier submodules (``datasets``) are imported lazily.
"""

from __future__ import annotations

import importlib

from .taxonomy import DEFAULT_POI_CLASSES

_LAZY = {
    "load_city_splits": "city_dataset",
    "load_cities": "city_dataset",
    "CityDataset": "city_dataset",
    "MultiCityDataset": "city_dataset",
    "BuildConfig": "build_config",
    "BuildResult": "build_config",
    "build_city": "build",
    "build_and_save": "build",
    "city_features": "features",
    "cell_features": "features",
    "Grid": "grid",
    "lonlat_to_mercator": "projection",
    "mercator_to_lonlat": "projection",
    "CategoryMapping": "taxonomy",
    "OsmMapping": "taxonomy",
    "SyntheticCityParams": "synthetic",
    "generate_synthetic_city": "synthetic",
    "detect_stay_points": "staypoints",
}

__all__ = ["DEFAULT_POI_CLASSES", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
