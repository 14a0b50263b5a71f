"""Shared reader helpers: table reading, column resolution, time parsing, canonical records.

Every reader returns a :class:`RawInput` whose ``records`` frame has the canonical columns

* ``user_id`` (string), ``ts`` (int64 seconds, absolute -- used for order and durations),
  ``local_ts`` (int64 seconds of the local wall clock -- used for day of week and hour),
* ``lat``, ``lon`` (WGS84 degrees) -- or ``x``/``y`` already projected (YJMob virtual grid),
* optional ``venue_id``, ``category``, ``root_category`` (strings), ``poi_class`` (class name).

and an optional ``pois`` frame (``lat``, ``lon`` and ``category``/``root_category``, ``poi_class``
or OSM tag columns).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...modeling.records_nextlocllm import (BUILDER_NAMES, DEFAULT_ENCODING, LATITUDE_ALIASES, LONGITUDE_ALIASES,
                                           USER_ALIASES, decoding, first_line, read_table, sniff_sep, text_codec)
from ..report import BuildReport

# Input field -> column names tried in order (case-insensitive). Position and user names are those of inference's
# records (`records_nextlocllm`), under the builder's names (`BUILDER_NAMES`, the one map between the two
# vocabularies); `time` here is the absolute (UTC) time, unlike inference's local clock.
FIELD_ALIASES: dict[str, list[str]] = {
    "user": list(USER_ALIASES),
    "time": ["utc_time", "time", "timestamp", "datetime", "ts", "checkin_time", "date_time"],
    BUILDER_NAMES["latitude"]: list(LATITUDE_ALIASES),
    BUILDER_NAMES["longitude"]: list(LONGITUDE_ALIASES),
    "venue": ["venue_id", "poi_id", "location_id", "venue", "place_id", "poi_idx"],
    "category": ["category_name", "category", "venue_category", "poi_category"],
    "root_category": ["root_category", "l1_category"],
    "tz_offset_min": ["tz_offset_min", "timezone_offset_min", "tz_offset"],
    "local_time": ["local_time"],
    "poi_class": ["poi_class"],
}
RECORD_REQUIRED = ("user", "time", "lat", "lon")
RECORD_OPTIONAL = ("venue", "category", "root_category", "tz_offset_min", "local_time", "poi_class")

EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


@dataclass
class RawInput:
    records: pd.DataFrame
    pois: pd.DataFrame | None = None
    grid: object | None = None  # a fixed Grid (YJMob virtual grid); None -> fitted to the records
    source: dict = field(default_factory=dict)
    poi_source: str = ""


@dataclass
class ReadOptions:
    columns: dict | None = None
    poi_columns: dict | None = None
    time_format: str | None = None
    time_unit: str | None = None
    timezone: str | None = None
    max_invalid_fraction: float = 0.05
    stay_distance_m: float = 200.0
    stay_min_minutes: float = 20.0
    show_progress: bool = True
    encoding: str = DEFAULT_ENCODING  # of every text file read (records, POIs)
    extra: dict = field(default_factory=dict)


def encoding_option(text: str) -> str:
    """The `--encoding` option's type: an encoding Python does not know is refused while parsing."""
    try:
        text_codec(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def parse_mapping(text: str | None) -> dict | None:
    """``"user=uid,time=ts"`` -> ``{"user": "uid", "time": "ts"}``."""
    if not text:
        return None
    if isinstance(text, dict):
        return dict(text)
    out = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"bad column mapping {part!r}: expected FIELD=COLUMN")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def resolve_columns(columns, mapping: dict | None, required, optional, what: str = "input") -> dict[str, str]:
    """Find the column of each field: explicit ``mapping`` first, then case-insensitive aliases.

    A required field that cannot be found, or a mapped column that does not exist, raises a
    ``ValueError`` naming the field, the tried names and the available columns.
    """
    cols = list(columns)
    lower = {str(c).lower(): c for c in cols}
    mapping = dict(mapping or {})
    known = set(required) | set(optional)
    unknown = set(mapping) - known
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {sorted(unknown)} in the column mapping; known fields: {sorted(known)}")
    out: dict[str, str] = {}
    for f in list(required) + list(optional):
        if f in mapping:
            c = mapping[f]
            if c not in cols:
                hit = lower.get(str(c).lower())
                if hit is None:
                    raise ValueError(f"{what}: column {c!r} (mapped to field {f!r}) not found; available columns: {cols}")
                c = hit
            out[f] = c
            continue
        for alias in FIELD_ALIASES.get(f, [f]):
            if alias in lower:
                out[f] = lower[alias]
                break
        else:
            if f in required:
                raise ValueError(
                    f"{what}: missing required field {f!r}: none of the columns {FIELD_ALIASES.get(f, [f])} found; "
                    f"available columns: {cols}. Map it explicitly, e.g. --columns {f}=YOUR_COLUMN"
                )
    return out


def to_seconds(t: pd.Series) -> np.ndarray:
    """tz-aware or naive datetime series (no NaT) -> int64 seconds since the epoch."""
    if getattr(t.dt, "tz", None) is None:
        t = t.dt.tz_localize("UTC")
    return ((t - EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def parse_times(s: pd.Series, field_name: str, report: BuildReport, opts: ReadOptions, utc: bool = True,
                reason: str = "unparseable_time", fmt: str | None = None) -> pd.Series:
    """Parse a time column; unparseable rows become NaT and are counted (or raise if too many)."""
    fmt = fmt or opts.time_format
    if opts.time_unit or pd.api.types.is_numeric_dtype(s):
        t = pd.to_datetime(pd.to_numeric(s, errors="coerce"), unit=opts.time_unit or "s", utc=utc, errors="coerce")
    else:
        s = s.astype("string")
        t = pd.to_datetime(s, format=fmt or "ISO8601", utc=utc, errors="coerce")
        if fmt is None and t.isna().mean() > opts.max_invalid_fraction and s.notna().any():
            t = pd.to_datetime(s, format="mixed", utc=utc, errors="coerce")
    bad = t.isna().to_numpy()
    if bad.any():
        report.check_fraction(reason, int(bad.sum()), len(t), field_name, s[bad].iloc[0], opts.max_invalid_fraction)
    return t


def local_clock(utc: pd.Series, report: BuildReport, opts: ReadOptions, tz_offset_min: pd.Series | None = None,
                local_time: pd.Series | None = None, default_timezone: str | None = None):
    """Local wall-clock seconds for day-of-week/hour.  Priority: per-row offset, local time column,
    ``--timezone`` (IANA name), the format's default zone, else UTC (noted in the report).

    Returns ``(local_seconds float array with NaN where unknown, description)``.
    """
    ok = utc.notna().to_numpy()
    out = np.full(len(utc), np.nan)
    if tz_offset_min is not None:
        off = pd.to_numeric(tz_offset_min, errors="coerce").to_numpy(dtype=np.float64)
        bad = ok & ~np.isfinite(off)
        if bad.any():
            report.check_fraction("invalid_tz_offset", int(bad.sum()), int(ok.sum()), "tz_offset_min",
                                  tz_offset_min[bad].iloc[0], opts.max_invalid_fraction)
        good = ok & np.isfinite(off)
        out[good] = to_seconds(utc[good]) + off[good] * 60.0
        return out, "per-row tz_offset_min"
    if local_time is not None:
        lt = parse_times(local_time, "local_time", report, opts, utc=False, reason="unparseable_local_time")
        good = ok & lt.notna().to_numpy()
        if getattr(lt.dt, "tz", None) is not None:
            lt = lt.dt.tz_localize(None)
        out[good] = to_seconds(lt[good])
        return out, "local_time column"
    tz = opts.timezone or default_timezone
    if tz:
        conv = utc[ok].dt.tz_convert(tz).dt.tz_localize(None)
        out[ok] = to_seconds(conv)
        return out, f"time zone {tz}"
    out[ok] = to_seconds(utc[ok])
    report.note("no time-zone information: day of week and hour are in UTC (pass --timezone NAME)")
    return out, "UTC (no time zone given)"


def make_records(report: BuildReport, user, utc: pd.Series, local_seconds, lat, lon, **extra) -> pd.DataFrame:
    """Assemble the canonical frame; rows with an unparsed time or unknown local time are removed
    (already counted by :func:`parse_times`/:func:`local_clock`)."""
    local_seconds = np.asarray(local_seconds, dtype=np.float64)
    ok = utc.notna().to_numpy() & np.isfinite(local_seconds)
    df = pd.DataFrame({
        "user_id": pd.Series(user).astype("string").to_numpy()[ok],
        "ts": to_seconds(utc[ok]),
        "local_ts": local_seconds[ok].astype(np.int64),
        "lat": pd.to_numeric(pd.Series(lat), errors="coerce").to_numpy(dtype=np.float64)[ok],
        "lon": pd.to_numeric(pd.Series(lon), errors="coerce").to_numpy(dtype=np.float64)[ok],
    })
    for k, v in extra.items():
        if v is not None:
            df[k] = pd.Series(v).astype("string").to_numpy()[ok]
    return df


def records_from_frame(df: pd.DataFrame, report: BuildReport, opts: ReadOptions, mapping: dict | None = None,
                       default_timezone: str | None = None, what: str = "input") -> pd.DataFrame:
    """Generic tabular check-ins (any column names, resolved by ``mapping`` + aliases)."""
    cols = resolve_columns(df.columns, mapping, RECORD_REQUIRED, RECORD_OPTIONAL, what)
    utc = parse_times(df[cols["time"]], cols["time"], report, opts)
    local, how = local_clock(
        utc, report, opts,
        tz_offset_min=df[cols["tz_offset_min"]] if "tz_offset_min" in cols else None,
        local_time=df[cols["local_time"]] if "local_time" in cols and "tz_offset_min" not in cols else None,
        default_timezone=default_timezone,
    )
    report.info["local_time_from"] = how
    extra = {k_out: df[cols[k]] if k in cols else None
             for k, k_out in (("venue", "venue_id"), ("category", "category"), ("root_category", "root_category"),
                              ("poi_class", "poi_class"))}
    return make_records(report, df[cols["user"]], utc, local, df[cols["lat"]], df[cols["lon"]], **extra)


def list_files(path, pattern: str) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    files = sorted(p for p in path.rglob(pattern) if p.is_file())
    if not files:
        raise ValueError(f"no files matching {pattern!r} under {path}")
    return files

