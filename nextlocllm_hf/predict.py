"""Next-location prediction from visit records: `python -m nextlocllm_hf.predict --model DIR --city NAME --input FILE`.

The input holds visits, one row per record, in any order (rows are sorted by time), with the columns listed at the
end: `latitude`, `longitude`, `local_time`, optionally `duration_hours` and a user column (`user_id`, `user`, `uid`,
`userid`). Every other column is ignored, so rows cut from a check-in file (e.g. Foursquare's `user_id, venue_id,
category_name, ..., latitude, longitude, utc_time, local_time, ...`) are read as they are. Without a user column the
rows are one user's; with one, each user gets a table of its own, headed by the user.

Rows are turned into exactly the record features of the training samples by the rule the dataset builder uses
(`nextlocllm_hf.modeling.records_nextlocllm`, shipped with the model's code): exact duplicates
(same time and position) are dropped as the builder drops them, the last `history_length + current_length` records
are the window (fewer is an error: the training data never pads; a `candidate_history` model also reads the earlier
ones), positions are projected to Web Mercator, day of week (0 = Monday) and hour come from the local clock, a record's
duration is the hours to the next record clipped to the cap the city was built with (the builder's
`--max-duration-hours`, 24 h by default, carried by the city's retriever), and the last current record's duration is
the median of the other input durations (its real gap would be the unknown future visit). A record's POI frequencies
are those of its grid cell among the city's candidate cells (`CityRetriever.locate`); a record in no candidate cell
gets zero POI frequencies (a cell the builder kept out had none), and one outside the city's grid is an error (the
builder drops records outside its grid).

Two tasks, fixed when the model was trained (`config.task_mode`): `next` (where will the user go next?) takes the
records alone; `at_time` (where will the user be at t?) also needs `--at "2012-06-01 18:00"`, the local wall-clock
time of the visit to predict, which gives the query's day, hour and the gap since the last record (it may not precede
the last record). Each model refuses the other task's input with a message saying which it was trained for.

Each table lists the top-k cells, best first: `probability` (the model's: for the candidate ranker the softmax of its
scores over its candidates, 0 for a cell past them; the line above the table says which), `score` (what the head
ranked by), `distance_from_last_m` (great-circle metres from the last record to the cell centre), the centre's
`lat`/`lon`, `poi_mix` (the share of the cell's POIs in each class) and `top_categories` (its most common venue
categories, where the city keeps their names). Above it: the last record, and the position head's regressed point
(what ranks the cells of the `point`/`mixture` heads; not the answer). `--hold_out_last` holds out each user's last
record as the true next visit, predicts from the records before it and says at which rank the top-k hit it (an
`at_time` model is asked about that visit's time). The output is the `next-location` pipeline's, which ships with the
model (`nextlocllm_hf.modeling.pipeline_nextlocllm`, for users without this package), formatted here.

`--cells DIR` adds a city built by `dataset_scripts/build_city.py` for zero-shot use; `--plot out.png` draws, one
panel per user, every record read, the top-k cells with their ranks, the regressed point, the held-out visit and the
city's cell centres around them (an existing file is replaced only with `--overwrite`; a file another command is
writing is refused). A CSV/TSV input is read as UTF-8 (a byte-order mark allowed) unless `--encoding` names its
encoding; one that does not decode is refused with its line.
"""

from __future__ import annotations

import argparse
import math
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
from .modeling.pipeline_nextlocllm import NextLocationPipeline, parse_users
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

__all__ = ["main", "predict_next", "format_prediction", "plot_prediction", "table_of", "TABLE_COLUMNS",
           "model_inputs_from_records", "prepare_records", "read_records"]

SHOWN = 3  # POI classes and venue categories shown per cell


def _number(digits: int):
    """A number with `digits` decimals, `-` for NaN (no probability, or no score)."""
    return lambda value: "-" if np.isnan(value) else f"{value:.{digits}f}"


def mix_text(mix: dict[str, float] | None) -> str:
    """`Commercial 60%, Education 25%, ...`: the largest POI class shares of a cell; `-` without counts or POIs."""
    return ", ".join(f"{name} {share:.0%}" for name, share in list(mix.items())[:SHOWN]) if mix else "-"


def categories_text(names: list[str] | None) -> str:
    """A cell's most common venue categories; `-` where the city keeps no names."""
    return ", ".join(names[:SHOWN]) if names else "-"


#: A result's cell fields in the order of the table (the pipeline's names), each with how the CLI writes it.
CELL_TEXT = {"rank": str, "cell_id": str, "probability": _number(3), "score": _number(3),
             "distance_from_last_m": _number(1), "lat": _number(6), "lon": _number(6), "poi_mix": mix_text,
             "top_categories": categories_text}
TABLE_COLUMNS = tuple(CELL_TEXT)


def table_of(result: dict) -> pd.DataFrame:
    """A pipeline result as a table: one row per ranked cell (`TABLE_COLUMNS`), everything else of the result but
    its `records` in `attrs`."""
    table = pd.DataFrame(result["cells"], columns=list(TABLE_COLUMNS))
    table.attrs.update({key: value for key, value in result.items() if key not in ("cells", "records")})
    return table


def predict_next(
    model,
    city: str,
    records: str | os.PathLike | pd.DataFrame,
    k: int | None = None,
    at: str | None = None,
    max_duration_hours: float | None = None,
    encoding: str = DEFAULT_ENCODING,
    hold_out_last: bool = False,
) -> pd.DataFrame:
    """Top-k next cells of one user in `city` (see `table_of`; k: 10, or every cell of a smaller city) from a records
    file (text in `encoding`) or DataFrame; with `hold_out_last`, from all but the last record, which is the true
    next visit (`attrs["held_out"]`)."""
    frame = read_table(records, encoding)  # read once
    read_records(frame, where=str(records) if isinstance(records, (str, os.PathLike)) else None)  # one user's, checked
    pipe = NextLocationPipeline(model=model, device=model.device)
    result = pipe(frame, city=city, k=k, at=at, max_duration_hours=max_duration_hours, hold_out_last=hold_out_last)
    return table_of(result[0] if isinstance(result, list) else result)  # a user column naming one user: a list


# ---------------------------------------------------------------------------------------------------- output
def format_prediction(result: dict) -> str:
    """One pipeline result as the CLI prints it: who and what was read, the last record, the regressed point, the
    table of ranked cells and, with a held-out visit, whether and where the top-k hit it."""
    records, table = result["records"], table_of(result)
    parts = records["part"].value_counts()
    read = " + ".join(f"{int(parts[part])} {part}" for part in ("earlier", "history", "current") if part in parts)
    who = f"user {result['user']}, " if result["user"] is not None else ""
    last, point = result["last_record"], result["regressed_point"]
    lines = [
        f"{who}city {result['city']!r}: {len(records)} records read ({read}), "
        f"{records['local_time'].iloc[0]} .. {records['local_time'].iloc[-1]}",
        f"last record: {last['local_time']} at lat {last['lat']:.6f}, lon {last['lon']:.6f}",
        f"regressed point (the position head's, not the answer): lat {point['lat']:.6f}, lon {point['lon']:.6f}, "
        f"{point['distance_from_last_m']:.1f} m from the last record",
    ]
    if "predicted_duration_hours" in result:
        lines.append(f"predicted stay: {result['predicted_duration_hours']:.2f} h")
    basis = result["probability_basis"] or "none: a single regressed point is no distribution"
    lines += [f"top-{len(table)} cells, best first. probability: {basis}.",
              "distance_from_last_m: great-circle metres from the last record to the cell centre (lat, lon)."]
    lines += table_lines(table)
    if "held_out" in result:
        lines.append(held_out_text(result["held_out"], len(table)))
    return "\n".join(lines)


def table_lines(table: pd.DataFrame) -> list[str]:
    """The table's header and rows: numbers right-aligned (`-` for NaN), the text columns left-aligned, last."""
    columns = [[name, *map(text, table[name])] for name, text in CELL_TEXT.items()]
    widths = [max(map(len, column)) for column in columns]
    lines = []
    for row in range(len(table) + 1):
        numbers = " ".join(column[row].rjust(width + 1) for column, width in zip(columns[:-2], widths))
        texts = "  ".join(column[row].ljust(width) for column, width in zip(columns[-2:], widths[-2:]))
        lines.append(f"{numbers}  {texts}".rstrip())
    return lines


def held_out_text(visit: dict, k: int) -> str:
    where = f"true next visit (held out): {visit['local_time']} at lat {visit['lat']:.6f}, lon {visit['lon']:.6f}"
    if visit["cell_id"] < 0:
        return f"{where}, in no candidate cell: no ranking can hit it"
    verdict = f"hit at rank {visit['rank']} of {k}" if visit["rank"] is not None else f"not in the top-{k}"
    return f"{where}, cell {visit['cell_id']}: {verdict}"


def plot_prediction(results: dict | Sequence[dict], path: str | os.PathLike,
                    city_cells: np.ndarray | None = None) -> None:
    """One panel per pipeline result (Agg, no display): every record read (the window's current records bolder), the
    last record, the top-k cells with their ranks, the regressed point, the held-out next visit when there is one,
    and `city_cells` (`(N, 2)` lat/lon of the city's cell centres) in view as light grey dots, for context."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = [results] if isinstance(results, dict) else list(results)
    columns = min(len(results), 3)
    rows = math.ceil(len(results) / columns)
    figure = Figure(figsize=(7 * columns, 7 * rows))
    FigureCanvasAgg(figure)
    for index, result in enumerate(results):
        _draw(figure.add_subplot(rows, columns, index + 1), result, city_cells)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _draw(axes, result: dict, city_cells: np.ndarray | None) -> None:
    """One result's panel (see `plot_prediction`), zoomed to its records, cells, regressed point and held-out visit."""
    from matplotlib.ticker import MaxNLocator

    records, table = result["records"], table_of(result)
    current = records[records["part"] == "current"]
    point, held = result["regressed_point"], result.get("held_out")
    lats = np.r_[records["latitude"], table["lat"], point["lat"], [held["lat"]] if held else []]
    lons = np.r_[records["longitude"], table["lon"], point["lon"], [held["lon"]] if held else []]
    margin_lat = max(0.1 * np.ptp(lats), 0.003)
    margin_lon = max(0.1 * np.ptp(lons), 0.003 / np.cos(np.radians(lats.mean())))
    south, north, west, east = lats.min() - margin_lat, lats.max() + margin_lat, lons.min() - margin_lon, \
        lons.max() + margin_lon
    if city_cells is not None:
        cells = np.asarray(city_cells)
        near = ((cells[:, 0] >= south) & (cells[:, 0] <= north) & (cells[:, 1] >= west) & (cells[:, 1] <= east))
        axes.scatter(cells[near, 1], cells[near, 0], s=8, color="0.82", label="the city's cells", zorder=1)
    axes.plot(records["longitude"], records["latitude"], ".-", color="tab:blue", alpha=0.3, linewidth=0.8,
              label=f"history ({len(records)} records read)", zorder=2)
    axes.plot(current["longitude"], current["latitude"], "o-", color="tab:blue", label="current records", zorder=3)
    axes.scatter(records["longitude"].iloc[-1], records["latitude"].iloc[-1], s=140, facecolors="none",
                 edgecolors="black", label="last record", zorder=4)
    axes.scatter(table["lon"], table["lat"], marker="s", s=70, facecolors="none", edgecolors="tab:orange",
                 label=f"top-{len(table)} cells (rank)", zorder=4)
    for rank, lon, lat in zip(table["rank"], table["lon"], table["lat"]):
        axes.annotate(str(rank), (lon, lat), textcoords="offset points", xytext=(5, 5), fontsize=8,
                      color="tab:orange", zorder=5)
    axes.scatter(point["lon"], point["lat"], marker="x", s=90, color="tab:red", label="regressed point", zorder=5)
    if held:
        verdict = f"rank {held['rank']}" if held["rank"] is not None else f"not in the top-{len(table)}"
        axes.scatter(held["lon"], held["lat"], marker="*", s=260, color="tab:green", edgecolors="black",
                     linewidths=0.6, label=f"true next visit ({verdict})", zorder=6)
    axes.set_xlim(west, east)
    axes.set_ylim(south, north)
    # Equal ground scale on both axes: a degree of longitude spans cos(latitude) of a degree of latitude.
    axes.set_aspect(1.0 / np.cos(np.radians(lats.mean())), adjustable="box")
    axes.xaxis.set_major_locator(MaxNLocator(nbins=5))  # degree labels are long: fewer, so they do not collide
    axes.set_xlabel("longitude")
    axes.set_ylabel("latitude")
    who = f"user {result['user']}: " if result["user"] is not None else ""
    axes.set_title(f"{who}next location in {result['city']}")
    axes.legend(loc="best", fontsize=8)


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
    parser.add_argument("--input", required=True,
                        help="visit records: CSV (or TSV/Parquet), columns listed below; a user column gives one "
                             "table per user")
    parser.add_argument("--encoding", type=encoding_option, default=DEFAULT_ENCODING,
                        help="text encoding of a CSV/TSV --input, e.g. latin-1 [utf-8; a byte-order mark is allowed]")
    parser.add_argument("--k", type=positive_int, default=None,
                        help="number of candidate cells to list [10, or every cell of a smaller city]")
    parser.add_argument("--cells", help="a built city folder (dataset_scripts/build_city.py) to add for zero-shot use")
    parser.add_argument("--hold_out_last", action="store_true",
                        help="hold out each user's last record as the true next visit: predict from the records "
                             "before it and say at which rank the top-k hit it (at_time models: asked about its time)")
    parser.add_argument("--plot", help="write a figure to this PNG file: per user, the records, the top-k with their "
                                       "ranks, the city's cells around them and the held-out visit")
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
    parse_users(records, where=args.input)  # every user's records checked before loading the model: fails fast
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
    results = pipe(records, city=args.city, cells=cells, k=args.k, at=args.at,
                   max_duration_hours=args.max_duration_hours, hold_out_last=args.hold_out_last)
    results = results if isinstance(results, list) else [results]
    print("\n\n".join(format_prediction(result) for result in results))
    if args.plot:
        with replacing_file(args.plot) as partial:
            plot_prediction(results, partial, model.retriever(args.city).latlon)
        print(f"plot: {Path(args.plot)}")


if __name__ == "__main__":
    sys.exit(main())
