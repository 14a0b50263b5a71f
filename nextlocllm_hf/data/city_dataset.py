"""Loading built city folders: :func:`load_city_splits` and :func:`load_cities`.

A city folder (output of ``dataset_scripts/build_city.py``, format version 2) holds its records once
(``records-*.arrow``), its splits as windows over them (``train/validation/test.parquet``), ``cells.parquet`` and
``city.json``; ``load_city_splits`` shows each split as the samples its windows stand for (``windows.py``).  A folder of city folders (one sub-folder per city) is a
multi-city collection; ``city=NAME`` picks one.  A Hub dataset repo id is fetched with
``huggingface_hub.snapshot_download`` (offline-friendly: honours ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..modeling.retrieval_nextlocllm import CityRetriever
from .windows import FORMAT_VERSION, RECORDS_PATTERN, CityRecords, WindowView, concatenate_windows, windowed

SPLITS = ("train", "validation", "test")  # the one list of split names (the builder writes these)
DATASET_CARD_NAME = "README.md"
# What a city folder holds (globs).
CITY_FILES = ("city.json", "cells.parquet", *(f"{s}.parquet" for s in SPLITS), RECORDS_PATTERN, DATASET_CARD_NAME)


@dataclass(frozen=True)
class CityDataset:
    """One city: its sample splits (windows shown as samples), records, candidate cells, ``metadata`` (``city.json``:
    coordinate statistics, grid, POI classes, sample lengths, build options and counts) and ``retriever``, the city as
    a model needs it (cells, statistics, grid, duration cap, POI table), built once when the city is loaded."""

    name: str
    splits: object  # datasets.DatasetDict
    cells: pd.DataFrame
    metadata: dict
    retriever: CityRetriever
    path: str = ""
    records: CityRecords | None = None

    @property
    def statistics(self) -> dict:
        """The former name of ``metadata`` (it always held the whole ``city.json``, not only statistics)."""
        warnings.warn("CityDataset.statistics is now CityDataset.metadata", FutureWarning, stacklevel=2)
        return self.metadata

    @property
    def poi_classes(self) -> list:
        return list(self.metadata["poi_classes"])

    @property
    def coordinate_mean(self) -> list:
        return self.retriever.coordinate_mean.tolist()

    @property
    def coordinate_std(self) -> list:
        return self.retriever.coordinate_std.tolist()


@dataclass(frozen=True)
class MultiCityDataset:
    """Several cities: ``splits`` concatenates their splits (each row carries its ``city``)."""

    cities: dict  # name -> CityDataset
    splits: object  # datasets.DatasetDict

    @property
    def retrievers(self) -> dict[str, CityRetriever]:
        return {name: c.retriever for name, c in self.cities.items()}

    def __getitem__(self, name: str) -> CityDataset:
        return self.cities[name]


def is_city_folder(p: Path) -> bool:
    """A built city folder (it holds ``city.json``), as opposed to a folder of cities."""
    return (p / "city.json").is_file()


def _resolve_dir(path_or_repo_id, city: str | None, revision: str | None = None) -> Path:
    from nextlocllm_hf.modeling.backbone_nextlocllm import looks_like_repo_id

    p = Path(str(path_or_repo_id)).expanduser()
    if not p.exists():
        if not looks_like_repo_id(str(path_or_repo_id)):
            raise FileNotFoundError(f"city dataset folder not found: {path_or_repo_id}")
        return _hub_city_dir(str(path_or_repo_id), city, revision)
    if not p.is_dir():
        raise NotADirectoryError(f"{p} is a file, not a city dataset folder")
    if is_city_folder(p):
        if city is not None:
            with open(p / "city.json", encoding="utf-8") as f:
                found = json.load(f).get("city")
            if found != city:
                raise ValueError(f"{p} holds city {found!r}, not {city!r}")
        return p
    subs = sorted(d for d in p.iterdir() if d.is_dir() and is_city_folder(d))
    if not subs:
        raise FileNotFoundError(f"{p} is not a city dataset folder (no city.json) and holds none")
    if city is None:
        if len(subs) == 1:
            return subs[0]
        raise ValueError(f"{p} holds several cities {[d.name for d in subs]}: pass city=NAME")
    for d in subs:
        if d.name == city:
            return d
    raise ValueError(f"city {city!r} not found in {p}; available: {[d.name for d in subs]}")


def _hub_city_dir(repo_id: str, city: str | None, revision: str | None) -> Path:
    """Download one city of a dataset repo pushed by ``nextlocllm_hf.hub.push_city_dataset``; returns its folder.

    The repo holds one config per city: ``<city>/<split>-*.parquet`` plus ``<city>/cells.parquet`` and
    ``<city>/city.json``.  Everything comes from one commit (the revision is resolved once), through the
    huggingface_hub cache, so a second load works offline (``HF_HUB_OFFLINE=1``).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from nextlocllm_hf.modeling.backbone_nextlocllm import hub_lookup_failed

    def download(patterns, rev):
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=rev, allow_patterns=patterns))

    try:
        index = download(["*/city.json"], revision)
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local city folder nor a dataset repo on the Hub (or it is private: pass a "
            f"token via HF_TOKEN)"
        ) from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"dataset repo {repo_id!r} has no revision {revision!r}") from error
    except OSError as error:  # offline or unreachable: the name may as well be a mistyped local folder
        raise hub_lookup_failed(repo_id, "city dataset", error) from error
    available = sorted(d.name for d in index.iterdir() if d.is_dir() and is_city_folder(d))
    if not available:
        raise FileNotFoundError(f"dataset repo {repo_id!r} holds no city (no <city>/city.json); push cities with "
                                f"nextlocllm_hf.hub.push_city_dataset")
    if city is None:
        if len(available) != 1:
            raise ValueError(f"dataset repo {repo_id!r} holds cities {available}: pass city=NAME")
        city = available[0]
    if city not in available:
        raise ValueError(f"city {city!r} not found in dataset repo {repo_id!r}; available: {available}")
    root = download([f"{city}/*"], index.name)  # index.name is the resolved commit sha (same commit as the index)
    return root / city


def _split_files(d: Path, split: str) -> list[Path]:
    """``<split>.parquet`` (build_city.py output) or the shards ``<split>-00000-of-0000N.parquet`` (Hub layout)."""
    single = d / f"{split}.parquet"
    return [single] if single.is_file() else sorted(d.glob(f"{split}-*.parquet"))


def _read_split(paths):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetInfo, Features

    tables = [pq.read_table(p) for p in ([paths] if isinstance(paths, Path) else paths)]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    features = Features.from_arrow_schema(tables[0].schema)
    return Dataset(table, info=DatasetInfo(features=features))


def load_city_splits(path_or_repo_id, city: str | None = None, revision: str | None = None) -> CityDataset:
    """Load a built city (local folder, folder of cities, or Hub dataset repo id).

    Returns a :class:`CityDataset` with ``.splits`` (``DatasetDict`` train/validation/test of windows, shown
    through a ``WindowView`` transform as samples with the fields of :func:`nextlocllm_hf.data.features.city_features`:
    ``split[i]``, ``split[a:b]``, ``rows_to_arrays(split, fields)``), ``.records``, ``.cells`` (pandas),
    ``.metadata`` (``city.json``) and ``.retriever``.  A repo id (``ORG/NAME``, pushed with
    ``nextlocllm_hf.hub.push_city_dataset``) is read at ``revision`` (branch or commit; default main),
    one config per city: pass ``city=NAME`` when it holds several.
    """
    from datasets import DatasetDict

    d = _resolve_dir(path_or_repo_id, city, revision)
    where = str(d) if Path(str(path_or_repo_id)).expanduser().exists() else (
        f"dataset repo {path_or_repo_id!r} (city {d.name!r}, commit {d.parent.name})")
    if not (d / "city.json").is_file():
        raise FileNotFoundError(f"{where}: missing ['city.json']")
    with open(d / "city.json", encoding="utf-8") as f:
        metadata = json.load(f)
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{where}: city format_version {version!r}, this package reads {FORMAT_VERSION} (records "
                         f"stored once, samples as windows over them): rebuild it with nextlocllm-build-city")
    records_files = sorted(d.glob(RECORDS_PATTERN))
    missing = [f for f in ("cells.parquet",) if not (d / f).is_file()]
    missing += [f"{s}.parquet" for s in SPLITS if not _split_files(d, s)]
    if len(records_files) != metadata["records_files"]:
        missing.append(f"{RECORDS_PATTERN} ({len(records_files)} of {metadata['records_files']} files)")
    if missing:
        raise FileNotFoundError(f"{where}: missing {missing}")
    cells = pd.read_parquet(d / "cells.parquet")
    retriever = CityRetriever.from_city(metadata, cells)
    records = CityRecords(records_files, retriever.poi_table, metadata["history_length"], metadata["current_length"])
    view = WindowView({metadata["city"]: records})
    splits = DatasetDict({s: windowed(_read_split(_split_files(d, s)), view) for s in SPLITS})
    return CityDataset(metadata["city"], splits, cells, metadata, retriever, str(d), records)


def load_cities(paths_or_repo_ids, cities=None) -> MultiCityDataset:
    """Load several cities and concatenate their splits for multi-city training.

    ``paths_or_repo_ids``: a list of city folders / repo ids, or one folder (or repo id) holding
    several cities together with ``cities=[names]`` (default: every city in it; for a Hub repo id,
    pass ``cities``).  All cities must
    share history/current lengths and POI classes.
    """
    from datasets import DatasetDict

    if isinstance(paths_or_repo_ids, (str, Path)):
        root = Path(str(paths_or_repo_ids))
        if cities is None and root.is_dir() and not is_city_folder(root):
            cities = sorted(d.name for d in root.iterdir() if d.is_dir() and is_city_folder(d))
        items = [(paths_or_repo_ids, c) for c in (cities or [None])]
    else:
        if cities is not None and len(cities) != len(paths_or_repo_ids):
            raise ValueError("cities must give one name per path")
        items = []
        for p, c in zip(paths_or_repo_ids, cities or [None] * len(paths_or_repo_ids)):
            root = Path(str(p))
            if c is None and root.is_dir() and not is_city_folder(root):  # a folder of cities: all of them
                found = [(p, d.name) for d in sorted(root.iterdir()) if d.is_dir() and is_city_folder(d)]
                if not found:
                    raise FileNotFoundError(f"{root} is not a city dataset folder (no city.json) and holds none")
                items += found
            else:
                items.append((p, c))
    loaded: dict = {}
    for p, c in items:
        ds = load_city_splits(p, c)
        if ds.name in loaded:
            raise ValueError(f"city {ds.name!r} given twice")
        loaded[ds.name] = ds
    if not loaded:
        raise ValueError("no city to load")
    first = next(iter(loaded.values()))
    for ds in loaded.values():
        for key in ("history_length", "current_length", "poi_classes"):
            if ds.metadata[key] != first.metadata[key]:
                raise ValueError(f"cities {first.name!r} and {ds.name!r} differ in {key}: "
                                 f"{first.metadata[key]!r} vs {ds.metadata[key]!r}")
    splits = DatasetDict({s: concatenate_windows([ds.splits[s] for ds in loaded.values()]) for s in SPLITS})
    return MultiCityDataset(loaded, splits)
