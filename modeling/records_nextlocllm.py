"""Raw visit records -> the model's record features: the one rule shared by the dataset builder, predict and the
`next-location` pipeline.

A record is one visit: a position (WGS84 degrees), a time, optionally its stay duration. The features of a record
are the ones the training samples hold:

* **order and duplicates**: a user's records sorted by absolute time (stable); a record equal to an earlier one of
  the same user (same time and position) is dropped (`time_order`, `is_repeated_record`);
* **position**: Web Mercator metres (`geometry_nextlocllm.lonlat_to_mercator`) and the city's grid cell holding it
  (`CityRetriever.locate`), whose POI frequencies the record carries;
* **day and hour**: day of week (0 = Monday) and hour of the local wall clock (`day_and_hour`);
* **duration**: hours to the user's next record, clipped to `max_duration_hours` (`record_durations`); the last
  input record's duration would be the gap to the visit to predict, so it is the median of the other input durations
  (`leakage_free_durations`);
* **query** (`task_mode="at_time"`): day, hour and the gap in hours from the last record (`hours_between`) of the
  visit to predict.

Raw input to `read_table` / `read_records`: a CSV/TSV/Parquet path, a DataFrame or a list of dicts, one row per
record, in any order, with the columns of `RECORD_COLUMNS_TABLE` (matched case-insensitively). Text files are read as
UTF-8 (a byte-order mark allowed) unless another encoding is given; a file that does not decode is refused with its
line (`decoding`), never read with replacement characters.

One record, two vocabularies, mapped here and nowhere else: what a person hands to inference is named for people
(`parse_records` returns `latitude`, `longitude`, `local_time`, `local_s`, `time_s`, `duration_hours`); the builder's
tables and the stored records (`data/windows.py` `RECORDS_SCHEMA`, persisted in every built city) keep the compact names
of the source formats: `lat`, `lon`, `ts` (absolute seconds, = `time_s`), and `x`, `y`, `day`, `hour`, `duration`,
`cell` for the features. `BUILDER_NAMES` is that mapping.
"""

from __future__ import annotations

import codecs
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from .geometry_nextlocllm import MAX_MERCATOR_LAT, lonlat_to_mercator

# The builder's name of each field `parse_records` returns (see the module docstring).
BUILDER_NAMES = {"latitude": "lat", "longitude": "lon", "time_s": "ts", "duration_hours": "duration"}

LATITUDE_ALIASES = ("latitude", "lat")
LONGITUDE_ALIASES = ("longitude", "lon", "lng", "long")
USER_ALIASES = ("user_id", "user", "uid", "userid")
# Canonical column of a raw record -> accepted names (case-insensitive), canonical name first.
RECORD_COLUMN_ALIASES = {
    "latitude": LATITUDE_ALIASES,
    "longitude": LONGITUDE_ALIASES,
    "local_time": ("local_time", "time", "timestamp", "datetime"),
    "duration_hours": ("duration_hours", "duration"),
}
REQUIRED_RECORD_COLUMNS = ("latitude", "longitude", "local_time")
#: Default cap on a record's duration, hours (the builder's `--max-duration-hours`; 0 = none).
DEFAULT_MAX_DURATION_HOURS = 24.0
#: Encoding of a user's text files unless told otherwise (the commands' `--encoding`).
DEFAULT_ENCODING = "utf-8"
#: What a user is told when a file does not decode.
ENCODING_WAY_OUT = "pass --encoding latin-1 (or the file's encoding)"

RECORD_COLUMNS_TABLE = """\
    column          aliases                                meaning
    latitude        lat                                    WGS84 degrees, within the Web Mercator range (|lat| <= 85.05)
    longitude       lon, lng, long                         WGS84 degrees, -180..180
    local_time      time, timestamp, datetime              ISO 8601 local wall-clock time, e.g. 2024-05-03 08:15:00;
                                                           an offset suffix (+02:00) is allowed: the clock as written
                                                           gives day/hour, the offset only orders rows and gives gaps
    duration_hours  duration                               optional: hours until the record's next record, the value
                                                           training used; an empty cell falls back to the gap
                                                           computed from the times
    user_id         user, uid, userid                      optional: whose record it is (the pipeline and the predict
                                                           CLI take many users at once: one table per user)
"""

_EPOCH = pd.Timestamp("1970-01-01")
_SECOND = pd.Timedelta(seconds=1)


# ----------------------------------------------------------------------------------------------------- the rule
def time_order(time_s: np.ndarray, user_codes: np.ndarray | None = None) -> np.ndarray:
    """Indices sorting records by (user, absolute time), ties in input order."""
    time_s = np.asarray(time_s)
    users = np.zeros(len(time_s), dtype=np.int64) if user_codes is None else np.asarray(user_codes)
    return np.lexsort((np.arange(len(time_s)), time_s, users))


def is_repeated_record(user, time_s, latitude, longitude) -> np.ndarray:
    """True for a record equal to an earlier one of the same user: same time and same position (kept: the first)."""
    frame = pd.DataFrame({"user": user, "time": time_s, "latitude": latitude, "longitude": longitude})
    return frame.duplicated(["user", "time", "latitude", "longitude"]).to_numpy()


def day_and_hour(local_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Day of week (0 = Monday) and hour of local wall-clock seconds since 1970-01-01 (a Thursday)."""
    local_s = np.asarray(local_s, dtype=np.int64)
    days = np.floor_divide(local_s, 86400)
    return (days + 3) % 7, np.floor_divide(local_s - days * 86400, 3600)


def hours_between(start_s, end_s):
    """Hours from `start_s` to `end_s` (seconds), unclipped: durations and the query's time gap."""
    return (np.asarray(end_s) - np.asarray(start_s)) / 3600.0


def record_durations(ts: np.ndarray, seg_starts: np.ndarray, seg_lengths: np.ndarray, cap_hours: float | None):
    """Hours to the next record of the same segment (NaN at a segment's last record), clipped to [0, `cap_hours`]
    (no cap when None or 0). Returns `(durations, number clipped)`."""
    n = len(ts)
    duration = np.full(n, np.nan)
    if n > 1:
        duration[:-1] = hours_between(ts[:-1], ts[1:])
    duration[seg_starts + seg_lengths - 1] = np.nan
    clipped = 0
    if cap_hours:
        over = duration > cap_hours
        clipped = int(over.sum())
        duration[over] = cap_hours
    duration = np.where(np.isnan(duration), np.nan, np.maximum(duration, 0.0))
    return duration, clipped


def leakage_free_durations(durations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(S, n)` input durations with the last one replaced by the median of the other `n - 1` (0 when n = 1): its
    own value would be the gap to the visit to predict. Returns `(durations float64, the medians (S,))`."""
    durations = np.array(durations, dtype=np.float64)
    n = durations.shape[1]
    fill = np.median(durations[:, :-1], axis=1) if n > 1 else np.zeros(len(durations))
    durations[:, -1] = fill
    return durations, fill


# ------------------------------------------------------------------------------------------------------ reading
def text_codec(encoding: str = DEFAULT_ENCODING) -> str:
    """The codec a user's text file is read with. UTF-8 reads as `utf-8-sig`: the byte-order mark some programs
    (Excel) write must not end up in the first column's name. An unknown name raises `ValueError`."""
    try:
        info = codecs.lookup(str(encoding))
    except LookupError:
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"encoding {encoding!r} is not a text encoding Python knows (e.g. utf-8, latin-1, cp1252)")
    return "utf-8-sig" if info.name in ("utf-8", "utf-8-sig") else info.name


@contextmanager
def decoding(path: str | os.PathLike, encoding: str = DEFAULT_ENCODING,
             way_out: str = ENCODING_WAY_OUT) -> Iterator[None]:
    """Run a read of `path`; a decode error becomes one `ValueError` naming the file, the line and `way_out`.

    The line is found only after a read failed (`first_undecodable`), so a file that decodes costs nothing more."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise ValueError(_undecodable_message(path, encoding, error, way_out)) from None


def first_undecodable(path: str | os.PathLike, encoding: str = DEFAULT_ENCODING) -> tuple[int, int, int] | None:
    """`(line, byte of that line, byte value)`, all from 1, of the first bytes of `path` that do not decode; None
    when the whole file decodes. Reads the file in binary, one line at a time, through an incremental decoder."""
    decoder = codecs.getincrementaldecoder(text_codec(encoding))()
    line, piece = 1, b""
    with open(path, "rb") as f:
        for piece in f:
            try:
                line += decoder.decode(piece).count("\n")
            except UnicodeDecodeError as error:
                # the bytes decoded are the piece with any pending bytes before it (or without a stripped BOM)
                at = max(error.start - (len(error.object) - len(piece)), 0)
                return line, at + 1, error.object[error.start]
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:  # the file ends inside a character
            return line, max(len(piece) - (len(error.object) - error.start), 0) + 1, error.object[error.start]
    return None


def _undecodable_message(path, encoding: str, error: UnicodeDecodeError, way_out: str) -> str:
    name = "UTF-8" if text_codec(encoding) == "utf-8-sig" else encoding
    found = first_undecodable(path, encoding)
    if found is None:  # not this file's bytes after all: say what failed
        return f"{path} is not valid {name} ({error}): {way_out}"
    line, at, value = found
    return f"{path} line {line} is not valid {name} (byte 0x{value:02x} at byte {at} of the line): {way_out}"


def read_table(source: str | os.PathLike | pd.DataFrame | Sequence[dict], encoding: str = DEFAULT_ENCODING,
               **read_kwargs) -> pd.DataFrame:
    """A table of rows: a DataFrame as is, a list of dicts, or a CSV/TSV (separator sniffed, text in `encoding`) or
    Parquet file."""
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, (list, tuple)):
        if not all(isinstance(row, dict) for row in source):
            raise ValueError("records: a list of records must hold one dict per record, e.g. "
                             "{'latitude': 40.7, 'longitude': -74.0, 'local_time': '2024-05-03 08:15'}")
        return pd.DataFrame(list(source))
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"records: expected a DataFrame, a list of dicts or a file path, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    read_kwargs.setdefault("sep", sniff_sep(path, encoding))
    with decoding(path, encoding):
        return pd.read_csv(path, encoding=text_codec(encoding), **read_kwargs)


def first_line(path: str | os.PathLike, encoding: str = DEFAULT_ENCODING) -> str:
    """The first line of a text file (without its line end), decoded (`decoding`)."""
    with decoding(path, encoding), open(path, encoding=text_codec(encoding)) as f:
        return f.readline().rstrip("\r\n")


def sniff_sep(path: str | os.PathLike, encoding: str = DEFAULT_ENCODING) -> str:
    """Tab when the first line holds more tabs than commas, else comma."""
    line = first_line(path, encoding)
    return "\t" if line.count("\t") > line.count(",") else ","


def user_column(frame: pd.DataFrame) -> str | None:
    """The column naming each record's user (`USER_ALIASES`), if any."""
    for column in frame.columns:
        if str(column).strip().lower() in USER_ALIASES:
            return column
    return None


def split_users(frame: pd.DataFrame) -> list[tuple[Any, pd.DataFrame]]:
    """`(user, rows)` per user in order of first appearance; one `(None, frame)` without a user column."""
    frame = frame.reset_index(drop=True)  # data rows in messages count from the table's first row
    column = user_column(frame)
    if column is None:
        return [(None, frame)]
    missing = np.flatnonzero(frame[column].isna().to_numpy())
    if len(missing):
        raise ValueError(f"data row {missing[0] + 1}: {column} is empty; give every record its user")
    return [(user, rows) for user, rows in frame.groupby(column, sort=False)]


def read_records(source: str | os.PathLike | pd.DataFrame | Sequence[dict], encoding: str = DEFAULT_ENCODING,
                 where: str | None = None) -> pd.DataFrame:
    """One user's records (see `parse_records`) from a file (text in `encoding`), DataFrame or list of dicts; several
    users are an error. `where` names the source in messages (default: the file's path, else "records")."""
    where = where or (str(source) if isinstance(source, (str, os.PathLike)) else "records")
    frame = read_table(source, encoding)
    column = user_column(frame)
    if column is not None:
        users = list(frame[column].dropna().unique())
        if len(users) > 1:
            shown = ", ".join(map(repr, users[:3])) + (", ..." if len(users) > 3 else "")
            raise ValueError(f"{where}: column {column!r} holds {len(users)} users ({shown}); give one user's records")
    return parse_records(frame.reset_index(drop=True), where)


def parse_records(frame: pd.DataFrame, where: str = "records") -> pd.DataFrame:
    """One user's records, checked, sorted by time, with repeated records dropped.

    Returns columns `row` (1-based data row of the input, for messages), `latitude`, `longitude`, `local_time` (naive
    wall clock), `local_s` (wall-clock seconds, for day/hour), `time_s` (absolute seconds, for order and gaps) and
    `duration_hours` (NaN where not given). Raises `ValueError` naming the column, row and value at fault.
    """
    columns = _resolve_columns(frame.columns, where)
    if len(frame) == 0:
        raise ValueError(f"{where}: no records")
    rows = _data_rows(frame)
    latitude = _numbers(frame[columns["latitude"]], columns["latitude"], where, rows)
    longitude = _numbers(frame[columns["longitude"]], columns["longitude"], where, rows)
    _check_range(latitude, columns["latitude"], MAX_MERCATOR_LAT, where, "the Web Mercator range", rows)
    _check_range(longitude, columns["longitude"], 180.0, where, "valid longitudes", rows)
    zero = np.flatnonzero((latitude == 0) & (longitude == 0))
    if len(zero):
        raise ValueError(
            f"{where}: data row {rows[zero[0]]}: latitude=0, longitude=0 is a missing-position placeholder "
            f"(the dataset builder drops such records)"
        )
    local_s, time_s, local_time = _parse_times(frame[columns["local_time"]], columns["local_time"], where, rows)
    duration = np.full(len(frame), np.nan)
    if "duration_hours" in columns:
        column = columns["duration_hours"]
        duration = _numbers(frame[column], column, where, rows, allow_missing=True)
        negative = np.flatnonzero(duration < 0)
        if len(negative):
            row = int(negative[0])
            raise ValueError(f"{where}: data row {rows[row]}: {column}={float(duration[row])!r} is negative")

    records = pd.DataFrame({
        "row": rows,
        "latitude": latitude,
        "longitude": longitude,
        "local_time": local_time,
        "local_s": local_s,
        "time_s": time_s,
        "duration_hours": duration,
    })
    records = records.iloc[time_order(time_s)]
    repeated = is_repeated_record(np.zeros(len(records)), records["time_s"].to_numpy(),
                                  records["latitude"].to_numpy(), records["longitude"].to_numpy())
    return records[~repeated].reset_index(drop=True)


def _data_rows(frame: pd.DataFrame) -> np.ndarray:
    """1-based data row of each record: its place in the table `split_users` / `read_records` numbered from 0."""
    if pd.api.types.is_integer_dtype(frame.index):
        return np.asarray(frame.index, dtype=np.int64) + 1
    return np.arange(1, len(frame) + 1)


def _resolve_columns(found: Sequence, where: str) -> dict[str, str]:
    by_lower: dict[str, list[str]] = {}
    for column in found:
        by_lower.setdefault(str(column).strip().lower(), []).append(column)
    resolved = {}
    for canonical, aliases in RECORD_COLUMN_ALIASES.items():
        matches = [column for alias in aliases for column in by_lower.get(alias, [])]
        if len(matches) > 1:
            raise ValueError(f"{where}: columns {matches} all name {canonical!r}; keep one")
        if matches:
            resolved[canonical] = matches[0]
        elif canonical in REQUIRED_RECORD_COLUMNS:
            also = f" (also accepted: {', '.join(aliases[1:])})" if len(aliases) > 1 else ""
            raise ValueError(f"{where}: missing column {canonical!r}{also}; columns found: {list(found)}")
    return resolved


def _numbers(values: pd.Series, column: str, where: str, rows: np.ndarray, allow_missing: bool = False) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    missing = values.isna().to_numpy()
    bad = ~np.isfinite(numbers) & ~(missing & allow_missing)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        problem = " is empty" if missing[row] else f"={values.iloc[row]!r} is not a finite number"
        raise ValueError(f"{where}: data row {rows[row]}: {column}{problem}")
    return numbers


def _check_range(values: np.ndarray, name: str, limit: float, where: str, what: str, rows: np.ndarray) -> None:
    outside = np.flatnonzero(np.abs(values) > limit)
    if len(outside):
        row = int(outside[0])
        raise ValueError(
            f"{where}: data row {rows[row]}: {name}={float(values[row])!r} is outside [-{limit:g}, {limit:g}] ({what})"
        )


def _parse_times(values: pd.Series, column: str, where: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Local wall-clock seconds, absolute seconds and wall-clock timestamps of ISO 8601 times, row by row."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        raise ValueError(
            f"{where}: column {column!r} holds numbers ({values.iloc[0]!r}); give local wall-clock times such as "
            f"2024-05-03 08:15:00 (an epoch number says nothing about the local clock the model needs)"
        )
    local_s, time_s, local_time, has_offset = [], [], [], set()
    for row, value in zip(rows, values):
        try:
            stamp = parse_time(value)
        except ValueError as error:
            raise ValueError(f"{where}: data row {row}: {column}{error}") from None
        has_offset.add(stamp.tzinfo is not None)
        local_time.append(_wall_clock(stamp))
        local_s.append((local_time[-1] - _EPOCH) // _SECOND)
        time_s.append(_absolute_seconds(stamp))
    if len(has_offset) > 1:
        raise ValueError(f"{where}: column {column!r} mixes times with and without a UTC offset; use one form")
    return np.asarray(local_s, dtype=np.int64), np.asarray(time_s, dtype=np.int64), local_time


def parse_time(value) -> pd.Timestamp:
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


def _absolute_seconds(stamp: pd.Timestamp) -> int:
    absolute = stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp
    return (absolute - _EPOCH) // _SECOND


# ----------------------------------------------------------------------------------------------------- features
def prepare_records(
    records: pd.DataFrame, retriever, config, max_duration_hours: float | None = DEFAULT_MAX_DURATION_HOURS
) -> pd.DataFrame:
    """The records of `parse_records` a model reads, with their model features: the window (the last
    `history_length + current_length`) and, for a `candidate_history` model, the user's earlier records before it (the
    most recent `max_past_records` in all), which only its candidate statistics read.

    Adds `part` (earlier/history/current), `x`, `y` (Web Mercator m), `day` (0 = Monday), `hour`, `duration` (the
    model's float32 hours, leakage rule applied; NaN on earlier records), `cell_id` (-1 outside every candidate cell)
    and `poi` (the cell's POI frequencies). `max_duration_hours` None or 0 leaves durations unclipped (the builder's
    `--max-duration-hours 0`).
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
    read = max(needed, config.max_past_records) if config.candidate_history else needed
    kept = records.iloc[-read:].reset_index(drop=True).copy()
    earlier = len(kept) - needed
    x, y = lonlat_to_mercator(kept["longitude"].to_numpy(), kept["latitude"].to_numpy())
    rows, inside_area = retriever.locate(np.stack([x, y], axis=1))
    if not inside_area.all():
        record = kept.iloc[int(np.flatnonzero(~inside_area)[0])]
        lat_range = (retriever.latlon[:, 0].min(), retriever.latlon[:, 0].max())
        lon_range = (retriever.latlon[:, 1].min(), retriever.latlon[:, 1].max())
        raise ValueError(
            f"data row {record['row']}: latitude={float(record['latitude'])!r}, "
            f"longitude={float(record['longitude'])!r} lies "
            f"outside city {retriever.name!r} (its cells span latitude {lat_range[0]:.4f}..{lat_range[1]:.4f}, "
            f"longitude {lon_range[0]:.4f}..{lon_range[1]:.4f}); is this the right city?"
        )

    window = kept.iloc[earlier:]
    duration, _ = record_durations(window["time_s"].to_numpy(), np.array([0]), np.array([needed]),
                                   max_duration_hours or None)
    given = window["duration_hours"].to_numpy(dtype=np.float64)
    if max_duration_hours:
        given = np.minimum(given, max_duration_hours)
    duration, _ = leakage_free_durations(np.where(np.isnan(given), duration, given)[None])

    day, hour = day_and_hour(kept["local_s"].to_numpy(dtype=np.int64))
    poi = np.zeros((len(kept), retriever.poi_frequency.shape[1]), dtype=np.float32)
    known = rows >= 0
    poi[known] = retriever.poi_frequency[rows[known]]
    return kept.assign(
        part=["earlier"] * earlier + ["history"] * config.history_length + ["current"] * config.current_length,
        x=x,
        y=y,
        day=day,
        hour=hour,
        duration=np.r_[np.full(earlier, np.nan), duration[0]].astype(np.float32),
        cell_id=np.where(known, retriever.cell_ids[np.maximum(rows, 0)], -1),
        poi=list(poi),
    )


def query_features(at, prepared: pd.DataFrame) -> tuple[int, int, float]:
    """Day, hour and gap in hours from the last record of the visit to predict at local time `at`."""
    try:
        stamp = parse_time(at)
    except ValueError as error:
        raise ValueError(f"at{error}") from None
    last = prepared.iloc[-1]
    if stamp.tzinfo is not None:  # an offset: the gap is between absolute times
        gap_s = _absolute_seconds(stamp) - int(last["time_s"])
    else:
        gap_s = (stamp - _EPOCH) // _SECOND - int(last["local_s"])
    if gap_s < 0:
        raise ValueError(f"at={at!r} is {-gap_s / 3600:.2f} h before the last record ({last['local_time']}); "
                         f"the visit to predict must come after the records")
    day, hour = day_and_hour(np.array([(_wall_clock(stamp) - _EPOCH) // _SECOND], dtype=np.int64))
    return int(day[0]), int(hour[0]), float(hours_between(0, gap_s))


def model_inputs_from_records(prepared: pd.DataFrame | Sequence[pd.DataFrame], config, at=None) -> dict:
    """A batch in the dtypes of the training samples from `prepare_records`' output (one user's frame or a list);
    `at` (local time of the visit to predict, one or one per user) is required by `at_time` models and refused by
    `next` ones."""
    import torch

    frames = [prepared] if isinstance(prepared, pd.DataFrame) else list(prepared)
    times = list(at) if isinstance(at, (list, tuple)) else [at] * len(frames)
    if len(times) != len(frames):
        raise ValueError(f"at gives {len(times)} times for {len(frames)} users; give one time, or one per user")
    batch = {}
    for part in ("history", "current"):
        rows = [frame[frame["part"] == part] for frame in frames]
        batch[f"{part}_coordinates"] = torch.tensor(np.stack([r[["x", "y"]].to_numpy(dtype=np.float64) for r in rows]))
        for name, column, dtype in (("day", "day", np.int64), ("hour", "hour", np.int64),
                                    ("duration", "duration", np.float32), ("cell", "cell_id", np.int64)):
            batch[f"{part}_{name}"] = torch.tensor(np.stack([r[column].to_numpy(dtype=dtype) for r in rows]))
        batch[f"{part}_poi"] = torch.tensor(np.stack([np.stack(r["poi"].to_list()).astype(np.float32) for r in rows]))
    given = [time for time in times if time is not None]
    if config.task_mode == "at_time":
        if len(given) < len(times):
            raise ValueError("this model was trained for task_mode='at_time' (where will the user be at a given time?): "
                             "give the local time of the visit to predict, --at / at=, e.g. 2024-05-03 18:00")
        query = np.array([query_features(time, frame) for time, frame in zip(times, frames)])
        batch["target_day"] = torch.tensor(query[:, 0].astype(np.int64))
        batch["target_hour"] = torch.tensor(query[:, 1].astype(np.int64))
        batch["target_time_gap"] = torch.tensor(query[:, 2], dtype=torch.float32)
    elif given:
        raise ValueError(f"at={given[0]!r} is given, but this model was trained for task_mode='next' (it predicts the "
                         f"next visit, whenever it happens); drop --at, or use a model trained with --task_mode at_time")
    if config.candidate_history:
        batch.update({name: torch.from_numpy(values) for name, values in past_records(frames).items()})
    return batch


def past_records(frames: Sequence[pd.DataFrame]) -> dict[str, np.ndarray]:
    """The `past_*` fields (`history_nextlocllm.PAST_COLUMNS`) of `prepare_records` frames: every row of each (its
    earlier records and the window), hours before its last record, left-padded to the longest frame."""
    length = max(len(frame) for frame in frames)
    out = {"past_cell": np.full((len(frames), length), -1, dtype=np.int64),
           "past_day": np.zeros((len(frames), length), dtype=np.int64),
           "past_hour": np.zeros((len(frames), length), dtype=np.int64),
           "past_hours_ago": np.zeros((len(frames), length), dtype=np.float32),
           "past_mask": np.zeros((len(frames), length), dtype=bool)}
    for row, frame in enumerate(frames):
        columns = slice(length - len(frame), length)
        time_s = frame["time_s"].to_numpy(dtype=np.int64)
        out["past_cell"][row, columns] = frame["cell_id"].to_numpy(dtype=np.int64)
        out["past_day"][row, columns] = frame["day"].to_numpy(dtype=np.int64)
        out["past_hour"][row, columns] = frame["hour"].to_numpy(dtype=np.int64)
        out["past_hours_ago"][row, columns] = hours_between(time_s, time_s[-1])
        out["past_mask"][row, columns] = True
    return out


__all__ = [
    "RECORD_COLUMN_ALIASES",
    "RECORD_COLUMNS_TABLE",
    "DEFAULT_MAX_DURATION_HOURS",
    "DEFAULT_ENCODING",
    "BUILDER_NAMES",
    "LATITUDE_ALIASES",
    "LONGITUDE_ALIASES",
    "USER_ALIASES",
    "time_order",
    "is_repeated_record",
    "day_and_hour",
    "hours_between",
    "record_durations",
    "leakage_free_durations",
    "text_codec",
    "decoding",
    "first_undecodable",
    "read_table",
    "first_line",
    "sniff_sep",
    "split_users",
    "read_records",
    "parse_records",
    "parse_time",
    "prepare_records",
    "query_features",
    "model_inputs_from_records",
    "past_records",
]
