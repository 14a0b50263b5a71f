"""POI taxonomy: the five NextLocLLM classes and the shipped category mappings.

``DEFAULT_POI_CLASSES`` is the paper's fixed class order (method.md 1.3), defined once in the model's
configuration (``DEFAULT_POI_CLASS_NAMES``, the default of ``NextLocLLMConfig().poi_class_names``).

Shipped mappings (``nextlocllm_hf/data/mappings/``):

* ``foursquare.json`` -- Foursquare venue category names (2012-13 taxonomy of TSMC2014/TIST2015)
  grouped by class, plus aliases (e.g. the mis-encoded ``Caf\\x1a\\x1a``) and a root-category
  fallback (TIST2015/CLSPRec ``root_category``).
* ``osm.json`` -- OpenStreetMap ``amenity``/``shop``/``tourism``/``leisure``/... tag values.

Names are matched case-insensitively after Unicode NFKC normalization and whitespace collapsing.
Names equal to a class name map to that class (synthetic cities use the class names directly).
Unmapped names are never dropped silently: :meth:`CategoryMapping.map` returns their row counts.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ..modeling.configuration_nextlocllm import DEFAULT_POI_CLASS_NAMES as DEFAULT_POI_CLASSES
from ..modeling.records_nextlocllm import decoding, text_codec

MISSING_CATEGORY = "<missing>"


def normalize_name(name) -> str:
    """Case-folded, NFKC-normalized name with runs of whitespace collapsed."""
    s = unicodedata.normalize("NFKC", str(name))
    return re.sub(r"\s+", " ", s).strip().casefold()


def _mapping_path(name: str) -> Path:
    return Path(str(resources.files("nextlocllm_hf.data").joinpath("mappings", f"{name}.json")))


def _read_json(path: Path) -> dict:
    """A mapping file: JSON is UTF-8 (RFC 8259), whatever `--encoding` the data has; a BOM is allowed."""
    with decoding(path, "utf-8", way_out="a JSON mapping must be UTF-8: save it as UTF-8"), \
            open(path, encoding=text_codec("utf-8")) as f:
        return json.load(f)


def _read_grouped(grouped: dict, classes: tuple[str, ...], what: str) -> dict[str, int]:
    """``{class: [names]}`` -> ``{normalized name: class index}``; a name in two classes is an error."""
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, int] = {}
    for cls, names in grouped.items():
        if cls not in index:
            raise ValueError(f"{what}: unknown class {cls!r}; classes are {list(classes)}")
        for n in names:
            key = normalize_name(n)
            if key in out and out[key] != index[cls]:
                raise ValueError(f"{what}: category {n!r} is mapped to two classes")
            out[key] = index[cls]
    return out


@dataclass
class CategoryMapping:
    """Category name -> class index, with aliases and an optional root-category fallback."""

    classes: tuple[str, ...]
    names: dict[str, int]
    roots: dict[str, int] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> "CategoryMapping":
        classes = tuple(d.get("classes", DEFAULT_POI_CLASSES))
        grouped = d.get("mapping", {})
        names = _read_grouped(grouped, classes, source or "mapping")
        # flat form {"name": "Class"} is accepted too
        flat = d.get("names", {})
        idx = {c: i for i, c in enumerate(classes)}
        for n, c in flat.items():
            if c not in idx:
                raise ValueError(f"{source or 'mapping'}: unknown class {c!r} for category {n!r}")
            names[normalize_name(n)] = idx[c]
        for i, c in enumerate(classes):  # class names map to themselves
            names.setdefault(normalize_name(c), i)
        roots = _read_grouped(d.get("root_categories", {}), classes, source or "mapping")
        aliases = {normalize_name(a): normalize_name(b) for a, b in d.get("aliases", {}).items()}
        return cls(classes, names, roots, aliases, source)

    @classmethod
    def from_json(cls, path) -> "CategoryMapping":
        path = Path(path)
        return cls.from_dict(_read_json(path), source=str(path))

    @classmethod
    def foursquare(cls) -> "CategoryMapping":
        return cls.from_json(_mapping_path("foursquare"))

    def extended(self, other: "CategoryMapping") -> "CategoryMapping":
        """This mapping overridden by ``other`` (same classes required)."""
        if tuple(other.classes) != tuple(self.classes):
            raise ValueError(f"category map classes {list(other.classes)} differ from {list(self.classes)}")
        return CategoryMapping(self.classes, {**self.names, **other.names}, {**self.roots, **other.roots},
                               {**self.aliases, **other.aliases}, f"{self.source}+{other.source}")

    def lookup(self, name) -> int:
        key = normalize_name(name)
        key = self.aliases.get(key, key)
        return self.names.get(key, -1)

    def map(self, categories: pd.Series, roots: pd.Series | None = None):
        """Vectorized mapping of a column of names.

        Returns ``(class_index int64 array with -1 for unmapped, stats)`` where ``stats`` holds
        ``unmapped`` (Counter name -> rows, missing names as ``<missing>``) and ``via_root`` (rows
        mapped through the root category).
        """
        cat = categories.astype("string").fillna("").str.strip()
        codes, uniques = pd.factorize(cat, sort=False)
        table = np.array([self.lookup(u) if u != "" else -1 for u in uniques] + [-1], dtype=np.int64)
        out = table[codes]  # codes == -1 (NA) picks the trailing -1
        via_root = 0
        if roots is not None and self.roots:
            miss = out < 0
            if miss.any():
                r = roots.astype("string").fillna("").str.strip()[miss]
                rcodes, runiq = pd.factorize(r, sort=False)
                rtable = np.array([self.roots.get(normalize_name(u), -1) if u != "" else -1 for u in runiq] + [-1],
                                  dtype=np.int64)
                fill = rtable[rcodes]
                via_root = int((fill >= 0).sum())
                sub = out[miss]
                sub[fill >= 0] = fill[fill >= 0]
                out[miss] = sub
        unmapped = Counter()
        miss = out < 0
        if miss.any():
            vc = cat[miss].replace("", MISSING_CATEGORY).value_counts()
            unmapped.update({str(k): int(v) for k, v in vc.items()})
        return out, {"unmapped": unmapped, "via_root": via_root}


@dataclass
class OsmMapping:
    """OSM ``key=value`` tags -> class index (first mapped key in priority order wins)."""

    classes: tuple[str, ...]
    key_priority: tuple[str, ...]
    tags: dict[str, dict[str, int]]

    @classmethod
    def from_json(cls, path=None) -> "OsmMapping":
        path = Path(path) if path else _mapping_path("osm")
        d = _read_json(path)
        classes = tuple(d.get("classes", DEFAULT_POI_CLASSES))
        tags = {key: _read_grouped(groups, classes, f"{path}:{key}") for key, groups in d["tags"].items()}
        return cls(classes, tuple(d.get("key_priority", list(tags))), tags)

    def map(self, df: pd.DataFrame):
        """Map a frame with OSM tag columns (any of ``key_priority``) to class indices.

        Returns ``(class_index array, stats)`` with ``stats["unmapped"]`` a Counter of ``key=value``
        (the highest-priority tag present) for rows no key maps.
        """
        n = len(df)
        out = np.full(n, -1, dtype=np.int64)
        first_tag = pd.Series([None] * n, index=df.index, dtype="object")
        for key in self.key_priority:
            if key not in df.columns:
                continue
            vals = df[key].astype("string").fillna("").str.strip()
            present = (vals != "").to_numpy()
            table = self.tags.get(key, {})
            codes, uniq = pd.factorize(vals, sort=False)
            lut = np.array([table.get(normalize_name(u), table.get("*", -1)) if u != "" else -1 for u in uniq] + [-1],
                           dtype=np.int64)
            cls_idx = lut[codes]
            take = (out < 0) & (cls_idx >= 0)
            out[take] = cls_idx[take]
            unset = present & first_tag.isna().to_numpy()
            first_tag[unset] = key + "=" + vals[unset]
        unmapped = Counter()
        miss = out < 0
        if miss.any():
            vc = first_tag[miss].fillna(MISSING_CATEGORY).value_counts()
            unmapped.update({str(k): int(v) for k, v in vc.items()})
        return out, {"unmapped": unmapped, "via_root": 0}


def class_index(names, classes=DEFAULT_POI_CLASSES) -> np.ndarray:
    """Map exact class names (case-insensitive) to indices; -1 when not a class."""
    idx = {normalize_name(c): i for i, c in enumerate(classes)}
    s = pd.Series(names).astype("string").fillna("")
    codes, uniq = pd.factorize(s, sort=False)
    lut = np.array([idx.get(normalize_name(u), -1) for u in uniq] + [-1], dtype=np.int64)
    return lut[codes]
