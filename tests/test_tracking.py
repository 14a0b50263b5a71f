"""train.py --report_to: Accelerate's trackers, checked before any work; a TensorBoard run writes readable scalars."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_BACKBONES, build_synthetic_city, build_tokenizer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train as train_script  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    TINY_BACKBONES["llama"](len(tokenizer)).save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    return {"root": root, "backbone": str(root / "backbone"),
            "city": build_synthetic_city(root / "city", "city", seed=5)}


def arguments(workspace, output_dir, *extra):
    return ["--dataset", workspace["city"], "--backbone", workspace["backbone"], "--num_backbone_layers", "1",
            "--per_device_batch_size", "12", "--output_dir", str(output_dir), *extra]


def test_a_tensorboard_run_writes_train_and_validation_scalars(workspace):
    output = workspace["root"] / "run"
    train_script.main(arguments(workspace, output, "--max_steps", "4", "--eval_steps", "2", "--report_to", "tensorboard"))
    events = list((output / train_script.TRACKER_PROJECT).rglob("events.out.tfevents.*"))
    assert events, f"no event file under {output / train_script.TRACKER_PROJECT}"
    scalars = {}
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(accumulator.Scalars(tag))
    assert [event.step for event in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [event.step for event in scalars["train/lr"]] == [1, 2, 3, 4]
    assert [event.step for event in scalars["validation/hit@1"]] == [2, 4]
    assert all(0.0 <= event.value <= 1.0 for event in scalars["validation/hit@1"])
    assert all(torch.isfinite(torch.tensor(event.value)) for events in scalars.values() for event in events)


@pytest.mark.parametrize("value, message", [
    ("tensorbored", "'tensorbored': expected none or trackers among all, aim, tensorboard"),
    ("wandb", "wandb: not installed here; installed trackers: tensorboard"),
    ("tensorboard,mlflow", "mlflow: not installed here"),
])
def test_an_unknown_or_missing_tracker_is_refused_before_any_work(workspace, capsys, value, message):
    output = workspace["root"] / f"refused-{value}"
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(arguments(workspace, output, "--max_steps", "2", "--report_to", value))
    assert exit_info.value.code == 2
    assert f"argument --report_to: {message}" in capsys.readouterr().err
    assert not output.exists()


def test_none_and_all_select_what_accelerate_knows():
    assert train_script.tracker_names("none") == []
    assert train_script.tracker_names("all") == ["all"]
    assert train_script.tracker_names("TensorBoard") == ["tensorboard"]
