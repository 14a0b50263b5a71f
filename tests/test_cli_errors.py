"""Bad inputs against every command, as a new user would give them, each run as a subprocess: the exit code, one clear
`error:` line naming the thing and the value (no traceback), and every file that existed before byte-identical after.

The cases are those of issue 13 (each used to end in a traceback, a misleading message or a silently replaced result),
those of issue 24 (a config from another model, pickled weights, a full disk, a city of fewer cells than Hit@20 ranks)
and some that were already handled well, so they stay that way. They run two at a time (each pays the ~5 s import).
"""

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import processes
import pytest
import torch
from conftest import build_synthetic_city, save_tiny_backbone
from processes import BASE_ENV

from nextlocllm_hf.outputs import PARTIAL_PATTERNS, existing_outputs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train as train_script  # noqa: E402

ENV = {**BASE_ENV, "OMP_NUM_THREADS": "1"}
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
    backbone = Path(save_tiny_backbone(root / "tiny-gpt2"))
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

    # issue 24: a config.json from another model (other widths) beside the weights, and pickled weights only
    paths["other_width"] = shutil.copytree(run / "model", root / "other-width-model")
    config = json.loads((paths["other_width"] / "config.json").read_text())
    config["llm_config"]["n_embd"] = 64  # GPT-2's hidden_size
    (paths["other_width"] / "config.json").write_text(json.dumps(config))
    paths["other_embedding"] = shutil.copytree(run / "model", root / "other-embedding-model")
    config = json.loads((paths["other_embedding"] / "config.json").read_text())
    (paths["other_embedding"] / "config.json").write_text(json.dumps({**config, "coordinate_embedding_dim": 64}))
    paths["pickled"] = shutil.copytree(run / "model", root / "pickled-model")
    (paths["pickled"] / "model.safetensors").unlink()
    paths["unpickled"] = root / "unpickled.marker"  # what loading the pickle would write
    torch.save({"weights": Unpickled(paths["unpickled"])}, paths["pickled"] / "pytorch_model.bin")

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


class Unpickled:
    """Unpickling this writes the file `marker`: a pickle runs whatever its author wrote."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


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
        rf"--resume_from_checkpoint {f['damaged']}: .*damaged",
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
    # --- issue 24: a config from another model, pickled weights (nothing may be unpickled)
    "a config whose hidden_size differs from the weights'": lambda f: (
        predict_args(f, f["other_width"]),
        rf"{f['other_width']}: config.json says llm_config.n_embd=64 \(the backbone's hidden_size\) but "
        r"model.safetensors holds poi_text_embeddings of shape \(5, \d+, 32\), where that config builds "
        r"\(5, \d+, 64\) \(\d+ more tensors disagree\): the config and the weights come from different models",
        [f["other_width"]]),
    "evaluate with a config whose coordinate_embedding_dim differs from the weights'": lambda f: (
        [*EVALUATE, "--model", str(f["other_embedding"]), "--dataset", str(f["city"])],
        rf"{f['other_embedding']}: config.json says coordinate_embedding_dim=64 but model.safetensors holds "
        r"coordinate_embedding.weight of shape \(128, 2\), where that config builds \(64, 2\) \(2 more tensors "
        r"disagree\): the config and the weights come from different models",
        [f["other_embedding"]]),
    "train --init_model with a config that differs from the weights": lambda f: (
        train_args(f, f["root"] / "new-run", "--max_steps", "1", "--init_model", str(f["other_width"])),
        rf"{f['other_width']}: config.json says llm_config.n_embd=64", [f["other_width"]]),
    "predict with a model folder holding only pickled weights": lambda f: (
        predict_args(f, f["pickled"]),
        rf"{f['pickled']} holds only pickled weights \(pytorch_model.bin\); NextLocLLM loads safetensors only "
        r"\(model.safetensors\).*re-save it with save_pretrained where you trust the file",
        [f["pickled"]]),
    "evaluate a model folder holding only pickled weights": lambda f: (
        [*EVALUATE, "--model", str(f["pickled"]), "--dataset", str(f["city"])],
        rf"{f['pickled']} holds only pickled weights \(pytorch_model.bin\)", [f["pickled"]]),
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
        return processes.run(command, timeout=300, env=ENV, cwd=REPO)

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


def test_overwrite_replaces_only_what_it_was_asked_to(files, tmp_path):
    """--overwrite replaces a city folder whole (a reader never sees a mix); a run folder's earlier run is removed."""
    city = shutil.copytree(files["city"], tmp_path / "city")
    done = processes.run([*BUILD, "--city", "b", "--seed", "5", "--output", str(city), "--overwrite"], timeout=300,
                         env=ENV, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((city / "city.json").read_text())["city"] == "b"
    # no partial or old copy left (the lock file of nextlocllm_hf/locks.py stays by design)
    assert existing_outputs(tmp_path, PARTIAL_PATTERNS) == []
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["city"]


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
    interrupted = processes.run([sys.executable, "-c", INTERRUPT_DURING_CHECKPOINT_3, *command[1:]], timeout=300,
                                env=ENV, cwd=REPO)
    stderr = interrupted.stderr
    assert interrupted.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert re.search(rf"interrupted: every checkpoint in {output} is complete \(nothing half-written is kept\); "
                     r"resume with the same command plus --resume_from_checkpoint latest \(from checkpoint-2\)",
                     stderr), stderr[-3000:]
    # step 3's evaluation ran before its checkpoint, so `best` is complete; checkpoint 3 never appears
    assert sorted(p.name for p in output.iterdir()) == ["best", "checkpoint-1", "checkpoint-2"]
    resumed = processes.run([*command, "--resume_from_checkpoint", "latest"], timeout=300, env=ENV, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resumed from .*checkpoint-2 at step 2", resumed.stdout)
    assert sorted(p.name for p in output.iterdir()) == ["best", "checkpoint-5", "checkpoint-6", "model",
                                                        "results.json"]


# --------------------------------------------------------------------------------------------- issue 24, point 6
def test_pickled_weights_are_never_unpickled(outcomes, files, tmp_path):
    """The refused pickle was not run by any command; the same pickle does write its marker when torch unpickles it
    (so the marker's absence means something)."""
    for case in ("predict with a model folder holding only pickled weights",
                 "evaluate a model folder holding only pickled weights"):
        assert outcomes[case][0].returncode == 2
    assert not files["unpickled"].exists()
    marker = tmp_path / "marker"
    torch.save(Unpickled(marker), tmp_path / "pickle.bin")
    torch.load(tmp_path / "pickle.bin", weights_only=False)
    assert marker.exists()


def assert_one_error(result, message: str) -> str:
    """Exit 2, no traceback, exactly one `error:` line, matching `message` (a regex); returns that line."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert re.search(message, errors[0]), errors[0]
    return errors[0]


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of its own, 4 MB (tmpfs), mounted at tmp_path/disk for the test: a write past its size fails
    with ENOSPC, as on a full disk. Mounting needs root (CAP_SYS_ADMIN); without it the test is skipped."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small filesystem")
    mounted = processes.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], timeout=60, env=ENV)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem (needs root / CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        processes.run(["umount", "-l", str(disk)], timeout=60, env=ENV)


def leave_free(disk: Path, free: int) -> None:
    """Fill `disk` with a file of zeros until about `free` bytes are left."""
    with open(disk / "filler", "wb") as filler:
        filler.write(bytes(max(shutil.disk_usage(disk).free - free, 0)))


def no_space_message(target: Path, disk: Path) -> str:
    return rf"error: no space left on device writing {re.escape(str(target))} \([\d.]+ [kMG]?B free on " \
           rf"{re.escape(str(disk.resolve()))}\)$"


def leftovers(folder: Path) -> list[str]:
    """Hidden partial writes anywhere under `folder`."""
    return [str(p) for p in [folder, *folder.rglob("*")] if p.is_dir() and existing_outputs(p, PARTIAL_PATTERNS)]


def test_a_build_into_a_full_disk_is_one_error_and_keeps_the_city_there(files, small_disk):
    """nextlocllm-build-city --overwrite onto a city on a disk too full for the new one: one error naming the target,
    the partial write gone, the city that was there byte-identical."""
    city = shutil.copytree(files["city"], small_disk / "city")
    leave_free(small_disk, 16_000)
    before = snapshot([city])
    script = Path(sys.executable).parent / "nextlocllm-build-city"  # the installed command, else the checkout's
    command = [str(script)] if script.exists() else BUILD[:2]
    result = processes.run([*command, *BUILD[2:], "--city", "b", "--output", str(city), "--overwrite"], timeout=300,
                           env=ENV, cwd=REPO)
    assert_one_error(result, no_space_message(city, small_disk))
    assert snapshot([city]) == before
    assert leftovers(small_disk) == []


@pytest.mark.parametrize("free, extra, written", [
    (600_000, [], "best"),  # the best model's model.safetensors does not fit: safetensors' SafetensorError
    # checkpoint-1's model.safetensors fits, its optimizer.bin does not: torch.save's RuntimeError names no cause
    (1_200_000, ["--checkpointing_steps", "1"], "checkpoint-1"),
], ids=["safetensors", "torch.save"])
def test_training_into_a_full_disk_is_one_error(files, small_disk, free, extra, written):
    output = small_disk / "run"
    leave_free(small_disk, free)
    # The free space is measured for the paper's model, which has no warm start to save as best/ at step 0.
    result = processes.run(train_args(files, output, "--recipe", "paper", "--max_steps", "2", "--eval_steps", "2",
                                      *extra), timeout=300, env=ENV, cwd=REPO)
    assert_one_error(result, no_space_message(output / written, small_disk))
    assert not (output / written).exists() and leftovers(small_disk) == []


def test_a_write_to_a_full_device_is_one_error_naming_the_target(tmp_path):
    """Without privileges: Python's own file writes into /dev/full (every write fails with ENOSPC) inside
    `replacing_folder` / `replacing_file`: one NoSpaceError naming the target, on one line; the partial gone, the
    previous result as it was. (safetensors would replace /dev/full by a file: it writes a sibling and renames it.)"""
    from nextlocllm_hf.cli import describe
    from nextlocllm_hf.outputs import NoSpaceError, replacing_file, replacing_folder

    if not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)):
        pytest.skip("no /dev/full device")
    folder, file = tmp_path / "model", tmp_path / "results.json"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"the previous model")
    file.write_text("the previous results")
    for replacing, target in ((replacing_folder, folder), (replacing_file, file)):
        with pytest.raises(NoSpaceError) as raised:
            with replacing(target) as partial:
                (partial / "config.json" if partial.is_dir() else partial).write_text("{}")
                Path("/dev/full").write_text("x" * 100_000)
        text = describe(raised.value)
        assert re.fullmatch(rf"no space left on device writing {re.escape(str(target))} \([\d.]+ [kMGT]?B free on "
                            r"/.*\)", text), text
        assert raised.value.errno == errno.ENOSPC and "\n" not in text
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "results.json"]
    assert (folder / "model.safetensors").read_bytes() == b"the previous model"
    assert file.read_text() == "the previous results"


def build_three_cell_city(folder: Path) -> Path:
    """A city whose records all lie in 3 cells (fewer than Hit@20's ranks): 12 users moving between 3 places."""
    from nextlocllm_hf.data import BuildConfig, build_and_save

    places = [(40.700, -74.000), (40.720, -73.980), (40.740, -74.010)]
    rng = np.random.default_rng(0)
    rows = []
    for user in range(12):
        home = rng.integers(3)
        for k in range(60):
            lat, lon = places[home if k % 2 else rng.integers(3)]
            when = pd.Timestamp("2024-03-04 08:00") + pd.Timedelta(hours=3 * k + user)
            rows.append({"user_id": f"u{user}", "utc_time": str(when), "latitude": lat, "longitude": lon})
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "records.csv", index=False)
    config = BuildConfig(city="three", format="csv", input=str(folder / "records.csv"), output=str(folder / "city"))
    config.show_progress = False
    build_and_save(config)
    assert len(pd.read_parquet(folder / "city" / "cells.parquet")) == 3
    return folder / "city"


def test_a_city_of_three_cells_trains_and_evaluates_to_the_end(files, tmp_path):
    """Fewer cells than MAX_RANK: the ranking stops at the city's last cell and the metrics count it right (every
    target is among the 3 cells, so Hit@5 = Hit@10 = Hit@20 = 1 and NDCG@5 = NDCG@10), for the model and every
    baseline; evaluation afterwards too; and predict, without a --k, lists the city's 3 cells (its default is 10)."""
    city = build_three_cell_city(tmp_path / "three")
    output = tmp_path / "run"
    command = [*TRAIN, "--dataset", str(city), "--backbone", str(files["backbone"]), "--num_backbone_layers", "2",
               "--per_device_batch_size", "12", "--per_device_eval_batch_size", "8", "--max_steps", "2",
               "--eval_steps", "2", "--output_dir", str(output), "--gbdt_baseline"]
    trained = processes.run(command, timeout=300, env=ENV, cwd=REPO)
    assert trained.returncode == 0, trained.stderr[-3000:]
    results = json.loads((output / "results.json").read_text())
    rows = {"NextLocLLM": results["test"]["three"], **results["baselines"]}
    assert {"NextLocLLM", "most_frequent / three", "gbdt_ranker / three"} <= set(rows)
    for name, scores in rows.items():
        assert scores["hit@5"] == scores["hit@10"] == scores["hit@20"] == 1.0, name
        assert scores["ndcg@5"] == scores["ndcg@10"] and scores["hit@1"] <= scores["mrr"], name
        assert 1 / 3 <= scores["mrr"] <= 1, name  # every target within rank 3
    evaluated = processes.run([*EVALUATE, "--model", str(output / "model"), "--dataset", str(city), "--baselines"],
                              timeout=300, env=ENV, cwd=REPO)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert re.search(r"^NextLocLLM +[\d.]+ +100\.00 +100\.00 +100\.00 ", evaluated.stdout, re.M), evaluated.stdout
    from nextlocllm_hf import NextLocLLMForCoordinateRegression
    from nextlocllm_hf.predict import predict_next

    one_user = pd.read_csv(city.parent / "records.csv").query("user_id == 'u0'").head(50)
    one_user = one_user.rename(columns={"utc_time": "local_time"}).drop(columns="user_id")
    listed = predict_next(NextLocLLMForCoordinateRegression.from_pretrained(output / "model"), "three", one_user)
    assert sorted(listed["cell_id"]) == [0, 1, 2]
