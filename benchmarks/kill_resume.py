"""SIGKILL `train.py` at seeded points of a short run, relaunch it with `--resume_from_checkpoint latest` each time,
and check that the run finishes with the weights and results of an uninterrupted run.

    python benchmarks/kill_resume.py [--kills 10] [--seed 0] [--workdir DIR]

The run is tiny (a synthetic city, a random 4-block GPT-2 cut to 2 blocks, 8 steps crossing an epoch boundary, a
checkpoint every step, the newest 2 kept, an evaluation every 2 steps). Kill points are drawn from a seeded RNG and
found by polling the output folder, never by timing: while a checkpoint is being written (its hidden
`.checkpoint-N.partial` folder exists) or just after, while the best model is being written, while the exported model
is being written, or a drawn delay after launch (startup, data loading, a step; at the latest when the relaunch
starts its first write). Each relaunch is killed at the next point; after the last kill a relaunch runs to the end.
Writes benchmarks/KILL_RESUME.md and ends with `kills=K resumed_to_end=True weights_equal=True results_equal=True`.
`tests/test_kill_resume.py` runs two kills of the same harness in the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 8
RUN_TIMEOUT_S = 240  # one run of train.py here takes well under a minute; tests/test_kill_resume.py relies on it
RESULT_KEYS = ("best_step", "best_validation", "validation_history", "training_history", "test", "baselines")


@dataclass(frozen=True)
class KillPoint:
    """Where to kill: `kind` is checkpoint (step's checkpoint being written, or just written), best (the best model
    being written after that step's checkpoint), export (the exported model being written) or delay (`seconds` after
    launch, or the relaunch's first write if that comes sooner)."""

    kind: str
    step: int = 0
    seconds: float = 0.0

    def reached(self, output_dir: Path, elapsed: float, at_launch: int) -> bool:
        names, done, reached = progress(output_dir)
        if self.kind == "delay":  # the drawn time, or sooner if the run gets that far: the first thing it writes
            return elapsed >= self.seconds or reached > at_launch or ".model.partial" in names
        if self.kind == "checkpoint":  # this step's checkpoint being written or written (or a relaunch already past it)
            return reached >= self.step
        if self.kind == "best":  # the next best-model save after this step's checkpoint, or else the next checkpoint
            return (done >= self.step and ".best.partial" in names) or done > self.step
        if self.kind == "export":
            return ".model.partial" in names or "model" in names
        raise ValueError(f"unknown kill point {self.kind!r}")

    def describe(self) -> str:
        if self.kind == "delay":
            return f"drawn delay {self.seconds:.1f} s"
        return "export" if self.kind == "export" else f"{self.kind} @ step {self.step}"


def progress(output_dir: Path) -> tuple[set[str], int, int]:
    """The names in the output folder, the newest complete checkpoint's step and the newest step being written."""
    names = {p.name for p in output_dir.iterdir()} if output_dir.is_dir() else set()
    done = max([int(n.split("-")[1]) for n in names if re.fullmatch(r"checkpoint-\d+", n)], default=0)
    writing = [int(n.split("-")[1].split(".")[0]) for n in names if re.fullmatch(r"\.checkpoint-\d+\.partial", n)]
    return names, done, max([done, *writing])


def draw_kill_points(kills: int, seed: int) -> list[KillPoint]:
    """`kills` points in the order the run reaches them: distinct (step, checkpoint or best) events, a quarter of them
    replaced by delays after launch placed anywhere in the sequence, and last a kill during the export."""
    rng = random.Random(seed)
    events = [(step, order) for step in range(1, MAX_STEPS) for order in (0, 1)]  # 0: checkpoint, 1: best, at step
    delays = (kills - 1) // 4
    chosen = sorted(rng.sample(events, min(kills - 1 - delays, len(events))))
    points = [KillPoint(("checkpoint", "best")[order], step) for step, order in chosen]
    for _ in range(kills - 1 - len(points)):
        points.insert(rng.randint(0, len(points)), KillPoint("delay", seconds=rng.uniform(0.5, 8.0)))
    return [*points, KillPoint("export")][-kills:]


def prepare_inputs(workdir: Path) -> dict[str, str]:
    """The tiny backbone and city the test suite uses (tests/conftest.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from conftest import TINY_BACKBONES, build_synthetic_city, build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    backbone = workdir / "tiny-gpt2"
    TINY_BACKBONES["gpt2"](len(tokenizer)).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    return {"backbone": str(backbone), "city": build_synthetic_city(workdir / "city", "city-k", seed=3)}


def train_command(inputs: dict[str, str], output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / "train.py"), "--dataset", inputs["city"], "--backbone", inputs["backbone"],
        "--num_backbone_layers", "2", "--per_device_batch_size", "12", "--per_device_eval_batch_size", "8",
        "--max_steps", str(MAX_STEPS), "--eval_steps", "2", "--checkpointing_steps", "1",
        "--checkpoints_total_limit", "2", "--output_dir", str(output_dir), *extra,
    ]


def run(command: list[str], output_dir: Path, kill_at: KillPoint | None, log) -> str:
    """Run to the end, or SIGKILL the process once `kill_at` is reached; returns what happened."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONFAULTHANDLER": "1"}
    at_launch = progress(output_dir)[2]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    started = time.monotonic()
    while process.poll() is None:
        elapsed = time.monotonic() - started
        if elapsed > RUN_TIMEOUT_S:  # a hang: stop it (with its stacks, PYTHONFAULTHANDLER) rather than wait forever
            process.send_signal(signal.SIGABRT)
            process.wait()
            raise RuntimeError(f"{command[1]} ran past {RUN_TIMEOUT_S} s and was stopped; its stacks are in the log")
        if kill_at is not None and kill_at.reached(output_dir, elapsed, at_launch):
            leftovers = sorted(p.name for p in output_dir.glob(".*")) if output_dir.is_dir() else []
            process.send_signal(signal.SIGKILL)
            process.wait()
            return (f"killed {elapsed:.1f} s after launch ({kill_at.describe()}; hidden partial folders then: "
                    f"{leftovers or 'none'})")
        time.sleep(0.002)
    if process.returncode != 0:
        raise RuntimeError(f"{command[1]} exited with {process.returncode}; see the log")
    return "finished" if kill_at is None else f"finished before the kill point ({kill_at.describe()})"


def kill_and_resume(workdir: Path, points: list[KillPoint]) -> dict:
    """The whole check with a kill at each of `points`; returns the report (kill outcomes, comparisons)."""
    inputs = prepare_inputs(workdir)
    with open(workdir / "train.log", "w") as log:
        straight, resumed = workdir / "straight", workdir / "resumed"
        run(train_command(inputs, straight), straight, None, log)
        outcomes = []
        command = train_command(inputs, resumed, "--resume_from_checkpoint", "latest")
        for point in points:
            outcomes.append(run(command, resumed, point, log))
        outcomes.append(run(command, resumed, None, log))
    return {"outcomes": outcomes, **compare(straight, resumed)}


def compare(straight: Path, resumed: Path) -> dict:
    from safetensors.torch import load_file

    def weights_equal(relative: str) -> bool:
        first, second = load_file(straight / relative), load_file(resumed / relative)
        return first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)

    results = [json.loads((folder / "results.json").read_text()) for folder in (straight, resumed)]
    return {
        "final_weights_equal": weights_equal(f"checkpoint-{MAX_STEPS}/model.safetensors"),
        "exported_weights_equal": weights_equal("model/model.safetensors"),
        "results_equal": all(results[0][key] == results[1][key] for key in RESULT_KEYS),
        "same_files": sorted(p.name for p in straight.iterdir()) == sorted(p.name for p in resumed.iterdir()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="kept when given (default: a temporary folder, removed)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kill-resume-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        report = kill_and_resume(workdir, draw_kill_points(args.kills, args.seed))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    killed = sum(outcome.startswith("killed") for outcome in report["outcomes"])
    equal = report["final_weights_equal"] and report["exported_weights_equal"]
    lines = [
        "# SIGKILL and resume", "",
        f"`python benchmarks/kill_resume.py --kills {args.kills} --seed {args.seed}` "
        f"({time.perf_counter() - started:.0f} s on this machine). One uninterrupted run, then one run killed with "
        f"SIGKILL {killed} times, relaunched each time with `--resume_from_checkpoint latest`:", "",
        *[f"{i + 1}. {outcome}" for i, outcome in enumerate(report["outcomes"])], "",
        f"- final weights (checkpoint-{MAX_STEPS}) bitwise equal: {report['final_weights_equal']}",
        f"- exported best model bitwise equal: {report['exported_weights_equal']}",
        f"- results.json equal (histories, best step, test and baseline scores): {report['results_equal']}",
        f"- same files in the output folder (no partial left, the same 2 checkpoints kept): {report['same_files']}",
    ]
    (REPO / "benchmarks" / "KILL_RESUME.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"kills={killed} resumed_to_end={report['outcomes'][-1] == 'finished'} weights_equal={equal} "
          f"results_equal={report['results_equal']}")


if __name__ == "__main__":
    main()
