"""What train.py does with its --output_dir that others may have touched: one run writes it at a time, and resuming
from a checkpoint folder, which may come from anywhere, never runs code hidden in one of its files."""

import hashlib
import json
import os
import pickle
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_synthetic_city, save_tiny_backbone
from processes import BASE_ENV, run, spawned

from nextlocllm_hf.locks import lock_path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train as train_script  # noqa: E402

ENV = {**BASE_ENV, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-folder")
    backbone = save_tiny_backbone(root / "tiny-gpt2")
    city = build_synthetic_city(root / "city", "city-a", seed=3)
    arguments = ["--dataset", city, "--backbone", backbone, "--num_backbone_layers", "2",
                 "--per_device_batch_size", "12", "--per_device_eval_batch_size", "8", "--max_steps", "2",
                 "--eval_steps", "2", "--checkpointing_steps", "1"]
    run_dir = root / "run"
    train_script.main([*arguments, "--output_dir", str(run_dir)])
    return {"root": root, "arguments": arguments, "run": run_dir}


def train_command(workspace, output_dir, *extra) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *workspace["arguments"], "--output_dir", str(output_dir), *extra]


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Payload:
    """Unpickled, it creates `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_checkpoint_state_is_json_and_nothing_is_registered_as_a_pickle(workspace):
    names = sorted(p.name for p in (workspace["run"] / "checkpoint-1").iterdir())
    assert "trainer_state.json" in names
    assert not [name for name in names if name.startswith("custom_checkpoint")]


# Each file a checkpoint holds, and the one older versions registered, with the writer that would have made it.
CRAFTED = {"model.safetensors": "pickle", "optimizer.bin": "torch.save", "random_states_0.pkl": "pickle",
           "trainer_state.json": "pickle", "custom_checkpoint_0.pkl": "torch.save"}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_pickle_in_a_checkpoint_is_refused_unrun(workspace, tmp_path, name):
    """A checkpoint file replaced by a pickle whose loading would create a folder: resuming is refused with one line
    naming the file, the payload never runs, nothing changes."""
    output = tmp_path / "run"
    shutil.copytree(workspace["run"], output)
    checkpoint = output / "checkpoint-2"
    marker = tmp_path / "payload-ran"
    if CRAFTED[name] == "pickle":
        (checkpoint / name).write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"state": Payload(marker)}, checkpoint / name)
    before = file_digests(output)
    result = run(train_command(workspace, output, "--resume_from_checkpoint", "latest"), env=ENV, cwd=REPO)
    assert result.returncode == 2, result.stderr[-3000:]
    assert not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: --resume_from_checkpoint {checkpoint}: {name} ")
    assert "Traceback" not in result.stderr
    assert file_digests(output) == before


def test_a_second_run_into_the_same_output_dir_is_refused_while_the_first_runs(workspace, tmp_path):
    """Two real processes: the second names the first's pid and changes nothing; once the first is killed (its lock
    left behind), a run goes through."""
    output = tmp_path / "shared-run"
    hold = ("import sys; from nextlocllm_hf.locks import exclusive_output\n"
            "with exclusive_output(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()")
    with spawned([sys.executable, "-c", hold, str(output)], env=ENV, stdin=-1, stdout=-1, text=True) as holder:
        assert holder.stdout.readline().strip() == "held"
        refused = run(train_command(workspace, output), env=ENV, cwd=REPO)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines()[-1] == (
            f"error: {output} is being written by another process (pid {holder.pid})")
        assert not output.exists()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finished = run(train_command(workspace, output), env=ENV, cwd=REPO)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert (output / "results.json").is_file()


@pytest.mark.parametrize("state, message", [
    ({}, "trainer_state.json is not this run's (the state has other keys (scheduler, tracker))"),
    ({"tracker": [], "scheduler": None}, "trainer_state.json is not this run's (tracker is not an object)"),
])
def test_a_trainer_state_of_another_shape_is_refused(workspace, tmp_path, state, message):
    output = tmp_path / "run"
    shutil.copytree(workspace["run"], output)
    (output / "checkpoint-2" / "trainer_state.json").write_text(json.dumps(state))
    before = file_digests(output)
    result = run(train_command(workspace, output, "--resume_from_checkpoint", "latest"), env=ENV, cwd=REPO)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --resume_from_checkpoint {output / 'checkpoint-2'}: {message}")
    assert file_digests(output) == before


def test_resuming_with_another_selection_metric_is_refused(workspace, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(workspace["run"], output)
    with pytest.raises(ValueError, match=r"its best checkpoint was chosen on hit@1, this run chooses on mrr"):
        train_script.main(train_command(workspace, output, "--resume_from_checkpoint", "latest",
                                        "--metric_for_best_model", "mrr")[2:])


def test_one_output_has_one_lock_however_it_is_named(tmp_path, monkeypatch):
    (tmp_path / "runs" / "alpha").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "runs" / "alpha")
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    same = {lock_path("."), lock_path(tmp_path / "runs" / ".." / "runs" / "alpha"), lock_path(tmp_path / "link" / "alpha")}
    assert same == {tmp_path / "runs" / ".alpha.lock"}
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a folder this user may not write (/tmp's parent)
    fallback = lock_path(tmp_path / "runs" / "alpha")
    assert fallback.parent.name == "nextlocllm-locks" and fallback != lock_path(tmp_path / "runs" / "beta")
