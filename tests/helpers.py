"""Helpers shared by several test modules (fixtures are in conftest.py). No test module imports another one: what
two of them need lives here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from nextlocllm_hf import CityRetriever
from nextlocllm_hf.batching import CitySamples
from nextlocllm_hf.data import BuildConfig, build_and_save, load_city_splits
from nextlocllm_hf.data.projection import lonlat_to_mercator, mercator_to_lonlat
from nextlocllm_hf.data.synthetic import SyntheticCityParams, generate_synthetic_city

# ------------------------------------------------------------------------- the Earth, written out independently
R_MERCATOR = 6378137.0
R_MEAN = 6371008.8


def forward_mercator(lon_deg, lat_deg):
    """The forward Web Mercator formula, written out independently of the package."""
    return R_MERCATOR * math.radians(lon_deg), R_MERCATOR * math.log(math.tan(math.pi / 4 + math.radians(lat_deg) / 2))


# ------------------------------------------------------------------- a hand-made city of four cells (candidates)
ORIGIN = np.array([-8_235_000.0, 4_970_000.0])  # realistic Web Mercator magnitudes: offsets must survive float64


def great_circle_m(lat, lon, other_lat, other_lon) -> np.ndarray:
    """Great-circle metres on the mean-radius sphere (the haversine formula, written out)."""
    phi, other_phi = np.radians(lat), np.radians(np.asarray(other_lat, dtype=np.float64))
    half_chord = (np.sin((other_phi - phi) / 2) ** 2
                  + np.cos(phi) * np.cos(other_phi) * np.sin(np.radians(np.asarray(other_lon) - lon) / 2) ** 2)
    return 2 * R_MEAN * np.arcsin(np.sqrt(half_chord))


def tiny_retriever(cell_ids=(10, 20, 30, 40)) -> CityRetriever:
    """Four cells at (0, 0), (1000, 0), (0, 1000), (3000, 3000) m from ORIGIN, std (500, 1000), 2 POI classes."""
    xy = ORIGIN + np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0], [3000.0, 3000.0]])
    poi = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.25, 0.75]])
    return CityRetriever("tiny", list(cell_ids), xy, np.zeros((4, 2)), poi, ORIGIN, [500.0, 1000.0])


# ------------------------------------------------------------------------------------- one user's raw records
H, L = 8, 3  # build_model's history/current lengths
INFERENCE_CITY = {"city": "synth-p", "seed": 3, "synthetic": {"n_users": 6, "records_per_user": 40, "extent_km": 3.0}}


def sample_and_records(city_dir: str, index: int = 0, task_mode: str = "next"):
    """A test sample of a built synthetic city and the raw records (oldest first) its inputs were built from: the
    city is generated again from the settings its city.json records."""
    city = load_city_splits(city_dir)
    samples = CitySamples(city.splits["test"], {city.name: city.retriever}, task_mode=task_mode)
    sample = samples[index]
    user = city.splits["test"][index]["user_id"]
    build = city.metadata["source"]["build"]
    history, current = city.metadata["history_length"], city.metadata["current_length"]
    raw, _, _ = generate_synthetic_city(SyntheticCityParams(city=city.name, seed=build["seed"], **build["synthetic"]))
    raw = raw[raw["user_id"] == user].sort_values("ts", kind="stable").drop_duplicates(["ts", "lat", "lon"])
    xy = np.stack(lonlat_to_mercator(raw["lon"].to_numpy(), raw["lat"].to_numpy()), axis=1)
    inputs = np.concatenate([sample["history_coordinates"][0].numpy(), sample["current_coordinates"][0].numpy()])
    stride = city.metadata["stride"]  # windows start at the user's first record, every `stride` records
    window = history + current
    starts = [s for s in range(0, len(raw) - window, stride) if np.array_equal(xy[s:s + window], inputs)]
    assert starts, "the sample's window was not found among its user's raw records"
    return sample, raw.iloc[: starts[0] + window]


def write_csv(raw: pd.DataFrame, path, older: int = 3, window: int = H + L) -> str:
    """The window's records plus a few older ones, rows shuffled, in the documented CSV format."""
    rows = raw.iloc[-(window + older):]
    frame = pd.DataFrame({
        "latitude": rows["lat"].to_numpy(),
        "longitude": rows["lon"].to_numpy(),
        "local_time": pd.to_datetime(rows["local_ts"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy(),
    }).sample(frac=1.0, random_state=0)
    frame.to_csv(path, index=False)
    return str(path)


def latlon_in(retriever: CityRetriever, x: float, y: float) -> tuple[float, float]:
    lon, lat = mercator_to_lonlat(x, y)
    return float(lat), float(lon)


def records_frame(retriever: CityRetriever, n: int = 12) -> pd.DataFrame:
    latlon = [latlon_in(retriever, *retriever.xy[i % retriever.num_cells]) for i in range(n)]
    times = pd.date_range("2024-03-04 08:00", periods=n, freq="90min").strftime("%Y-%m-%d %H:%M:%S")
    return pd.DataFrame({"latitude": [p[0] for p in latlon], "longitude": [p[1] for p in latlon], "local_time": times})


# ------------------------------------------------------------------------------------------- the CLI's output
TEXT_COLUMNS = ("poi_mix", "top_categories")  # the table's last columns, free text


def printed_tables(text: str) -> list[pd.DataFrame]:
    """Every table the predict CLI printed (one per user), its numbers parsed (`-` is NaN), its text columns as
    printed."""
    lines, tables = text.splitlines(), []
    for header, line in enumerate(lines):
        if line.split()[:2] != ["rank", "cell_id"]:
            continue
        names = line.split()
        numeric = [name for name in names if name not in TEXT_COLUMNS]
        starts = [line.index(name) for name in TEXT_COLUMNS]
        rows = []
        for body in lines[header + 1:]:
            if not body.strip() or not body.split()[0].isdigit():
                break
            values = body.split()[:len(numeric)]
            texts = [body[start:end].strip() for start, end in zip(starts, [*starts[1:], None])]
            rows.append([*values, *texts])
        table = pd.DataFrame(rows, columns=[*numeric, *TEXT_COLUMNS])
        for name in numeric:
            table[name] = pd.to_numeric(table[name].replace("-", np.nan))
        tables.append(table.astype({"rank": int, "cell_id": int}))
    return tables


def printed_table(text: str) -> pd.DataFrame:
    """The first table the predict CLI printed (`printed_tables`)."""
    return printed_tables(text)[0]


def build_inference_city(folder: Path | str) -> str:
    """The synthetic city of INFERENCE_CITY with H + L records per sample, written to `folder`; returns its path."""
    config = BuildConfig(city=INFERENCE_CITY["city"], format="synthetic", output=str(folder),
                         seed=INFERENCE_CITY["seed"], history_length=H, current_length=L,
                         synthetic=INFERENCE_CITY["synthetic"], show_progress=False)
    build_and_save(config)
    return str(folder)
