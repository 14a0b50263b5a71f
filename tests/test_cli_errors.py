"""Bad inputs against every command, as a new user would give them, each run as a subprocess: the exit code, one clear
`error:` line naming the thing and the value (no traceback), and every file that existed before byte-identical after.

The cases are those of issue 13 (each used to end in a traceback, a misleading message or a silently replaced result)
and some that were already handled well, so they stay that way. They run two at a time (each pays the ~5 s import).
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_BACKBONES, build_synthetic_city, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train as train_script  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TRAIN = [sys.executable, str(REPO / "train.py")]
BUILD = [sys.executable, str(REPO / "dataset_scripts" / "build_city.py"), "--format", "synthetic", "--users", "12",
         "--records-per-user", "60", "--extent-km", "4", "--no-progress"]
PREDICT = [sys.executable, "-m", "nextlocllm_hf.predict"]
EVALUATE = [sys.executable, "-m", "nextlocllm_hf.evaluate"]
HUB = [sys.executable, "-m", "nextlocllm_hf.hub"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A city, a finished training run, its model and damaged copies of it, and other things a user may point at."""
    root = tmp_path_factory.mktemp("bad-inputs")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    backbone = root / "tiny-gpt2"
    TINY_BACKBONES["gpt2"](len(tokenizer)).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    city = Path(build_synthetic_city(root / "city", "city-a", seed=3))
    run = root / "run"
    train_script.main(["--dataset", str(city), "--backbone", str(backbone), "--num_backbone_layers", "2",
                       "--per_device_batch_size", "12", "--per_device_eval_batch_size", "8", "--max_steps", "2",
                       "--eval_steps", "2", "--checkpointing_steps", "1", "--output_dir", str(run)])
    paths = {"root": root, "backbone": backbone, "city": city, "run": run, "model": run / "model"}

    paths["truncated"] = shutil.copytree(run / "model", root / "truncated-model")
    weights = paths["truncated"] / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    paths["gpt2_type"] = shutil.copytree(run / "model", root / "gpt2-type-model")
    config = json.loads((paths["gpt2_type"] / "config.json").read_text())
    (paths["gpt2_type"] / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))

    paths["unfinished"] = root / "unfinished"
    shutil.copytree(run / "checkpoint-1", paths["unfinished"] / "checkpoint-1")
    paths["damaged"] = shutil.copytree(run / "checkpoint-2", root / "damaged" / "checkpoint-2")
    os.truncate(paths["damaged"] / "optimizer.bin", 100)

    paths["half_city"] = root / "half-city"  # a folder holding only a train.parquet
    paths["half_city"].mkdir()
    shutil.copy(city / "train.parquet", paths["half_city"])
    paths["a_file"] = root / "notes.txt"
    paths["a_file"].write_text("not a folder\n")
    paths["empty"] = root / "empty"
    paths["empty"].mkdir()
    paths["no_latitude"] = root / "no-latitude.csv"
    paths["no_latitude"].write_text("lat_deg,longitude,local_time\n40.0,-74.0,2024-03-04 08:00\n")
    paths["plot"] = root / "earlier.png"
    paths["plot"].write_bytes(b"an earlier figure")

    cells = pd.read_parquet(city / "cells.parquet")
    rows = np.random.default_rng(0).integers(0, len(cells), 50)
    paths["records"] = root / "user.csv"
    pd.DataFrame({"latitude": cells["lat"].to_numpy()[rows], "longitude": cells["lon"].to_numpy()[rows],
                  "local_time": pd.date_range("2024-03-04 08:00", periods=50, freq="3h").astype(str)}).to_csv(
        paths["records"], index=False)
    return paths


def train_args(files, output_dir, *extra):
    return [*TRAIN, "--dataset", str(files["city"]), "--backbone", str(files["backbone"]), "--num_backbone_layers",
            "2", "--per_device_batch_size", "12", "--per_device_eval_batch_size", "8", "--output_dir",
            str(output_dir), *extra]


def predict_args(files, model, *extra):
    return [*PREDICT, "--model", str(model), "--city", "city-a", "--input", str(files["records"]), *extra]


# id -> f -> (command, expected error line (regex), the paths whose files must stay byte-identical); exit code 2.
CASES = {
    # --- issue 13: silently replaced results
    "build onto a city folder": lambda f: (
        [*BUILD, "--city", "b", "--output", str(f["city"])],
        rf"--output {f['city']} already holds a city folder \(README.md, cells.parquet, city.json, .*\): pass --overwrite",
        [f["city"]]),
    "build onto a folder holding a train.parquet": lambda f: (
        [*BUILD, "--city", "b", "--output", str(f["half_city"])],
        rf"--output {f['half_city']} already holds a city folder \(train.parquet\): pass --overwrite",
        [f["half_city"]]),
    "build onto a folder holding other files, even with --overwrite": lambda f: (
        [*BUILD, "--city", "b", "--output", str(f["run"]), "--overwrite"],
        rf"--output {f['run']} holds best, checkpoint-1, .* which is not part of a city folder: refusing",
        [f["run"]]),
    "train into a finished run": lambda f: (
        train_args(f, f["run"], "--max_steps", "2"),
        rf"--output_dir {f['run']} holds a finished run \(best, checkpoint-1, checkpoint-2, model, "
        r"results.json\): pass --overwrite to replace it",
        [f["run"]]),
    "train into an unfinished run": lambda f: (
        train_args(f, f["unfinished"], "--max_steps", "2"),
        rf"--output_dir {f['unfinished']} holds an unfinished run \(checkpoint-1\): resume it with "
        r"--resume_from_checkpoint latest, or pass --overwrite",
        [f["unfinished"]]),
    "plot onto an existing file": lambda f: (
        predict_args(f, f["model"], "--plot", str(f["plot"])),
        rf"--plot {f['plot']} already exists: pass --overwrite to replace it",
        [f["plot"]]),
    # --- issue 13: train.py options
    "--max_steps 0": lambda f: (
        train_args(f, f["root"] / "new-run", "--max_steps", "0"),
        r"train.py: error: argument --max_steps: expected an integer >= 1, got '0'", []),
    "negative learning rate": lambda f: (
        train_args(f, f["root"] / "new-run", "--learning_rate=-0.001"),
        r"argument --learning_rate: expected a finite number > 0, got '-0.001'", []),
    "train on a folder that is not a city": lambda f: (
        [*train_args(f, f["root"] / "new-run", "--max_steps", "1"), "--dataset", str(f["empty"])],
        rf"error: {f['empty']} is not a city dataset folder \(no city.json\) and holds none", [f["empty"]]),
    "a checkpoint limit without checkpoints": lambda f: (
        train_args(f, f["root"] / "new-run", "--checkpoints_total_limit", "2"),
        r"--checkpoints_total_limit needs --checkpointing_steps", []),
    "resume from a folder that does not exist": lambda f: (
        train_args(f, f["root"] / "new-run", "--resume_from_checkpoint", str(f["root"] / "checkpoint-9")),
        rf"--resume_from_checkpoint {f['root'] / 'checkpoint-9'}: no such checkpoint folder", []),
    "resume from a damaged checkpoint": lambda f: (
        train_args(f, f["damaged"].parent, "--max_steps", "3", "--resume_from_checkpoint", str(f["damaged"])),
        rf"--resume_from_checkpoint {f['damaged']}: damaged, incomplete or from another configuration",
        [f["damaged"].parent]),
    # --- issue 13: damaged or foreign model folders, missing local paths
    "truncated weights": lambda f: (
        predict_args(f, f["truncated"]),
        rf"{f['truncated']}: the safetensors weights are truncated or damaged", [f["truncated"]]),
    "another model_type": lambda f: (
        predict_args(f, f["gpt2_type"]),
        rf"model {f['gpt2_type']}: config.json has model_type 'gpt2', not 'nextlocllm': not a NextLocLLM model",
        [f["gpt2_type"]]),
    "a local model folder that does not exist": lambda f: (
        predict_args(f, f["root"] / "runs" / "alpha" / "model"),
        rf"model {f['root'] / 'runs' / 'alpha' / 'model'}: no such folder", []),
    "a relative path that could be a repo id": lambda f: (
        predict_args(f, "runs/nope"),
        r"model runs/nope: no such local folder, and no Hub repo of that id could be loaded", []),
    "evaluate on a folder that is not a city": lambda f: (
        [*EVALUATE, "--model", str(f["model"]), "--dataset", str(f["empty"])],
        rf"{f['empty']} is not a city dataset folder", [f["empty"]]),
    "evaluate on a dataset folder that does not exist": lambda f: (
        [*EVALUATE, "--model", str(f["model"]), "--dataset", "data/nope"],
        r"city dataset data/nope: no such local folder, and no Hub repo of that id could be loaded", []),
    "--output that is a file": lambda f: (
        [*BUILD, "--city", "b", "--output", str(f["a_file"])],
        rf"--output {f['a_file']} is a file, not a folder", [f["a_file"]]),
    # --- already handled well: they stay that way
    "build with bad split fractions": lambda f: (
        [*BUILD, "--city", "b", "--output", str(f["root"] / "new-city"), "--split-fractions", "0.5,0.5"],
        r"--split-fractions must be 3 comma-separated numbers, got '0.5,0.5'", []),
    "predict with a records file lacking a column": lambda f: (
        [*PREDICT, "--model", str(f["model"]), "--city", "city-a", "--input", str(f["no_latitude"])],
        r"missing column 'latitude'", []),
    "predict --k 0": lambda f: (
        predict_args(f, f["model"], "--k", "0"), r"argument --k: expected an integer >= 1, got '0'", []),
    "predict a city the model does not know": lambda f: (
        [*PREDICT, "--model", str(f["model"]), "--city", "atlantis", "--input", str(f["records"])],
        r"--city 'atlantis' is not a city of this model; its cities: \['city-a'\]", []),
    "push a model folder that does not exist": lambda f: (
        [*HUB, "push-model", str(f["root"] / "absent"), "--repo_id", "org/x"],
        rf"model folder not found: {f['root'] / 'absent'}", []),
}


def snapshot(paths) -> dict[str, str]:
    digests = {}
    for path in map(Path, paths):
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file():
                digests[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def outcomes(files):
    """Every case run once, two at a time: id -> (completed process, files before, files after)."""
    table = {case: build(files) for case, build in CASES.items()}
    before = {case: snapshot(protected) for case, (_, _, protected) in table.items()}

    def run(command):
        return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(table, pool.map(run, [command for command, _, _ in table.values()])))
    return {case: (results[case], before[case], snapshot(table[case][2])) for case in table}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_error(outcomes, files, case):
    result, before, after = outcomes[case]
    message = CASES[case](files)[1]
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert re.search(message, errors[0]), errors[0]
    assert after == before  # every pre-existing file byte-identical
    assert not (files["root"] / "new-run").exists() and not (files["root"] / "new-city").exists()


def test_predict_k_must_be_positive(files):
    from nextlocllm_hf import NextLocLLMForCoordinateRegression
    from nextlocllm_hf.batching import CitySamples
    from nextlocllm_hf.data import load_city_splits

    model = NextLocLLMForCoordinateRegression.from_pretrained(files["model"])
    city = load_city_splits(files["city"])
    batch = CitySamples(city.splits["test"], {city.name: city.metadata})[:2]
    for k in (-3, 0, 2.5):
        with pytest.raises(ValueError, match=rf"k={k!r}: expected a positive integer"):
            model.predict(batch, city=city.name, k=k)


def test_overwrite_replaces_only_what_it_was_asked_to(files, tmp_path):
    """--overwrite replaces a city folder whole (a reader never sees a mix); a run folder's earlier run is removed."""
    city = shutil.copytree(files["city"], tmp_path / "city")
    done = subprocess.run([*BUILD, "--city", "b", "--seed", "5", "--output", str(city), "--overwrite"],
                          capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((city / "city.json").read_text())["city"] == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["city"]  # no partial or old copy left


# Runs train.py unchanged, except that Accelerate's save_state sends the process a real SIGINT once it has written
# checkpoint 3's files and before that write is renamed into place: the interrupt lands mid-checkpoint on every
# machine, however fast or loaded (a signal sent from outside after polling for the folder could land anywhere). A
# process started in the background of a non-interactive shell (nohup, CI) inherits SIGINT ignored, so Python would
# install no KeyboardInterrupt handler; the terminal a user presses Ctrl-C in has it, and so does this run.
INTERRUPT_DURING_CHECKPOINT_3 = """
import os, runpy, signal, sys
import accelerate

signal.signal(signal.SIGINT, signal.default_int_handler)

save_state = accelerate.Accelerator.save_state

def save_state_then_ctrl_c(self, output_dir=None, **kwargs):
    written = save_state(self, output_dir, **kwargs)
    if os.path.basename(str(output_dir)) == ".checkpoint-3.partial":
        os.kill(os.getpid(), signal.SIGINT)
    return written

accelerate.Accelerator.save_state = save_state_then_ctrl_c
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_ctrl_c_keeps_only_complete_checkpoints_and_says_how_to_resume(files, tmp_path):
    """SIGINT while checkpoint 3 is written: exit 130, the resume command, no partial; `latest` then finishes from a
    complete checkpoint, and --checkpoints_total_limit keeps the newest two."""
    output = tmp_path / "run"
    command = train_args(files, output, "--max_steps", "6", "--eval_steps", "3", "--checkpointing_steps", "1",
                         "--checkpoints_total_limit", "2")
    interrupted = subprocess.run([sys.executable, "-c", INTERRUPT_DURING_CHECKPOINT_3, *command[1:]],
                                 capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    stderr = interrupted.stderr
    assert interrupted.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert re.search(rf"interrupted: every checkpoint in {output} is complete \(nothing half-written is kept\); "
                     r"resume with the same command plus --resume_from_checkpoint latest \(from checkpoint-2\)",
                     stderr), stderr[-3000:]
    # step 3's evaluation ran before its checkpoint, so `best` is complete; checkpoint 3 never appears
    assert sorted(p.name for p in output.iterdir()) == ["best", "checkpoint-1", "checkpoint-2"]
    resumed = subprocess.run([*command, "--resume_from_checkpoint", "latest"], capture_output=True, text=True,
                             env=ENV, cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resumed from .*checkpoint-2 at step 2", resumed.stdout)
    assert sorted(p.name for p in output.iterdir()) == ["best", "checkpoint-5", "checkpoint-6", "model",
                                                        "results.json"]
