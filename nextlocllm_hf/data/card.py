"""The dataset card of a built city: `README.md` in the city folder and in a pushed dataset repo.

Written with huggingface_hub's card tools (`DatasetCard`, `DatasetCardData`), so the YAML header is what the Hub and
`datasets` read: the source data's license as the builder was given it, tags, size category and the `configs` that
map each city to its split files (its windows: `load_dataset(folder_or_repo, city)`; its records are Arrow files
`datasets.Dataset.from_file` reads, not a config, since `datasets` reads one dataset's configs with one builder). The
body says how the two make a sample, every field with its unit, the POI class order, the build options and the
counts, all read from `city.json`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .features import SEQUENCE_FIELDS, city_features

TAGS = ("mobility", "human-mobility", "next-location-prediction", "trajectory", "geospatial", "nextlocllm")
# What each sample field holds and in which unit; `{part}` is history or current. Every field of `city_features` has
# one (a test checks), so the card cannot fall behind the data.
FIELD_DESCRIPTIONS = {
    "city": "the city's name (the config name)",
    "user_id": "the user's id in the source data (string)",
    "{part}_coordinates": "(x, y) of each record, Web Mercator (EPSG:3857) metres",
    "{part}_day": "local day of week of each record, 0 = Monday .. 6 = Sunday",
    "{part}_hour": "local hour of each record, 0 .. 23",
    "{part}_duration": "stay duration of each record, hours: the time to the user's next record, clipped at "
                       "`max_duration_hours`; the sample's last current record gets the median of its other input "
                       "durations (its own would reveal the target's time)",
    "{part}_poi": "POI-category frequencies of each record's grid cell, in the POI class order below, normalized "
                  "as `poi_normalization` says",
    "{part}_cell": "id of each record's grid cell (a `cell_id` of `cells.parquet`)",
    "target_coordinates": "(x, y) of the next visit (the label), Web Mercator metres",
    "target_cell": "grid cell of the next visit",
    "target_day": "local day of week of the next visit, 0 = Monday",
    "target_hour": "local hour of the next visit, 0 .. 23",
    "target_duration": "stay duration of the next visit, hours (same rule as the inputs)",
    "target_time_gap": "hours from the last current record to the next visit",
}
WINDOW_DESCRIPTIONS = {
    "city": "the city's name",
    "user_id": "the user's id in the source data",
    "start": "row of the window's first record in the records files (taken in file order); the window is that "
             "record and the next `window_length - 1`",
}
RECORD_DESCRIPTIONS = {
    "user_id": "the user's id in the source data (records are sorted by user, then time)",
    "ts": "time of the record, UTC, seconds since 1970",
    "x / y": "position, Web Mercator (EPSG:3857) metres",
    "day / hour": "local day of week (0 = Monday) and hour",
    "duration": "hours to the user's next record, clipped at `max_duration_hours`; empty (NaN) at a segment's end",
    "cell": "the record's grid cell (a `cell_id` of `cells.parquet`)",
}
CELL_DESCRIPTIONS = {
    "cell_id": "the cell's id, 0 .. number of candidate cells - 1 (what `*_cell` and `target_cell` refer to)",
    "row / col": "the cell's position in the grid",
    "lat / lon": "the cell centre, WGS84 degrees",
    "x / y": "the cell centre, Web Mercator metres",
    "poi_counts": "POIs of each class in the cell",
    "poi_frequency": "`poi_counts` normalized (the sample fields' `*_poi`)",
    "n_records": "records of the built data in the cell",
    "top_categories": "the cell's most common venue category names, most venues first (empty without names)",
}
DATA_KINDS = {"geolife": "gps-trajectories", "yjmob": "gps-trajectories", "synthetic": "synthetic"}
# Build options shown in the card (paths are left out: they are the builder's machine's).
CARD_OPTIONS = ("format", "cell_size_m", "history_length", "current_length", "stride", "split", "split_fractions",
                "seed", "candidates", "poi_normalization", "max_gap_hours", "max_duration_hours", "drop_duplicates",
                "bbox", "timezone", "stay_distance_m", "stay_min_minutes")


def field_description(name: str) -> str:
    """The card's description of one sample field (KeyError for a field the card does not know)."""
    for part in ("history", "current"):
        if name.startswith(f"{part}_") and name.removeprefix(f"{part}_") in SEQUENCE_FIELDS:
            return FIELD_DESCRIPTIONS["{part}_" + name.removeprefix(f"{part}_")]
    return FIELD_DESCRIPTIONS[name]


def size_category(num_samples: int) -> str:
    """The Hub's `size_categories` bucket of a sample count."""
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M")):
        if num_samples < bound:
            return label
    return "10M<n<100M"


def split_config(metadata: Mapping, prefix: str = "") -> dict:
    """The YAML `configs` entry of one city: its config name and split files (`prefix`: its folder in a repo)."""
    from .city_dataset import SPLITS

    return {"config_name": metadata["city"],
            "data_files": [{"split": split, "path": f"{prefix}{split}*.parquet" if prefix else f"{split}.parquet"}
                           for split in SPLITS]}



def dataset_card(cities: Sequence[Mapping], configs: Sequence[Mapping] | None = None,
                 dataset_info: Sequence[Mapping] | Mapping | None = None):
    """The card of one or several built cities (`city.json` contents, in order). A pushed repo passes the `configs`
    and `dataset_info` that `datasets` wrote into its card; a city folder gets one config over its split files."""
    from huggingface_hub import DatasetCard, DatasetCardData

    if not cities:
        raise ValueError("a dataset card needs at least one city")
    licenses = sorted({_license(metadata)["id"] for metadata in cities})
    samples = sum(sum(metadata["counts"]["samples"].values()) for metadata in cities)
    data = DatasetCardData(
        license=licenses[0] if len(licenses) == 1 else "other",
        pretty_name=f"NextLocLLM next-location samples: {', '.join(m['city'] for m in cities)}",
        tags=list(TAGS) + sorted({_data_kind(m) for m in cities}),
        task_categories=["time-series-forecasting"],
        size_categories=[size_category(samples)],
        configs=list(configs) if configs is not None else [split_config(m) for m in cities],
        dataset_info=dataset_info,
    )
    if len(licenses) > 1:
        data.license_name = "several: see each city's section"
    body = "\n".join([
        f"# {data.pretty_name}",
        "",
        "Next-location prediction samples built by nextlocllm-hf's `build_city`. A sample is one user's "
        f"{cities[0]['history_length']} history and {cities[0]['current_length']} current visit records and the visit "
        "that followed them (the label). Each record is stored once (`records-*.arrow`, sorted by user and time; "
        "`datasets.Dataset.from_file` reads one) and each split as windows over them (the `<city>` config: a user "
        "and the row of the window's first record). `nextlocllm_hf.data.load_city_splits` shows every window as its sample, with "
        "the fields below (gathered on the fly, so a split never has to fit in memory), and also reads "
        "`cells.parquet` (the candidate cells) and `city.json` (statistics, grid, build options).",
        "",
        "## Fields",
        "",
        "A sample, as `load_city_splits` shows it:",
        "",
        "| field | type | meaning |",
        "|---|---|---|",
        *[f"| `{name}` | {_type(feature)} | {field_description(name)} |"
          for name, feature in city_features(cities[0]["history_length"], cities[0]["current_length"],
                                             len(cities[0]["poi_classes"])).items()],
        "",
        "A split's files (the windows):",
        "",
        "| column | meaning |",
        "|---|---|",
        *[f"| `{name}` | {text} |" for name, text in WINDOW_DESCRIPTIONS.items()],
        "",
        "The records files:",
        "",
        "| column | meaning |",
        "|---|---|",
        *[f"| `{name}` | {text} |" for name, text in RECORD_DESCRIPTIONS.items()],
        "",
        "`cells.parquet`, the city's candidate cells:",
        "",
        "| column | meaning |",
        "|---|---|",
        *[f"| `{name}` | {text} |" for name, text in CELL_DESCRIPTIONS.items()],
        "",
        *[line for metadata in cities for line in _city_section(metadata)],
    ])
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _city_section(metadata: Mapping) -> list[str]:
    license, counts, build = _license(metadata), metadata["counts"], metadata["source"].get("build", {})
    options = {key: metadata.get(key, build.get(key)) for key in CARD_OPTIONS if key in build or key in metadata}
    mean, std = metadata["coordinate_mean"], metadata["coordinate_std"]
    samples = ", ".join(f"{split} {n:,}" for split, n in counts["samples"].items())
    users = ", ".join(f"{split} {counts['users'][split]:,}" for split in counts["samples"])
    lines = [
        f"## {metadata['city']}",
        "",
        f"- Source: {metadata['source'].get('format', 'unknown')} ({_data_kind(metadata)}); POIs: "
        f"{counts['pois'].get('source', 'none')}.",
        f"- License of the source data, as given to the builder: `{license['id']}`."
        + (f" Terms: {license['terms']}" if license.get("terms") else ""),
        f"- Samples: {samples}; users: {users}.",
        f"- Cells: {counts['cells'].get('candidates', 0):,} candidates of {metadata['cell_size_m']:g} m "
        f"(`candidates={metadata['candidates']}`).",
        f"- Coordinate statistics (train split only), metres: mean ({mean[0]:.1f}, {mean[1]:.1f}), "
        f"std ({std[0]:.1f}, {std[1]:.1f}).",
        f"- POI class order: {', '.join(f'{i}: {name}' for i, name in enumerate(metadata['poi_classes']))}.",
        f"- Dropped: {_drops(counts['drops'])}.",
        "",
        "| build option | value |",
        "|---|---|",
        *[f"| `{key}` | `{value}` |" for key, value in options.items()],
        "",
    ]
    if license.get("citation"):
        lines += ["Cite the source data:", "", "```bibtex", license["citation"].strip(), "```", ""]
    return lines


def _license(metadata: Mapping) -> dict:
    return dict(metadata["source"].get("license") or {"id": "unknown"})


def _data_kind(metadata: Mapping) -> str:
    """A tag for the kind of records, from the builder's `--format`."""
    return DATA_KINDS.get(metadata["source"].get("build", {}).get("format"), "check-ins")


def _drops(drops: Mapping) -> str:
    parts = [f"{reason.replace('_', ' ')} {n:,} {kind}" for kind, reasons in drops.items()
             for reason, n in reasons.items() if n]
    return "; ".join(parts) or "nothing"


def _type(feature) -> str:
    from datasets import List

    if isinstance(feature, List):
        inner = _type(feature.feature)
        return f"list[{inner}, {feature.length}]" if feature.length and feature.length > 0 else f"list[{inner}]"
    return feature.dtype


__all__ = ["dataset_card", "split_config", "field_description", "size_category", "FIELD_DESCRIPTIONS", "TAGS"]
