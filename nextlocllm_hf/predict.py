"""Next-location prediction for one user: `python -m nextlocllm_hf.predict --model DIR --city NAME --input FILE`.

The input is one user's recent visits, one row per record, in any order (rows are sorted by time), with the
columns listed at the end.

Rows are turned into exactly the record features of the training samples by the rule the dataset builder uses
(`nextlocllm_hf.modeling.records_nextlocllm`, shipped with the model's code): exact duplicates
(same time and position) are dropped as the builder drops them, the last `history_length + current_length` records
are kept (fewer is an error: the training data never pads), positions are projected to Web Mercator, day of week
(0 = Monday) and hour come from the local clock, a record's duration is the hours to the next record clipped to
the cap the city was built with (the builder's `--max-duration-hours`, 24 h by default, carried by the city's
retriever), and the last current record's duration is the median of the other input durations (its real gap would
be the unknown future visit). A record's POI frequencies are those of its grid cell among the city's candidate cells,
placed on the city's grid as stored in the model's retriever (`CityRetriever.locate`; a retriever saved before the
grid was stored reads the cell size from the centroids' spacing); a record in no candidate cell gets zero POI
frequencies (a cell the builder kept out had none), and one outside the city's grid is an error (the builder drops
records outside its grid).

Two tasks, fixed when the model was trained (`config.task_mode`): `next` (where will the user go next?) takes the
records alone; `at_time` (where will the user be at t?) also needs `--at "2012-06-01 18:00"`, the local wall-clock
time of the visit to predict, which gives the query's day, hour and the gap since the last record (it may not precede
the last record). Each model refuses the other task's input with a message saying which it was trained for.

The model ranks the city's cells with its own head (KD-tree distance to its point, mixture density, or the candidate
ranker); `distance_m` is the great-circle distance from the predicted point (`geometry_nextlocllm.haversine_m`).
This CLI is a thin layer over the `next-location` pipeline that ships with the model
(`nextlocllm_hf.modeling.pipeline_nextlocllm`), which also serves users without this package.
`--cells DIR` adds a city built by `dataset_scripts/build_city.py` for zero-shot use; `--plot out.png` draws the
trajectory, the predicted point and the top-k cells (an existing file is replaced only with `--overwrite`; a file
another command is writing is refused). A CSV/TSV input is read as UTF-8 (a byte-order mark allowed) unless
`--encoding` names its encoding; one that does not decode is refused with its line.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .cli import entry_point, non_negative_float, positive_int, program_name
from .data.formats.common import encoding_option
from .locks import exclusive_output
from .modeling.pipeline_nextlocllm import NextLocationPipeline
from .modeling.records_nextlocllm import (
    DEFAULT_ENCODING,
    RECORD_COLUMNS_TABLE,
    model_inputs_from_records,
    prepare_records,
    read_records,
    read_table,
)
from .modeling.retrieval_nextlocllm import CityRetriever
from .outputs import refuse_occupied, replacing_file

__all__ = ["main", "predict_next", "format_prediction", "plot_prediction", "table_of", "model_inputs_from_records",
           "prepare_records", "read_records"]


def table_of(result: dict) -> pd.DataFrame:
    """A pipeline result as the CLI's table: `rank, cell_id, lat, lon, distance_m`, the prediction in `attrs`."""
    table = pd.DataFrame(result["cells"])[["rank", "cell_id", "lat", "lon", "distance_m"]]
    table.attrs.update(city=result["city"], predicted_lat=result["predicted_lat"],
                       predicted_lon=result["predicted_lon"])
    if "predicted_duration_hours" in result:
        table.attrs["predicted_duration_hours"] = result["predicted_duration_hours"]
    return table


def predict_next(
    model,
    city: str,
    records: str | os.PathLike | pd.DataFrame,
    k: int | None = None,
    at: str | None = None,
    max_duration_hours: float | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> pd.DataFrame:
    """Top-k next cells of one user in `city` (see `table_of`; k: 10, or every cell of a smaller city) from a records
    file (text in `encoding`) or DataFrame."""
    frame = read_table(records, encoding)  # read once
    read_records(frame, where=str(records) if isinstance(records, (str, os.PathLike)) else None)  # one user's, checked
    pipe = NextLocationPipeline(model=model, device=model.device)
    return table_of(_one_user(pipe(frame, city=city, k=k, at=at, max_duration_hours=max_duration_hours)))


def _one_user(result: dict | list) -> dict:
    """The pipeline's result for one user's records: a dict, or a one-item list when a user column names the user."""
    return result[0] if isinstance(result, list) else result


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
    parser = argparse.ArgumentParser(
        prog=program_name("nextlocllm_hf.predict"), description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1] + "\ncolumns of --input (aliases case-insensitive):\n\n" + RECORD_COLUMNS_TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a saved model folder or Hub id")
    parser.add_argument("--city", required=True, help="a city of the model (or the city of --cells)")
    parser.add_argument("--input", required=True, help="one user's records: CSV (or TSV/Parquet), columns listed below")
    parser.add_argument("--encoding", type=encoding_option, default=DEFAULT_ENCODING,
                        help="text encoding of a CSV/TSV --input, e.g. latin-1 [utf-8; a byte-order mark is allowed]")
    parser.add_argument("--k", type=positive_int, default=None,
                        help="number of candidate cells to list [10, or every cell of a smaller city]")
    parser.add_argument("--cells", help="a built city folder (dataset_scripts/build_city.py) to add for zero-shot use")
    parser.add_argument("--plot", help="write a figure of the trajectory and the prediction to this PNG file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    parser.add_argument(
        "--max_duration_hours", type=non_negative_float,
        help="override the duration cap the city was built with (its retriever carries it); 0 = none",
    )
    parser.add_argument("--at", help='local time of the visit to predict, e.g. "2012-06-01 18:00" (at_time models only)')
    args = parser.parse_args(argv)
    if args.plot and not Path(args.plot).resolve().parent.is_dir():  # the lock file goes beside the figure
        raise FileNotFoundError(f"--plot {args.plot}: folder {Path(args.plot).parent} does not exist")
    # One writer per figure: held from the check to the final rename.
    with exclusive_output(args.plot) if args.plot else nullcontext():
        _predict(args)


def _predict(args: argparse.Namespace) -> None:
    """The command past its options, under the --plot file's lock."""
    from .modeling.modeling_nextlocllm import NextLocLLMForCoordinateRegression

    if args.plot:  # checked before any work, since the figure is written last
        refuse_occupied(args.plot, overwrite=args.overwrite, option="--plot", what="file")
    records = read_table(args.input, args.encoding)  # read once
    read_records(records, where=args.input)  # one user's records, checked before loading the model: fails fast
    model = NextLocLLMForCoordinateRegression.from_pretrained(args.model)
    pipe = NextLocationPipeline(model=model, device=model.device)
    cells = None
    if args.cells:
        cells = CityRetriever.from_folder(args.cells)  # the cells only: the city's records and splits stay unread
        if cells.name != args.city:
            raise ValueError(f"--cells {args.cells} holds city {cells.name!r}, not --city {args.city!r}")
    elif args.city not in model.cities:
        raise ValueError(
            f"--city {args.city!r} is not a city of this model; its cities: {model.cities}. For a new city, add "
            f"its cells with --cells CITY_DIR (a folder built by dataset_scripts/build_city.py)"
        )
    result = pipe(records, city=args.city, cells=cells, k=args.k, at=args.at,
                  max_duration_hours=args.max_duration_hours)
    result = _one_user(result)
    table, prepared = table_of(result), result["records"]
    print(format_prediction(table, prepared))
    if args.plot:
        with replacing_file(args.plot) as partial:
            plot_prediction(table, prepared, partial)
        print(f"plot: {Path(args.plot)}")


if __name__ == "__main__":
    sys.exit(main())
