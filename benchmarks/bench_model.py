"""Speed of the shared-prefix forward against the authors' computation, and of KD-tree retrieval.

    python benchmarks/bench_model.py [--threads 2] [--repeats 3] [--batches 1 16 64]

Pairs, in one run and on one machine, the reference-equivalent forward (prompt repeated in every sample, POI tables
weighted, flattened and projected per record) with the optimized one (prompt run once and shared as a KV cache,
class tables projected once), at the default config (6 blocks), on the SmolLM2-135M backbone and on GPT-2-small
shapes (random weights). Each (backbone, variant, batch) runs in its own process so its peak memory is its own.
Reports training-step time (forward + backward + Adam step), inference samples/s, peak RSS, and achieved FLOP/s
(counted by torch's FlopCounterMode) against this machine's measured fp32 matmul peak. Then cKDTree against brute
force for 1k to 1M cells. Writes benchmarks/RESULTS.md and ends with
`train_speedup=X infer_speedup=Y max_abs_diff=Z` for SmolLM2 at batch 64.

    python benchmarks/bench_model.py --ranker [--threads 2] [--repeats 3]

Pairs, in one run, inference of the SmolLM2 model (default 6 blocks, `at_time`) with and without the candidate ranker
on a 2,000-cell city: samples/s of `model.predict` (top-10), and the ranker's own cost (candidate features in numpy +
the scorer) next to the backbone forward it rides on. Writes benchmarks/RANKER.md and ends with
`ranker_over_backbone=X`, which must stay below 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
RANKER_RESULTS = HERE / "RANKER.md"
BACKBONES = ("smollm2-135m", "gpt2-small-random")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--ranker", action="store_true", help="benchmark the candidate ranker instead (RANKER.md)")
    parser.add_argument("--worker", nargs=3, metavar=("BACKBONE", "VARIANT", "BATCH"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------- one process
def build_model(backbone: str):
    import torch
    from transformers import AutoTokenizer, GPT2Config

    from nextlocllm_hf import NextLocLLMConfig, NextLocLLMForCoordinateRegression, resolve_backbone

    torch.manual_seed(0)
    if backbone == "smollm2-135m":
        return NextLocLLMForCoordinateRegression.from_backbone("smollm2-135m", recipe="paper")  # as measured
    # GPT-2-small shapes with random weights (no GPT-2 weights exist offline); SmolLM2's tokenizer gives the ids.
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("smollm2-135m"))
    config = NextLocLLMConfig(llm_config=GPT2Config().to_dict(), num_backbone_layers=6)
    config.prompt_length = len(tokenizer(config.format_prompt(), add_special_tokens=False)["input_ids"])
    config.poi_description_length = max(
        len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in config.poi_description_texts()
    )
    model = NextLocLLMForCoordinateRegression(config)
    model.encode_text_features(tokenizer)
    return model.eval()


def make_batch(config, batch_size: int):
    import torch

    generator = torch.Generator().manual_seed(batch_size)
    batch = {}
    for part, length in (("history", config.history_length), ("current", config.current_length)):
        batch[f"{part}_coordinates"] = torch.randn(batch_size, length, 2, generator=generator, dtype=torch.float64)
        batch[f"{part}_day"] = torch.randint(0, 7, (batch_size, length), generator=generator)
        batch[f"{part}_hour"] = torch.randint(0, 24, (batch_size, length), generator=generator)
        batch[f"{part}_duration"] = torch.rand(batch_size, length, generator=generator) * 5
        batch[f"{part}_poi"] = torch.rand(batch_size, length, config.num_poi_classes, generator=generator)
    batch["coordinate_mean"] = torch.zeros(2, dtype=torch.float64)
    batch["coordinate_std"] = torch.ones(2, dtype=torch.float64)
    batch["labels"] = torch.randn(batch_size, 2, generator=generator, dtype=torch.float64)
    return batch


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def worker(backbone: str, variant: str, batch_size: int, repeats: int) -> dict:
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(HERE.parent / "tests"))
    from reference_nextlocllm import paper_computation  # the authors' computation lives beside the equality tests

    model = build_model(backbone)
    batch = make_batch(model.config, batch_size)
    mode = (lambda: paper_computation(model)) if variant == "reference" else contextlib.nullcontext
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def train_step():
        with mode():
            model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def inference():
        with torch.no_grad(), mode():
            return model(**batch).normalized_coordinates

    with FlopCounterMode(display=False) as counter:
        with mode():
            model(**batch).loss.backward()
    train_flops = counter.get_total_flops()
    optimizer.zero_grad()
    train_seconds = median_seconds(train_step, repeats)
    model.eval()
    inference()  # fills the frozen-prefix cache for the optimized variant (computed once per weights)
    with FlopCounterMode(display=False) as counter:
        inference()
    infer_flops = counter.get_total_flops()
    tokens = torch.randn(batch_size, model.config.history_length + model.config.current_length,
                         model.config.hidden_size)

    def backbone():  # the decoder alone, in this variant's form (its prompt cache, if any, already filled)
        with torch.no_grad(), mode():
            model.run_backbone(tokens, False)

    backbone()
    with FlopCounterMode(display=False) as counter:
        backbone()
    backbone_flops = counter.get_total_flops()
    infer_seconds = median_seconds(inference, repeats)
    backbone_seconds = median_seconds(backbone, repeats)
    return {
        "train_seconds": train_seconds,
        "train_flops": train_flops,
        "infer_seconds": infer_seconds,
        "infer_flops": infer_flops,
        "backbone_seconds": backbone_seconds,
        "backbone_flops": backbone_flops,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "output": inference().tolist(),
    }


def ranker_worker(variant: str, batch_size: int, repeats: int) -> dict:
    """`model.predict` samples/s of the at_time SmolLM2 model with (`ranker`) or without (`plain`) the ranker, and the
    ranker's parts timed alone: candidate features (numpy) and the scorer, against the backbone forward."""
    import numpy as np
    import torch

    from nextlocllm_hf import CityRetriever, NextLocLLMForCoordinateRegression
    from nextlocllm_hf.modeling.candidates_nextlocllm import build_candidates

    torch.manual_seed(0)
    model = NextLocLLMForCoordinateRegression.from_backbone(  # the 6-block model without history, as measured
        "smollm2-135m", recipe="paper", task_mode="at_time", regression_target="offset_from_last",
        head_type="point_ranker" if variant == "ranker" else "point")
    rng = np.random.default_rng(0)
    index = np.arange(2_000)
    xy = np.stack([index % 50, index // 50], axis=1) * 795.0 + np.array([-8.24e6, 4.97e6])
    poi = rng.dirichlet(np.ones(model.config.num_poi_classes), size=len(index)).astype(np.float32)
    city = CityRetriever("bench", index, xy, np.zeros((len(index), 2)), poi, xy.mean(axis=0), xy.std(axis=0))
    model.add_city(city)
    batch = {}
    for part, length in (("history", model.config.history_length), ("current", model.config.current_length)):
        places = rng.integers(0, 40, (batch_size, length)) + rng.integers(0, 1_900, (batch_size, 1))  # a user's area
        batch[f"{part}_cell"] = torch.from_numpy(places)
        batch[f"{part}_coordinates"] = torch.from_numpy(xy[places])
        batch[f"{part}_day"] = torch.from_numpy(rng.integers(0, 7, places.shape))
        batch[f"{part}_hour"] = torch.from_numpy(rng.integers(0, 24, places.shape))
        batch[f"{part}_duration"] = torch.from_numpy(rng.exponential(2.0, places.shape).astype(np.float32))
        batch[f"{part}_poi"] = torch.from_numpy(poi[places])
    batch.update(target_day=torch.from_numpy(rng.integers(0, 7, batch_size)),
                 target_hour=torch.from_numpy(rng.integers(0, 24, batch_size)),
                 target_time_gap=torch.from_numpy(rng.exponential(3.0, batch_size).astype(np.float32)))
    model.eval()
    predict = lambda: model.predict(batch, city="bench", k=10, batch_size=batch_size)  # noqa: E731
    result = {"predict_seconds": median_seconds(predict, repeats)}
    tokens = torch.randn(batch_size, model.config.history_length + model.config.current_length + 1,
                         model.config.hidden_size)

    def backbone():
        with torch.no_grad():
            model.run_backbone(tokens, False)

    result["backbone_seconds"] = median_seconds(backbone, repeats)
    if variant == "ranker":
        arrays = {name: value.numpy() for name, value in batch.items()}
        config = model.config
        features = lambda: build_candidates(city, arrays, "at_time", config.candidate_neighbors,  # noqa: E731
                                            config.max_candidates)
        result["features_seconds"] = median_seconds(features, repeats)
        candidates = features()
        states = torch.randn(batch_size, tokens.shape[1] - 1, config.hidden_size)

        def scorer():
            with torch.no_grad():
                model.candidate_scorer(torch.from_numpy(candidates.features), torch.from_numpy(candidates.mask),
                                       states[:, -1], torch.from_numpy(candidates.record_weights) @ states)

        result["scorer_seconds"] = median_seconds(scorer, repeats)
    return result


def ranker_main(args: argparse.Namespace) -> None:
    batch = max(args.batches)
    runs = {}
    for variant in ("plain", "ranker"):
        command = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats),
                   "--worker", "ranker", variant, str(batch)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        runs[variant] = json.loads(result.stdout.strip().splitlines()[-1])
    plain, ranker = runs["plain"], runs["ranker"]
    overhead = ranker["features_seconds"] + ranker["scorer_seconds"]
    lines = [
        "# Benchmark: the candidate ranker's inference cost",
        "",
        f"Machine: {machine_description(args.threads)}. Medians of {args.repeats} repeats after one warm-up; each "
        f"variant in its own process. SmolLM2-135M, default 6 blocks, task_mode at_time, offset head, batch {batch}, "
        "a 2,000-cell city, top-10.",
        "",
        "| variant | predict samples/s | backbone forward s | candidate features s | scorer s |",
        "|---|---|---|---|---|",
        f"| without ranker | {batch / plain['predict_seconds']:.1f} | {plain['backbone_seconds']:.3f} | - | - |",
        f"| with ranker | {batch / ranker['predict_seconds']:.1f} | {ranker['backbone_seconds']:.3f} | "
        f"{ranker['features_seconds']:.3f} | {ranker['scorer_seconds']:.3f} |",
        "",
        f"The ranker (features + scorer) costs {overhead:.3f} s per batch, {overhead / ranker['backbone_seconds']:.2f}x "
        f"the backbone forward; predict samples/s with the ranker / without: "
        f"{plain['predict_seconds'] / ranker['predict_seconds']:.2f} (within run-to-run noise when near 1).",
    ]
    RANKER_RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"ranker_over_backbone={overhead / ranker['backbone_seconds']:.2f}")


# ------------------------------------------------------------------------------------------------------ the driver
def matmul_peak(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    seconds = median_seconds(lambda: a @ b, 5)
    return 2 * 2048**3 / seconds


def retrieval_table() -> list[str]:
    import numpy as np
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    lines = ["| cells | queries | cKDTree build s | cKDTree query s | brute force s | speedup | identical top-10 |",
             "|---|---|---|---|---|---|---|"]
    for cells in (1_000, 10_000, 100_000, 1_000_000):
        xy = rng.uniform(0, 50_000, size=(cells, 2))
        queries = rng.uniform(0, 50_000, size=(1_000, 2))
        started = time.perf_counter()
        tree = cKDTree(xy)
        build = time.perf_counter() - started
        query = median_seconds(lambda: tree.query(queries, k=10), 3)
        _, tree_ids = tree.query(queries, k=10)

        def brute():
            out = np.empty((len(queries), 10), dtype=np.int64)
            for start in range(0, len(queries), 50):
                chunk = queries[start:start + 50]
                d2 = ((chunk[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
                part = np.argpartition(d2, 10, axis=1)[:, :10]
                order = np.take_along_axis(d2, part, 1).argsort(1)
                out[start:start + 50] = np.take_along_axis(part, order, 1)
            return out

        brute_seconds = median_seconds(brute, 1)
        same = bool((brute() == tree_ids).all())
        lines.append(f"| {cells:,} | 1,000 | {build:.3f} | {query:.4f} | {brute_seconds:.3f} | "
                     f"{brute_seconds / query:.0f}x | {same} |")
    return lines


def machine_description(threads: int) -> str:
    import torch

    model_name = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return (f"{model_name}, {os.cpu_count()} logical CPUs, {threads} torch threads, Python {platform.python_version()}, "
            f"torch {torch.__version__}, fp32")


def main() -> None:
    args = parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        backbone, variant, batch = args.worker
        work = ranker_worker(variant, int(batch), args.repeats) if backbone == "ranker" else worker(
            backbone, variant, int(batch), args.repeats)
        print(json.dumps(work))
        return
    if args.ranker:
        ranker_main(args)
        return

    from tqdm.auto import tqdm

    peak = matmul_peak(args.threads)
    runs = {}
    jobs = [(b, v, n) for b in BACKBONES for n in args.batches for v in ("reference", "optimized")]
    for backbone, variant, batch in tqdm(jobs, desc="benchmark runs"):
        command = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats),
                   "--worker", backbone, variant, str(batch)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        runs[(backbone, variant, batch)] = json.loads(result.stdout.strip().splitlines()[-1])

    lines = [
        "# Benchmarks: shared-prefix forward vs the authors' computation",
        "",
        f"Machine: {machine_description(args.threads)}. Measured fp32 matmul peak (2048x2048): {peak / 1e9:.0f} GFLOP/s.",
        f"Medians of {args.repeats} repeats after one warm-up; each row in its own process. Default config: 6 blocks, "
        "40 history + 5 current records, prompt prefix and LLM-POI on, norms trainable.",
        "",
        "| backbone | batch | variant | train step s | train GFLOP/s | infer samples/s | infer GFLOP/s | backbone % of peak | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for backbone in BACKBONES:
        for batch in args.batches:
            for variant in ("reference", "optimized"):
                run = runs[(backbone, variant, batch)]
                lines.append(
                    f"| {backbone} | {batch} | {variant} | {run['train_seconds']:.3f} | "
                    f"{run['train_flops'] / run['train_seconds'] / 1e9:.0f} | {batch / run['infer_seconds']:.1f} | "
                    f"{run['infer_flops'] / run['infer_seconds'] / 1e9:.0f} | "
                    f"{100 * run['backbone_flops'] / run['backbone_seconds'] / peak:.0f}% | {run['peak_rss_mib']:.0f} |"
                )
            reference, optimized = runs[(backbone, "reference", batch)], runs[(backbone, "optimized", batch)]
            import numpy as np

            difference = float(np.abs(np.array(reference["output"]) - np.array(optimized["output"])).max())
            summary[(backbone, batch)] = (
                reference["train_seconds"] / optimized["train_seconds"],
                reference["infer_seconds"] / optimized["infer_seconds"],
                difference,
            )
    lines += ["", "| backbone | batch | train speedup | inference speedup | max abs diff (normalized output) |",
              "|---|---|---|---|---|"]
    for (backbone, batch), (train_speedup, infer_speedup, difference) in summary.items():
        lines.append(f"| {backbone} | {batch} | {train_speedup:.2f}x | {infer_speedup:.2f}x | {difference:.2e} |")
    lines += ["", "## Retrieval: cKDTree against brute force (top-10)", "", *retrieval_table()]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    key = ("smollm2-135m", max(args.batches))
    train_speedup, infer_speedup, difference = summary[key]
    print(f"train_speedup={train_speedup:.2f} infer_speedup={infer_speedup:.2f} max_abs_diff={difference:.2e}")


if __name__ == "__main__":
    main()
