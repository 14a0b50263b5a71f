"""Next-location prediction for one user: `python -m nextlocllm_hf.predict --model DIR --city NAME --input FILE`.

The input is one user's recent visits, one row per record, in any order (rows are sorted by time):

    column          aliases (case-insensitive)             meaning
    latitude        lat                                    WGS84 degrees, within the Web Mercator range (|lat| <= 85.05)
    longitude       lon, lng                               WGS84 degrees, -180..180
    local_time      time, timestamp, datetime              ISO 8601 local wall-clock time, e.g. 2024-05-03 08:15:00;
                                                           an offset suffix (+02:00) is allowed: the clock as written
                                                           gives day/hour, the offset only orders rows and gives gaps
    duration_hours  duration                               optional: hours until the record's next record, the value
                                                           training used; an empty cell falls back to the gap
                                                           computed from the times

Rows are turned into exactly the record features of the training samples (`nextlocllm_hf.data`): exact duplicates
(same time and position) are dropped as the builder drops them, the last `history_length + current_length` records
are kept (fewer is an error: the training data never pads), positions are projected to Web Mercator, day of week
(0 = Monday) and hour come from the local clock, a record's duration is the hours to the next record clipped to
`max_duration_hours` (the builder's `--max-duration-hours`, 24 h by default), and the last current record's duration
is the median of the other input durations (its real gap would be the unknown future visit). A record's POI
frequencies are those of its grid cell among the city's candidate cells as stored in the model's retriever. The
retriever keeps no grid size, so it is read from the cells: the smallest spacing between centroid coordinates (exact
whenever two candidate cells are adjacent). A record lies in the candidate cell whose centroid is within half that
spacing on both axes; a record in no candidate cell gets zero POI frequencies (a cell the builder kept out had
none), and one outside the cells' bounding box is an error (the builder drops records outside its grid).

Two tasks, fixed when the model was trained (`config.task_mode`): `next` (where will the user go next?) takes the
records alone; `at_time` (where will the user be at t?) also needs `--at "2012-06-01 18:00"`, the local wall-clock
time of the visit to predict, which gives the query's day, hour and the gap since the last record (it may not precede
the last record). Each model refuses the other task's input with a message saying which it was trained for.

The model ranks the city's cells with its own head (KD-tree distance to its point, mixture density, or the candidate
ranker); `distance_m` is the great-circle distance from the predicted point (`nextlocllm_hf.metrics.haversine_m`).
`--cells DIR` adds a city built by `dataset_scripts/build_city.py` for zero-shot use; `--plot out.png` draws the
trajectory, the predicted point and the top-k cells (an existing file is replaced only with `--overwrite`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .cli import entry_point, non_negative_float, positive_int
from .data.build import BuildConfig
from .data.projection import MAX_MERCATOR_LAT, lonlat_to_mercator, mercator_to_lonlat
from .data.samples import record_durations
from .metrics import haversine_m
from .modeling.configuration_nextlocllm import NextLocLLMConfig
from .modeling.retrieval_nextlocllm import CityRetriever
from .outputs import refuse_occupied, replacing_file

# The builder's default cap on record durations (`--max-duration-hours`).
DEFAULT_MAX_DURATION_HOURS = BuildConfig.max_duration_hours

# Canonical column -> accepted names (case-insensitive), canonical name first.
COLUMN_ALIASES = {
    "latitude": ("latitude", "lat"),
    "longitude": ("longitude", "lon", "lng"),
    "local_time": ("local_time", "time", "timestamp", "datetime"),
    "duration_hours": ("duration_hours", "duration"),
}
REQUIRED_COLUMNS = ("latitude", "longitude", "local_time")
USER_COLUMNS = ("user_id", "user")

_EPOCH = pd.Timestamp("1970-01-01")
_SECOND = pd.Timedelta(seconds=1)


# ---------------------------------------------------------------------------------------------------- reading
def read_records(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """One user's records, checked and sorted by time, with exact duplicates dropped.

    `source` is a CSV/TSV/Parquet file or a DataFrame with the columns of the module docstring. Returns columns
    `row` (1-based data row of the input, for messages), `latitude`, `longitude`, `local_time` (naive wall clock),
    `local_s` (wall-clock seconds, for day/hour), `time_s` (absolute seconds, for order and gaps) and
    `duration_hours` (NaN where not given). Raises `ValueError` naming the column, row and value at fault.
    """
    if isinstance(source, pd.DataFrame):
        frame, where = source, "records"
    else:
        from .data.formats.common import read_table  # CSV (separator sniffed) or Parquet

        frame, where = read_table(source), str(source)
    columns = _resolve_columns(frame.columns, where)
    if len(frame) == 0:
        raise ValueError(f"{where}: no records")
    _check_single_user(frame, where)

    latitude = _numbers(frame[columns["latitude"]], columns["latitude"], where)
    longitude = _numbers(frame[columns["longitude"]], columns["longitude"], where)
    _check_range(latitude, columns["latitude"], MAX_MERCATOR_LAT, where, "the Web Mercator range")
    _check_range(longitude, columns["longitude"], 180.0, where, "valid longitudes")
    zero = np.flatnonzero((latitude == 0) & (longitude == 0))
    if len(zero):
        raise ValueError(
            f"{where}: data row {zero[0] + 1}: latitude=0, longitude=0 is a missing-position placeholder "
            f"(the dataset builder drops such records)"
        )
    local_s, time_s, local_time = _parse_times(frame[columns["local_time"]], columns["local_time"], where)
    duration = np.full(len(frame), np.nan)
    if "duration_hours" in columns:
        column = columns["duration_hours"]
        duration = _numbers(frame[column], column, where, allow_missing=True)
        negative = np.flatnonzero(duration < 0)
        if len(negative):
            row = int(negative[0])
            raise ValueError(f"{where}: data row {row + 1}: {column}={float(duration[row])!r} is negative")

    records = pd.DataFrame(
        {
            "row": np.arange(1, len(frame) + 1),
            "latitude": latitude,
            "longitude": longitude,
            "local_time": local_time,
            "local_s": local_s,
            "time_s": time_s,
            "duration_hours": duration,
        }
    )
    records = records.sort_values("time_s", kind="stable")
    records = records.drop_duplicates(["time_s", "latitude", "longitude"])
    return records.reset_index(drop=True)


def _resolve_columns(found: Sequence, where: str) -> dict[str, str]:
    by_lower: dict[str, list[str]] = {}
    for column in found:
        by_lower.setdefault(str(column).strip().lower(), []).append(column)
    resolved = {}
    for canonical, aliases in COLUMN_ALIASES.items():
        matches = [column for alias in aliases for column in by_lower.get(alias, [])]
        if len(matches) > 1:
            raise ValueError(f"{where}: columns {matches} all name {canonical!r}; keep one")
        if matches:
            resolved[canonical] = matches[0]
        elif canonical in REQUIRED_COLUMNS:
            also = f" (also accepted: {', '.join(aliases[1:])})" if len(aliases) > 1 else ""
            raise ValueError(f"{where}: missing column {canonical!r}{also}; columns found: {list(found)}")
    return resolved


def _check_single_user(frame: pd.DataFrame, where: str) -> None:
    for column in frame.columns:
        if str(column).strip().lower() in USER_COLUMNS:
            users = list(frame[column].dropna().unique())
            if len(users) > 1:
                shown = ", ".join(map(repr, users[:3])) + (", ..." if len(users) > 3 else "")
                raise ValueError(
                    f"{where}: column {column!r} holds {len(users)} users ({shown}); give one user's records"
                )


def _numbers(values: pd.Series, column: str, where: str, allow_missing: bool = False) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    missing = values.isna().to_numpy()
    bad = ~np.isfinite(numbers) & ~(missing & allow_missing)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        problem = " is empty" if missing[row] else f"={values.iloc[row]!r} is not a finite number"
        raise ValueError(f"{where}: data row {row + 1}: {column}{problem}")
    return numbers


def _check_range(values: np.ndarray, name: str, limit: float, where: str, what: str) -> None:
    outside = np.flatnonzero(np.abs(values) > limit)
    if len(outside):
        row = int(outside[0])
        raise ValueError(
            f"{where}: data row {row + 1}: {name}={float(values[row])!r} is outside [-{limit:g}, {limit:g}] ({what})"
        )


def _parse_times(values: pd.Series, column: str, where: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Local wall-clock seconds, absolute seconds and wall-clock timestamps of ISO 8601 times, row by row."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        raise ValueError(
            f"{where}: column {column!r} holds numbers ({values.iloc[0]!r}); give local wall-clock times such as "
            f"2024-05-03 08:15:00 (an epoch number says nothing about the local clock the model needs)"
        )
    local_s, time_s, local_time, has_offset = [], [], [], set()
    for row, value in enumerate(values):
        try:
            stamp = _parse_time(value)
        except ValueError as error:
            raise ValueError(f"{where}: data row {row + 1}: {column}{error}") from None
        has_offset.add(stamp.tzinfo is not None)
        absolute = stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp
        local_time.append(_wall_clock(stamp))
        local_s.append((local_time[-1] - _EPOCH) // _SECOND)
        time_s.append((absolute - _EPOCH) // _SECOND)
    if len(has_offset) > 1:
        raise ValueError(f"{where}: column {column!r} mixes times with and without a UTC offset; use one form")
    return np.asarray(local_s, dtype=np.int64), np.asarray(time_s, dtype=np.int64), local_time


def _parse_time(value) -> pd.Timestamp:
    """One ISO 8601 time (or a timestamp already); the `ValueError` text continues a `name` prefix."""
    if isinstance(value, (pd.Timestamp, np.datetime64)) and not pd.isna(value):
        return pd.Timestamp(value)
    if pd.isna(value) or not str(value).strip():
        raise ValueError(" is empty")
    try:
        return pd.to_datetime(str(value).strip(), format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"={value!r} is not an ISO 8601 time (e.g. 2024-05-03 08:15:00)") from None


def _wall_clock(stamp: pd.Timestamp) -> pd.Timestamp:
    return stamp.tz_localize(None) if stamp.tzinfo is not None else stamp


def _day_hour(local_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Day of week (0 = Monday) and hour, as `build.build_city` computes them (1970-01-01 was a Thursday)."""
    days = np.floor_divide(local_s, 86400)
    return (days + 3) % 7, np.floor_divide(local_s - days * 86400, 3600)


# ------------------------------------------------------------------------------------------------- features
def cell_spacing(retriever: CityRetriever) -> float:
    """Grid cell size (projected metres) read from the centroids: their smallest spacing along x or y."""
    gaps = [np.diff(np.unique(np.round(retriever.xy[:, axis], 3))) for axis in (0, 1)]
    gaps = np.concatenate(gaps)
    if not len(gaps):
        raise ValueError(f"city {retriever.name!r} has a single candidate cell: its grid size cannot be inferred")
    return float(gaps.min())


def prepare_records(
    records: pd.DataFrame,
    retriever: CityRetriever,
    config: NextLocLLMConfig,
    max_duration_hours: float | None = DEFAULT_MAX_DURATION_HOURS,
) -> pd.DataFrame:
    """The last `history_length + current_length` records of `read_records` with their model features.

    Adds `part` (history/current), `x`, `y` (Web Mercator m), `day` (0 = Monday), `hour`, `duration` (the model's
    float32 hours, leakage rule applied), `cell_id` (-1 outside every candidate cell) and `poi` (the cell's POI
    frequencies). `max_duration_hours` None or 0 leaves durations unclipped (the builder's `--max-duration-hours 0`).
    """
    if max_duration_hours is not None and not max_duration_hours >= 0:
        raise ValueError(f"max_duration_hours={max_duration_hours!r}: expected hours >= 0 (0 or None: no cap)")
    needed = config.history_length + config.current_length
    if len(records) < needed:
        raise ValueError(
            f"{len(records)} records (after sorting and dropping exact duplicates), but the model needs "
            f"history_length + current_length = {config.history_length} + {config.current_length} = {needed} "
            f"records of the user; give at least {needed} (the last {needed} are used)"
        )
    kept = records.iloc[-needed:].reset_index(drop=True).copy()
    x, y = lonlat_to_mercator(kept["longitude"].to_numpy(), kept["latitude"].to_numpy())
    xy = np.stack([x, y], axis=1)
    rows = _candidate_rows(xy, kept, retriever)

    # Durations as `samples.record_durations` computes them on one segment, then `assemble_samples`' rule for the
    # last current record: the median of the other input durations.
    duration, _ = record_durations(
        kept["time_s"].to_numpy(), np.array([0]), np.array([needed]), max_duration_hours or None
    )
    given = kept["duration_hours"].to_numpy(dtype=np.float64)
    if max_duration_hours:
        given = np.minimum(given, max_duration_hours)
    duration = np.where(np.isnan(given), duration, given)
    duration[-1] = np.median(duration[:-1]) if needed > 1 else 0.0

    day, hour = _day_hour(kept["local_s"].to_numpy(dtype=np.int64))
    poi = np.zeros((needed, retriever.poi_frequency.shape[1]), dtype=np.float32)
    inside = rows >= 0
    poi[inside] = retriever.poi_frequency[rows[inside]]
    return kept.assign(
        part=["history"] * config.history_length + ["current"] * config.current_length,
        x=x,
        y=y,
        day=day,
        hour=hour,
        duration=duration.astype(np.float32),
        cell_id=np.where(inside, retriever.cell_ids[np.maximum(rows, 0)], -1),
        poi=list(poi),
    )


def _candidate_rows(xy: np.ndarray, records: pd.DataFrame, retriever: CityRetriever) -> np.ndarray:
    """Row in the retriever of the candidate cell holding each point, -1 where no candidate cell does."""
    half = cell_spacing(retriever) / 2.0
    # The spacing is read from centroids rounded to the millimetre (`cell_spacing`), so it may be up to 1 mm short.
    tolerance = 2e-3
    low, high = retriever.xy.min(axis=0) - half - tolerance, retriever.xy.max(axis=0) + half + tolerance
    outside = np.flatnonzero(((xy < low) | (xy > high)).any(axis=1))
    if len(outside):
        record = records.iloc[int(outside[0])]
        lat_range = (retriever.latlon[:, 0].min(), retriever.latlon[:, 0].max())
        lon_range = (retriever.latlon[:, 1].min(), retriever.latlon[:, 1].max())
        raise ValueError(
            f"data row {record['row']}: latitude={float(record['latitude'])!r}, "
            f"longitude={float(record['longitude'])!r} lies "
            f"outside city {retriever.name!r} (its cells span latitude {lat_range[0]:.4f}..{lat_range[1]:.4f}, "
            f"longitude {lon_range[0]:.4f}..{lon_range[1]:.4f}); is this the right city?"
        )
    _, nearest = retriever.tree.query(xy, k=1)
    nearest = np.asarray(nearest).reshape(-1)
    # Voronoi cells of a square lattice are the grid squares: the nearest centroid is the own cell's, if it is kept.
    within = (np.abs(xy - retriever.xy[nearest]) <= half + tolerance).all(axis=1)
    return np.where(within, nearest, -1)


def model_inputs_from_records(
    prepared: pd.DataFrame, config: NextLocLLMConfig, at: str | None = None
) -> dict[str, torch.Tensor]:
    """A batch of one sample, in the dtypes of `CitySamples`, from `prepare_records`' output; `at` (local time of the
    visit to predict) is required by `at_time` models and refused by `next` ones."""
    batch = {}
    for part in ("history", "current"):
        rows = prepared[prepared["part"] == part]
        batch[f"{part}_coordinates"] = torch.tensor(rows[["x", "y"]].to_numpy(dtype=np.float64)[None])
        batch[f"{part}_day"] = torch.tensor(rows["day"].to_numpy(dtype=np.int64)[None])
        batch[f"{part}_hour"] = torch.tensor(rows["hour"].to_numpy(dtype=np.int64)[None])
        batch[f"{part}_duration"] = torch.tensor(rows["duration"].to_numpy(dtype=np.float32)[None])
        batch[f"{part}_poi"] = torch.tensor(np.stack(rows["poi"].to_list()).astype(np.float32)[None])
        batch[f"{part}_cell"] = torch.tensor(rows["cell_id"].to_numpy(dtype=np.int64)[None])  # for a candidate ranker
    if config.task_mode == "at_time":
        if at is None:
            raise ValueError("this model was trained for task_mode='at_time' (where will the user be at a given time?): "
                             "give the local time of the visit to predict, --at / at=, e.g. 2024-05-03 18:00")
        try:
            stamp = _parse_time(at)
        except ValueError as error:
            raise ValueError(f"at{error}") from None
        last = prepared.iloc[-1]
        if stamp.tzinfo is not None:  # an offset: the gap is between absolute times
            gap_s = (stamp.tz_convert("UTC").tz_localize(None) - _EPOCH) // _SECOND - int(last["time_s"])
        else:
            gap_s = (stamp - _EPOCH) // _SECOND - int(last["local_s"])
        if gap_s < 0:
            raise ValueError(f"at={at!r} is {-gap_s / 3600:.2f} h before the last record ({last['local_time']}); "
                             f"the visit to predict must come after the records")
        day, hour = _day_hour(np.array([(_wall_clock(stamp) - _EPOCH) // _SECOND], dtype=np.int64))
        batch["target_day"], batch["target_hour"] = torch.tensor(day), torch.tensor(hour)
        batch["target_time_gap"] = torch.tensor([gap_s / 3600.0], dtype=torch.float32)
    elif at is not None:
        raise ValueError(f"at={at!r} is given, but this model was trained for task_mode='next' (it predicts the next "
                         f"visit, whenever it happens); drop --at, or use a model trained with --task_mode at_time")
    return batch


# ------------------------------------------------------------------------------------------------ prediction
def rank_cells(
    model, city: str, prepared: pd.DataFrame, k: int = 10, at: str | None = None
) -> pd.DataFrame:
    """Top-k cells of `city` for prepared records: columns `rank, cell_id, lat, lon, distance_m`.

    `attrs` holds `city`, `predicted_lat`, `predicted_lon` (and `predicted_duration_hours` with a duration head).
    """
    retriever = model.retriever(city)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= retriever.num_cells:
        raise ValueError(
            f"k={k!r}: expected an integer from 1 to the {retriever.num_cells} candidate cells of city {city!r}"
        )
    batch = model_inputs_from_records(prepared, model.config, at)
    output = model.predict(batch, city=city, k=int(k))
    lon, lat = mercator_to_lonlat(*output.coordinates[0].double().cpu().numpy())
    cells = output.top_k_cells[0].cpu().numpy()
    latlon = retriever.latlon[retriever.rows_of(cells)]
    table = pd.DataFrame(
        {
            "rank": np.arange(1, len(cells) + 1),
            "cell_id": cells,
            "lat": latlon[:, 0],
            "lon": latlon[:, 1],
            "distance_m": haversine_m(lat, lon, latlon[:, 0], latlon[:, 1]),
        }
    )
    table.attrs.update(city=city, predicted_lat=float(lat), predicted_lon=float(lon))
    if output.duration is not None:
        table.attrs["predicted_duration_hours"] = float(output.duration[0])
    return table


def predict_next(
    model,
    city: str,
    records: str | os.PathLike | pd.DataFrame,
    k: int = 10,
    at: str | None = None,
    max_duration_hours: float | None = DEFAULT_MAX_DURATION_HOURS,
) -> pd.DataFrame:
    """Top-k next cells of one user in `city` (see `rank_cells`) from a records file or DataFrame."""
    retriever = model.retriever(city)
    prepared = prepare_records(read_records(records), retriever, model.config, max_duration_hours)
    return rank_cells(model, city, prepared, k, at)


# ---------------------------------------------------------------------------------------------------- output
def format_prediction(table: pd.DataFrame, prepared: pd.DataFrame) -> str:
    history = int((prepared["part"] == "history").sum())
    lines = [
        f"city {table.attrs['city']!r}: {len(prepared)} records used ({history} history + "
        f"{len(prepared) - history} current), {prepared['local_time'].iloc[0]} .. {prepared['local_time'].iloc[-1]}",
        f"predicted next position: lat {table.attrs['predicted_lat']:.6f}, lon {table.attrs['predicted_lon']:.6f}",
    ]
    if "predicted_duration_hours" in table.attrs:
        lines.append(f"predicted stay: {table.attrs['predicted_duration_hours']:.2f} h")
    lines.append(f"top-{len(table)} candidate cells (distance_m: great-circle metres from the predicted point)")
    lines.append(
        table.to_string(
            index=False,
            formatters={"lat": "{:.6f}".format, "lon": "{:.6f}".format, "distance_m": "{:.1f}".format},
        )
    )
    return "\n".join(lines)


def plot_prediction(table: pd.DataFrame, prepared: pd.DataFrame, path: str | os.PathLike) -> None:
    """The input trajectory, the predicted point and the top-k cells on longitude/latitude axes (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 7))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    history = prepared[prepared["part"] == "history"]
    current = prepared[prepared["part"] == "current"]
    axes.plot(history["longitude"], history["latitude"], ".-", color="tab:blue", alpha=0.35, label="history")
    axes.plot(current["longitude"], current["latitude"], "o-", color="tab:blue", label="current")
    axes.scatter(current["longitude"].iloc[-1], current["latitude"].iloc[-1], s=120, facecolors="none",
                 edgecolors="black", label="last record", zorder=3)
    axes.scatter(table["lon"], table["lat"], marker="s", s=70, facecolors="none", edgecolors="tab:orange",
                 label=f"top-{len(table)} cells", zorder=3)
    for rank, lon, lat in zip(table["rank"], table["lon"], table["lat"]):
        axes.annotate(str(rank), (lon, lat), textcoords="offset points", xytext=(4, 4), fontsize=7, color="tab:orange")
    axes.scatter(table.attrs["predicted_lon"], table.attrs["predicted_lat"], marker="x", s=110, color="tab:red",
                 label="predicted point", zorder=4)
    # Equal ground scale on both axes: a degree of longitude spans cos(latitude) of a degree of latitude.
    axes.set_aspect(1.0 / np.cos(np.radians(prepared["latitude"].mean())), adjustable="datalim")
    axes.set_xlabel("longitude")
    axes.set_ylabel("latitude")
    axes.set_title(f"next location in {table.attrs['city']}")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------------------- CLI
@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    from .data import load_city_splits
    from .evaluate import check_compatible
    from .modeling.modeling_nextlocllm import NextLocLLMForCoordinateRegression

    parser = argparse.ArgumentParser(
        prog="python -m nextlocllm_hf.predict", description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a saved model folder or Hub id")
    parser.add_argument("--city", required=True, help="a city of the model (or the city of --cells)")
    parser.add_argument("--input", required=True, help="one user's records: CSV (or TSV/Parquet), columns listed below")
    parser.add_argument("--k", type=positive_int, default=10, help="number of candidate cells to list [10]")
    parser.add_argument("--cells", help="a built city folder (dataset_scripts/build_city.py) to add for zero-shot use")
    parser.add_argument("--plot", help="write a figure of the trajectory and the prediction to this PNG file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    parser.add_argument(
        "--max_duration_hours", type=non_negative_float,
        help="duration cap the city was built with; 0 = none [the --cells city's value, else 24]",
    )
    parser.add_argument("--at", help='local time of the visit to predict, e.g. "2012-06-01 18:00" (at_time models only)')
    args = parser.parse_args(argv)
    if args.plot:  # checked before any work, since the figure is written last
        refuse_occupied(args.plot, overwrite=args.overwrite, option="--plot", what="file")
        if not Path(args.plot).resolve().parent.is_dir():
            raise FileNotFoundError(f"--plot {args.plot}: folder {Path(args.plot).parent} does not exist")

    records = read_records(args.input)  # before loading the model: bad input fails fast
    model = NextLocLLMForCoordinateRegression.from_pretrained(args.model)
    max_duration_hours = DEFAULT_MAX_DURATION_HOURS
    if args.cells:
        city = load_city_splits(args.cells)
        check_compatible(model.config, city.statistics, args.cells)
        if city.name != args.city:
            raise ValueError(f"--cells {args.cells} holds city {city.name!r}, not --city {args.city!r}")
        model.add_city(city.retriever())
        # None in city.json: built without a cap
        max_duration_hours = city.statistics.get("max_duration_hours", DEFAULT_MAX_DURATION_HOURS)
    if args.max_duration_hours is not None:
        max_duration_hours = args.max_duration_hours or None
    if args.city not in model.cities:
        raise ValueError(
            f"--city {args.city!r} is not a city of this model; its cities: {model.cities}. For a new city, add "
            f"its cells with --cells CITY_DIR (a folder built by dataset_scripts/build_city.py)"
        )
    prepared = prepare_records(records, model.retriever(args.city), model.config, max_duration_hours)
    table = rank_cells(model, args.city, prepared, args.k, args.at)
    print(format_prediction(table, prepared))
    if args.plot:
        with replacing_file(args.plot) as partial:
            plot_prediction(table, prepared, partial)
        print(f"plot: {Path(args.plot)}")


if __name__ == "__main__":
    sys.exit(main())
