"""The main job end to end on the embedded SmolLM2 backbone, offline, in a few minutes on 2 CPU cores.

1. build two synthetic cities (EPR mobility with daily routines) with `dataset_scripts/build_city.py`'s pipeline;
2. train NextLocLLM on the first with `train.py`'s default recipe, the best form on real check-ins (docs/results.md):
   the candidate ranker over query-time-aware features, the user's whole history and the backbone's states
   (SmolLM2-135M cut to 2 blocks), in the `at_time` task ("where will this user be at t?"); select on validation,
   test once, score the rules and the boosted-tree ranker on the same samples and evaluate zero-shot on the second
   city;
3. reload the exported folder through `AutoModel` and print the top-k cells for one trajectory of the new city;
4. save a figure: validation curve and that trajectory on a map.

    python demo.py [--output_dir outputs/demo] [--max_steps 200] [--overwrite]

An earlier demo in `--output_dir` is replaced only with `--overwrite` (a second `make demo` says so and stops).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from transformers import AutoModel

import nextlocllm_hf  # noqa: F401  (registers NextLocLLM with AutoModel)
import train
from nextlocllm_hf.evaluate import model_samples
from nextlocllm_hf.cli import entry_point, positive_int
from nextlocllm_hf.data import BuildConfig, build_and_save, load_city_splits
from nextlocllm_hf.locks import exclusive_output
from nextlocllm_hf.outputs import refuse_occupied, replacing_file

# What the demo writes in --output_dir, with the lock file train.py holds beside its run folder.
DEMO_OUTPUTS = ("data", "run", ".run.lock", "demo.png")

# Two cities of different size, density and POI mix; the second is never seen in training.
CITIES = {
    "synth-a": {"seed": 1, "synthetic": {"n_users": 100, "records_per_user": 150}},
    "synth-b": {"seed": 2, "synthetic": {"n_users": 80, "records_per_user": 150, "extent_km": 8.0}},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output_dir")
    parser.add_argument("--max_steps", type=positive_int, default=200,
                        help="optimizer steps of each training phase: the features-only warm start, then end to end "
                             "(about 1.3 s each here)")
    parser.add_argument("--top_k", type=positive_int, default=5)
    return parser.parse_args(argv)


def build_cities(data_dir: Path, overwrite: bool) -> dict[str, str]:
    paths = {}
    for name, settings in CITIES.items():
        config = BuildConfig(city=name, format="synthetic", output=str(data_dir / name), overwrite=overwrite,
                             **settings)
        result = build_and_save(config)
        print(result.report.render())
        paths[name] = str(data_dir / name)
    return paths


def show_top_k(model_dir: Path, city_path: str, k: int) -> dict:
    """Reload through AutoModel (no flag) and rank the new city's cells for one of its test trajectories."""
    model = AutoModel.from_pretrained(model_dir)
    city = load_city_splits(city_path)
    samples = model_samples(model, city.splits["test"], {city.name: city.retriever})
    batch = samples[0]
    output = model.predict(batch, city=city.name, k=k)
    retriever = model.retriever(city.name)
    lat = dict(zip(retriever.cell_ids, retriever.latlon[:, 0]))
    lon = dict(zip(retriever.cell_ids, retriever.latlon[:, 1]))
    print(f"\nreloaded {type(model).__name__} from {model_dir}; cities: {model.cities}")
    print(f"one test trajectory of {city.name} (never trained on); its last {model.config.current_length} visits:")
    for day, hour, cell in zip(batch["current_day"][0], batch["current_hour"][0], batch["current_cell"][0].tolist()):
        print(f"  day {int(day)} {int(hour):02d}h  cell {cell:4d}  ({lat[cell]:.5f}, {lon[cell]:.5f})")
    target = int(batch["target_cell"][0])
    if model.config.task_mode == "at_time":
        print(f"query: where at day {int(batch['target_day'][0])} {int(batch['target_hour'][0]):02d}h, "
              f"{float(batch['target_time_gap'][0]):.1f} h after the last visit?")
    print(f"true next cell: {target} ({lat[target]:.5f}, {lon[target]:.5f})")
    print(f"top-{k} cells ({model.head_description}; distance from the model's point):")
    for rank, (cell, distance) in enumerate(zip(output.top_k_cells[0].tolist(), output.top_k_distances[0]), start=1):
        mark = "  <- true next cell" if cell == target else ""
        print(f"  {rank}. cell {cell:4d}  ({lat[cell]:.5f}, {lon[cell]:.5f})  {float(distance):6.0f} m{mark}")
    return {"batch": batch, "output": output, "retriever": retriever}


def save_figure(results: dict, example: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve, trajectory) = plt.subplots(1, 2, figsize=(12, 5))
    history = results["validation_history"]
    steps = [entry["step"] for entry in history]
    curve.plot(steps, [100 * entry["hit@1"] for entry in history], "o-", label="Hit@1 %")
    curve.plot(steps, [100 * entry["hit@10"] for entry in history], "s-", label="Hit@10 %")
    curve.set_xlabel("optimizer step")
    curve.set_ylabel("validation %")
    errors = curve.twinx()
    errors.plot(steps, [entry["mean_error_m"] for entry in history], "k--", label="mean error (m)")
    errors.set_ylabel("mean error (m)")
    curve.axvline(results["best_step"], color="grey", lw=0.8)
    curve.legend(loc="upper left")
    curve.set_title("validation during training (grey: chosen checkpoint)")

    batch, output, retriever = example["batch"], example["output"], example["retriever"]
    cells = retriever.xy
    trajectory.scatter(cells[:, 0], cells[:, 1], s=4, c="lightgrey", label="candidate cells")
    history_xy = batch["history_coordinates"][0].numpy()
    current_xy = batch["current_coordinates"][0].numpy()
    trajectory.plot(history_xy[:, 0], history_xy[:, 1], ".-", color="tab:blue", alpha=0.4, label="history")
    trajectory.plot(current_xy[:, 0], current_xy[:, 1], "o-", color="tab:blue", label="current")
    top = retriever.xy[retriever.rows_of(output.top_k_cells[0].numpy())]
    trajectory.scatter(top[:, 0], top[:, 1], marker="s", facecolors="none", edgecolors="tab:orange", s=80, label="top-k")
    predicted = output.coordinates[0].numpy()
    truth = batch["labels"][0].numpy()
    trajectory.scatter(*predicted, marker="x", color="tab:red", s=100, label="predicted point")
    trajectory.scatter(*truth, marker="*", color="tab:green", s=160, label="true next visit")
    trajectory.set_aspect("equal")
    trajectory.set_title("zero-shot city: one trajectory (Web Mercator m)")
    trajectory.legend(loc="best", fontsize=8)
    figure.tight_layout()
    with replacing_file(path) as partial:
        figure.savefig(partial, dpi=110)
    print(f"figure: {path}")


@entry_point
def main(argv=None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    with exclusive_output(output_dir):  # one demo per --output_dir, from the check below to the figure
        run_demo(args, output_dir)


def run_demo(args: argparse.Namespace, output_dir: Path) -> None:
    """Steps 1-4 of the module docstring into `output_dir` (its lock held by `main`)."""
    refuse_occupied(output_dir, overwrite=args.overwrite, option="--output_dir", what="demo", owned=DEMO_OUTPUTS)
    timings = {}
    started = time.perf_counter()
    paths = build_cities(output_dir / "data", args.overwrite)
    timings["build two cities"] = time.perf_counter() - started

    started = time.perf_counter()
    run_dir = output_dir / "run"
    results = train.main(
        [
            "--dataset", paths["synth-a"],
            "--zero_shot_dataset", paths["synth-b"],
            "--backbone", "smollm2-135m",
            "--output_dir", str(run_dir),
            "--task_mode", "at_time",  # the default recipe: every other model and training setting
            "--max_steps", str(args.max_steps),
            "--eval_steps", str(max(args.max_steps // 6, 1)),
            "--max_eval_samples", "256",
            "--gbdt_baseline",
            *(["--overwrite"] if args.overwrite else []),
        ]
    )
    timings["train + test + baselines + zero-shot"] = time.perf_counter() - started

    started = time.perf_counter()
    example = show_top_k(run_dir / "model", paths["synth-b"], args.top_k)
    timings["reload + predict"] = time.perf_counter() - started
    save_figure(results, example, output_dir / "demo.png")
    print("\ntimings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))


if __name__ == "__main__":
    sys.exit(main())
