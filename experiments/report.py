"""Turn experiments/results/*.json into the tables and plots of docs/results.md.

    python experiments/report.py [--work_dir runs/study]

Tables replace the blocks between `<!-- BEGIN name -->` and `<!-- END name -->` in docs/results.md; plots go to
docs/figures/. The trajectory map needs the cached predictions and cities of --work_dir (made by experiments/run.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import RANKER_CANDIDATES, REPO_ROOT, RESULTS_DIR, Study  # noqa: E402

DOCS = REPO_ROOT / "docs"
FIGURES = DOCS / "figures"
MODEL = "nextlocllm"
LABELS = {
    "nextlocllm": "NextLocLLM (SmolLM2, paper head)",
    "id_classifier": "ID classifier (LSTM, softmax over cells)",
    "last_location": "last location",
    "most_frequent": "most frequent in sample",
    "markov_within_sample": "Markov within sample",
    "markov_train_users": "Markov over train users",
    "markov_frequency_mixture": "Markov + frequency mixture",
    "nearest_cells": "nearest cells to last point",
    "no_prompt": "without prompt prefix",
    "no_llm_poi": "linear POI embedding (no LLM-POI)",
    "poi_hidden_states": "POI text from hidden states",
    "lora": "LoRA (r=8) instead of norms-only",
    "kd_tree_around_last_point": "KD-tree around the last point (no model)",
    "mixture": "NextLocLLM, 5-mode mixture head",
    "mixture_ranker": "NextLocLLM, mixture + candidate ranker",
    "point_ranker": "NextLocLLM, point + candidate ranker",
    "nextlocllm_ranker": "NextLocLLM, time-aware candidate ranker",
    "nextlocllm_ranker_no_time_features": "NextLocLLM ranker without time-conditioned features",
    "nextlocllm_ranker_no_history": "NextLocLLM ranker without the user's earlier history",
    "nextlocllm_offset_head": "NextLocLLM, offset-from-last-point head",
    "nextlocllm_paper_head": "NextLocLLM, paper head (absolute point)",
    "gbdt_ranker": "gbdt_ranker (boosted trees, same features)",
    "gbdt_ranker_no_history": "gbdt_ranker on the 45-record window only",
    "feature_mlp_ranker": "ranker without the LLM (same scorer, features only)",
    "hour_frequency": "hour frequency (±2 h of the reference hour)",
    "geometric_median": "geometric median of the inputs (point)",
}
RANKING_ROWS = ("nyc/test/at_time", "nyc/test/next", "calgary/all/at_time", "calgary/all/next")


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def mean_std(score: dict, metric: str) -> str:
    if score["runs"] > 1:
        return f"{pct(score['mean'][metric])} ± {pct(score['std'][metric])}"
    return pct(score["mean"][metric])


def ci(score: dict, k: int) -> str:
    interval = score[f"hit@{k}_user_ci95"]
    return f"[{pct(interval['low'])}, {pct(interval['high'])}]"


def method_table(results: dict, rows: str) -> str:
    lines = [
        "| method | runs | Hit@1 % | 95% CI (users) | per-user Hit@1 % | Hit@5 % | Hit@10 % | 95% CI (users) | Hit@20 % "
        "| MRR % | mean err km | median err km |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    methods = {name: by_rows for name, by_rows in results["methods"].items() if rows in by_rows}
    order = sorted(methods, key=lambda n: (n != MODEL, -methods[n][rows]["mean"]["hit@1"]))
    for name in order:
        s = methods[name][rows]
        lines.append(
            f"| {LABELS.get(name, name)} | {s['runs']} | {mean_std(s, 'hit@1')} | {ci(s, 1)} | {pct(s['per_user_hit@1'])} "
            f"| {mean_std(s, 'hit@5')} | {mean_std(s, 'hit@10')} | {ci(s, 10)} | {mean_std(s, 'hit@20')} "
            f"| {mean_std(s, 'mrr')} | {s['mean']['mean_error_m'] / 1000:.2f} | {s['mean']['median_error_m'] / 1000:.2f} |"
        )
    return "\n".join(lines)


def paired_lines(results: dict) -> str:
    return "\n".join(
        f"- {name}: {100 * d['estimate']:+.1f} points, 95% CI [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
        for name, d in results["paired_differences"].items()
    )


def ranking_table(results: dict, rows: str) -> str:
    """One task mode on one set of rows: every method, and its paired Hit@1 / Hit@10 gap to the strongest baseline."""
    strongest = {metric: results["strongest_baseline"][f"{rows} {metric}"]["any"] for metric in ("hit@1", "hit@10")}
    lines = [
        f"| method | Hit@1 % | 95% CI (users) | Δ Hit@1 vs {LABELS.get(strongest['hit@1'], strongest['hit@1'])} "
        f"| Hit@5 % | Hit@10 % | Δ Hit@10 vs {LABELS.get(strongest['hit@10'], strongest['hit@10'])} | MRR % "
        "| median err km |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    methods = {name: by_rows[rows] for name, by_rows in results["methods"].items() if rows in by_rows}
    diffs = results["paired_differences"]

    def delta(name: str, metric: str) -> str:
        d = diffs.get(f"{name} - {strongest[metric]} ({rows}, {metric})")
        return "" if d is None else f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"

    for name in sorted(methods, key=lambda n: ("nextlocllm" not in n, -methods[n]["mean"]["hit@1"])):
        score = methods[name]
        lines.append(
            f"| {LABELS.get(name, name)} | {pct(score['mean']['hit@1'])} | {ci(score, 1)} | {delta(name, 'hit@1')} "
            f"| {pct(score['mean']['hit@5'])} | {pct(score['mean']['hit@10'])} | {delta(name, 'hit@10')} "
            f"| {pct(score['mean']['mrr'])} | {score['mean']['median_error_m'] / 1000:.2f} |"
        )
    return "\n".join(lines)


def ranking_gaps(results: dict, rows: str, name: str = "nextlocllm_ranker") -> str:
    """The model's ranker against gbdt_ranker and the strongest rule, paired, on these rows."""
    out = []
    for metric in ("hit@1", "hit@10"):
        rule = results["strongest_baseline"][f"{rows} {metric}"]["rule"]
        for other in dict.fromkeys(["gbdt_ranker", rule]):
            d = results["paired_differences"].get(f"{name} - {other} ({rows}, {metric})")
            if d is not None:
                out.append(f"{metric} {name} − {other}: {100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, "
                           f"{100 * d['high']:+.1f}]")
    return "Paired (user bootstrap): " + "; ".join(out) + "."


def ranking_training_lines(results: dict) -> str:
    lines = [f"Budget per run: `{json.dumps(results['budget'])}` plus each variant's flags (`MODES` in "
             "experiments/study.py); machine: " + results["machine"] + ".", "",
             "| training run | steps | best step (validation Hit@1) | wall time (min) | features-only warm start |",
             "|---|---|---|---|---|"]
    for name, record in results["training"].items():
        steps = record["validation_history"][-1]["step"]
        best = f"{record['best_step']} ({pct(record['best_validation']['hit@1'])} %)"
        warm = record.get("ranker_warm_start")
        warm = "—" if not warm else f"{warm['epochs']} epochs, validation Hit@1 {pct(max(warm['validation_hit@1']))} %"
        lines.append(f"| {name} | {steps} | {best} | {record['training_seconds'] / 60:.1f} | {warm} |")
    return "\n".join(lines)


def readme_table(results: dict) -> str:
    """The README's summary: Hit@1 [user CI] of the main methods in every task mode and city."""
    columns = ("nyc/test/next", "nyc/test/at_time", "calgary/all/next", "calgary/all/at_time")
    names = ("nextlocllm_ranker", "feature_mlp_ranker", "gbdt_ranker", "hour_frequency", "markov_frequency_mixture",
             "nextlocllm_offset_head", "nextlocllm_paper_head", "last_location")
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = []
        for rows in columns:
            score = results["methods"].get(name, {}).get(rows)
            cells.append("—" if score is None else f"{pct(score['mean']['hit@1'])} {ci(score, 1)}")
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_ranking(results: dict, path: Path) -> None:
    """Hit@1 with user-bootstrap intervals, per task mode and city, for the model's rows and the baselines."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RANKING_ROWS), figsize=(22, 5))  # each panel its own order of methods
    for ax, rows in zip(axes, RANKING_ROWS):
        methods = {n: by_rows[rows] for n, by_rows in results["methods"].items() if rows in by_rows}
        names = sorted(methods, key=lambda n: -methods[n]["mean"]["hit@1"])
        values = [100 * methods[n]["mean"]["hit@1"] for n in names]
        low = [100 * methods[n]["hit@1_user_ci95"]["low"] for n in names]
        high = [100 * methods[n]["hit@1_user_ci95"]["high"] for n in names]
        colours = ["tab:red" if "nextlocllm" in n else "tab:orange" if n in ("gbdt_ranker", "feature_mlp_ranker")
                   else "tab:grey" for n in names]
        ax.barh(np.arange(len(names)), values, color=colours,
                xerr=[np.subtract(values, low), np.subtract(high, values)], capsize=2)
        ax.set_yticks(np.arange(len(names)), [LABELS.get(n, n) for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="Hit@1 % (95% CI, users)", title=rows)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ablation_table(results: dict) -> str:
    lines = [
        "| variant | NYC Hit@1 % | Δ vs full, 95% CI | NYC Hit@10 % | NYC median err km | Calgary Hit@1 % | Δ vs full, 95% CI "
        "| Calgary Hit@10 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    diffs = results["paired_differences"]
    for name, by_rows in results["methods"].items():
        cells = [LABELS.get(name, name)]
        for rows in ("nyc/test", "calgary/all"):
            s = by_rows.get(rows)
            if s is None:
                cells += ["n/a (ids of NYC only)", "", ""] if rows == "calgary/all" else ["", "", "", ""]
                continue
            d = diffs.get(f"{name} - {MODEL} ({rows}, hit@1)")
            delta = "—" if d is None else (
                f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
            )
            cells += [pct(s["mean"]["hit@1"]), delta, pct(s["mean"]["hit@10"])]
            if rows == "nyc/test":
                cells.append(f"{s['mean']['median_error_m'] / 1000:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_table(results: dict) -> str:
    splits = list(results["rows"])
    header = "| method | " + " | ".join(f"{s}: Hit@1 % (rank) | Hit@10 %" for s in splits) + " |"
    lines = [header, "|---|" + "---|---|" * len(splits)]
    for name, by_rows in results["methods"].items():
        cells = [LABELS.get(name, name)]
        for rows in splits:
            rank = results["ranking_by_hit@1"][rows].index(name) + 1
            cells += [f"{pct(by_rows[rows]['mean']['hit@1'])} ({rank})", pct(by_rows[rows]["mean"]["hit@10"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_lines(results: dict) -> str:
    first = next(iter(results.values()))
    lines = [f"Machine: {first['machine']}. Budget per run: `{json.dumps(first['budget'])}`.", "",
             "| training run | steps | best step | wall time (min) |", "|---|---|---|---|"]
    runs = {}
    for table in ("supervised_nyc", "ablations"):
        for name, record in results.get(table, {}).get("training", {}).items():
            runs.setdefault(name if " seed " in name else f"{name} seed 0", record)
    for name, record in runs.items():
        steps = record["validation_history"][-1]["step"]
        lines.append(f"| {name} | {steps} | {record['best_step']} | {record['training_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no block {name!r} to replace (<!-- BEGIN {name} --> ... <!-- END {name} -->)")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


# -----------------------------------------------------------------------------------------------------------------
# plots


def plot_validation_curves(training: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, record in training.items():
        steps = [h["step"] for h in record["validation_history"]]
        left.plot(steps, [100 * h["hit@1"] for h in record["validation_history"]], marker="o", label=name)
        right.plot(steps, [h["mean_error_m"] / 1000 for h in record["validation_history"]], marker="o", label=name)
    left.set(xlabel="optimizer step", ylabel="validation Hit@1 (%)", title="NYC validation (1,000 samples)")
    right.set(xlabel="optimizer step", ylabel="validation mean error (km)", title="NYC validation (1,000 samples)")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_hit_at_k(results: dict, rows: str, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    methods = {name: by_rows for name, by_rows in results["methods"].items() if rows in by_rows}
    names = sorted(methods, key=lambda n: (n != MODEL, -methods[n][rows]["mean"]["hit@10"]))
    ks = (1, 5, 10, 20)
    width = 0.8 / len(names)
    colours = plt.get_cmap("tab20").colors  # more methods than tab10 has colours
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, name in enumerate(names):
        s = methods[name][rows]
        ax.bar(np.arange(len(ks)) + i * width, [100 * s["mean"][f"hit@{k}"] for k in ks], width,
               yerr=[100 * s["std"][f"hit@{k}"] for k in ks], label=LABELS.get(name, name), capsize=2,
               color=colours[i % len(colours)])
    ax.set_xticks(np.arange(len(ks)) + 0.4 - width / 2, [f"Hit@{k}" for k in ks])
    ax.set(ylabel="%", title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectory_map(study: Study, path: Path, k: int = 10) -> str:
    """One NYC test sample, chosen by a fixed rule (first sample of the test user with the median sample count): the
    time-aware ranker (at_time), the boosted ranker and the strongest rule."""
    import matplotlib.pyplot as plt

    from nextlocllm_hf.columns import rows_to_arrays
    from nextlocllm_hf.metrics import mercator_to_lonlat

    rows = study.rows("nyc")
    arrays = rows_to_arrays(rows, ("user_id", "history_coordinates", "current_coordinates", "target_coordinates"))
    users, first, counts = np.unique(np.asarray(arrays["user_id"]).astype(str), return_index=True, return_counts=True)
    order = np.argsort(counts, kind="stable")
    index = int(first[order[len(order) // 2]])
    prediction = study.model_predictions("nextlocllm_ranker/at_time", 0, "nyc")
    gbdt = study.feature_ranker_predictions("gbdt_ranker", "at_time", "nyc", **RANKER_CANDIDATES)
    rules = study.rule_predictions("nyc", task_mode="at_time")
    retriever = study.city("nyc").retriever

    def lonlat(xy):
        return np.stack(mercator_to_lonlat(*np.asarray(xy, dtype=np.float64).reshape(-1, 2).T), axis=1)

    history = lonlat(arrays["history_coordinates"][index])
    current = lonlat(arrays["current_coordinates"][index])
    target = lonlat(arrays["target_coordinates"][index])
    predicted = lonlat(prediction.xy[index])
    model_cells = retriever.latlon[retriever.rows_of(prediction.ranked[index, :k])]
    rule_cells = retriever.latlon[retriever.rows_of(rules["markov_frequency_mixture"].ranked[index, :k])]

    fig, ax = plt.subplots(figsize=(10, 6))
    ax.scatter(retriever.latlon[:, 1], retriever.latlon[:, 0], s=2, color="0.85", label="candidate cells")
    ax.plot(history[:, 0], history[:, 1], "-o", color="0.5", ms=3, lw=0.6, label="history (40)")
    ax.plot(current[:, 0], current[:, 1], "-o", color="tab:blue", ms=4, lw=1, label="current (5)")
    ax.scatter(rule_cells[:, 1], rule_cells[:, 0], s=90, facecolors="none", edgecolors="tab:green",
               label=f"Markov+frequency top-{k}")
    ax.scatter(model_cells[:, 1], model_cells[:, 0], marker="s", s=40, facecolors="none", edgecolors="tab:red",
               label=f"NextLocLLM ranker (at_time) top-{k} cells")
    ax.scatter(model_cells[:1, 1], model_cells[:1, 0], marker="s", s=40, color="tab:red", label="its top-1")
    ax.scatter(predicted[:, 0], predicted[:, 1], marker="x", s=120, color="tab:red", label="its point (offset head)")
    gbdt_cells = retriever.latlon[retriever.rows_of(gbdt.ranked[index, :k])]
    ax.scatter(gbdt_cells[:, 1], gbdt_cells[:, 0], marker="D", s=25, color="tab:purple", alpha=0.7,
               label=f"gbdt_ranker top-{k}")
    ax.scatter(target[:, 0], target[:, 1], marker="*", s=220, color="gold", edgecolors="k", label="true next")
    every = np.vstack([history, current, target, predicted, model_cells[:, ::-1], rule_cells[:, ::-1]])
    pad = 0.01
    ax.set_xlim(every[:, 0].min() - pad, every[:, 0].max() + pad)
    ax.set_ylim(every[:, 1].min() - pad, every[:, 1].max() + pad)
    ax.set_aspect(1 / np.cos(np.radians(every[:, 1].mean())))
    ax.set(xlabel="longitude", ylabel="latitude", title=f"NYC test sample {index} (user with the median count)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: it must not hide a point
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"sample {index}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Tables and plots of docs/results.md from experiments/results.")
    parser.add_argument("--work_dir", type=Path, default=REPO_ROOT / "runs" / "study")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    FIGURES.mkdir(parents=True, exist_ok=True)
    results = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS_DIR.glob("*.json"))}
    doc_path = DOCS / "results.md"
    doc = doc_path.read_text()
    if results:
        doc = replace_block(doc, "budget", budget_lines(results))
    if "supervised_nyc" in results:
        r = results["supervised_nyc"]
        doc = replace_block(doc, "supervised", method_table(r, "nyc/test") + "\n\n" + paired_lines(r))
        plot_hit_at_k(r, "nyc/test", "NYC test (supervised)", FIGURES / "hit_at_k_nyc.png")
    if "zero_shot_calgary" in results:
        r = results["zero_shot_calgary"]
        kept = f"\n\nHit@1 kept zero-shot: {pct(r['hit@1_kept'])} % of the NYC test Hit@1 ({pct(r['nyc_test_hit@1'])} %)."
        doc = replace_block(doc, "zero_shot", method_table(r, "calgary/all") + "\n\n" + paired_lines(r) + kept)
        plot_hit_at_k(r, "calgary/all", "Calgary, zero-shot (trained on NYC)", FIGURES / "hit_at_k_calgary.png")
    if "ablations" in results:
        doc = replace_block(doc, "ablations", ablation_table(results["ablations"]))
        training = {f"{name} (seed 0)": record for name, record in results["ablations"]["training"].items()}
        if "supervised_nyc" in results:  # the same seed-0 run, under its supervised-table name
            training.pop(f"{MODEL} (seed 0)", None)
            training.update(results["supervised_nyc"]["training"])
        if "heads" in results:
            training.update({f"{name} (seed 0)": record for name, record in results["heads"]["training"].items()})
        plot_validation_curves(training, FIGURES / "validation_curves.png")
    if "heads" in results:
        r = results["heads"]
        tables = [f"**{rows}**\n\n" + method_table(r, rows) for rows in r["rows"]]
        doc = replace_block(doc, "heads", "\n\n".join(tables) + "\n\n" + paired_lines(r))
        for rows in r["rows"]:
            city = rows.split("/")[0]
            plot_hit_at_k(r, rows, f"Prediction heads, {rows}", FIGURES / f"hit_at_k_heads_{city}.png")
    if "split_seeds" in results:
        doc = replace_block(doc, "split_seeds", split_table(results["split_seeds"]))
    if "ranking" in results:
        r = results["ranking"]
        tables = [f"**{rows}** ({r['rows'][rows]['samples']:,} samples, {r['rows'][rows]['users']} users)\n\n"
                  + ranking_table(r, rows) + "\n\n" + ranking_gaps(r, rows) for rows in RANKING_ROWS]
        doc = replace_block(doc, "ranking", "\n\n".join(tables) + "\n\n" + ranking_training_lines(r))
        plot_ranking(r, FIGURES / "ranking_modes.png")
        readme_path = REPO_ROOT / "README.md"
        readme_path.write_text(replace_block(readme_path.read_text(), "readme-ranking", readme_table(r)))
    if (args.work_dir / "predictions" / "nextlocllm_ranker_at_time_seed0_split0_nyc.npz").exists():
        chosen = plot_trajectory_map(Study(args.data.resolve(), args.work_dir), FIGURES / "test_trajectory_map.png")
        print(f"map of NYC test {chosen}")
    doc_path.write_text(doc)
    print(f"updated {doc_path} and {FIGURES}")


if __name__ == "__main__":
    main()
