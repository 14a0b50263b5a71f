"""train.py: synchronized ranks, complete gathered evaluation, exact mid-epoch resume, honest best checkpoint."""

import json
import socket
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_synthetic_city, save_tiny_backbone
from processes import BASE_ENV, run
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModel

from nextlocllm_hf.checkpoint_selection import BestCheckpointTracker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train as train_script  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    backbone = save_tiny_backbone(root / "tiny-gpt2")  # GPT-2 has dropout: resuming must also restore the random state
    return {
        "root": root,
        "backbone": str(backbone),
        "city": build_synthetic_city(root / "city-a", "city-a", seed=3),
        "other_city": build_synthetic_city(root / "city-b", "city-b", seed=4, extent_km=6.0),
    }


def arguments(workspace, output_dir, *extra):
    return [
        "--dataset", workspace["city"],
        "--backbone", workspace["backbone"],
        "--num_backbone_layers", "2",
        "--per_device_batch_size", "12",
        "--per_device_eval_batch_size", "8",
        "--output_dir", str(output_dir),
        *extra,
    ]


def test_two_processes_stay_synchronized_and_gather_every_sample(workspace):
    """accelerate.debug_launcher, 2 gloo processes: identical parameters after training, every sample gathered once,
    and the windowed train loader sharded: each rank its own batches, together every sample."""
    output = workspace["root"] / "ddp"
    command = [sys.executable, str(REPO / "tests" / "debug_launcher_check.py"), workspace["city"], workspace["backbone"],
               str(output)]
    env = {**BASE_ENV, "ACCELERATE_USE_CPU": "1"}
    result = run(command, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DDP CHECK PASSED" in result.stdout
    assert (output / "model" / "model.safetensors").is_file()


def test_resume_mid_epoch_ends_bit_identical(workspace):
    root = workspace["root"]
    # 61 training samples / batch 12 -> 6 steps per epoch: a checkpoint at step 3 is mid-epoch, step 8 is in epoch 2.
    common = ("--eval_steps", "3", "--checkpointing_steps", "4")
    train_script.main(arguments(workspace, root / "straight", "--max_steps", "8", *common))
    train_script.main(arguments(workspace, root / "resumed", "--max_steps", "3", "--eval_steps", "3", "--checkpointing_steps", "3"))
    train_script.main(
        arguments(
            workspace, root / "resumed", "--max_steps", "8", *common,
            "--resume_from_checkpoint", str(root / "resumed" / "checkpoint-3"),
        )
    )
    straight = load_file(root / "straight" / "checkpoint-8" / "model.safetensors")
    resumed = load_file(root / "resumed" / "checkpoint-8" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    initial = train_script.build_model(train_script.parse_args(arguments(workspace, root / "x")), _metadata(workspace))
    assert not torch.equal(initial.regression_head.weight, straight["regression_head.weight"])  # it did train
    first = json.loads((root / "straight" / "results.json").read_text())
    second = json.loads((root / "resumed" / "results.json").read_text())
    assert first["test"] == second["test"] and first["best_step"] == second["best_step"]


def test_best_checkpoint_is_the_best_validation_score_and_is_exported(workspace):
    output = workspace["root"] / "best"
    results = train_script.main(
        arguments(workspace, output, "--max_steps", "6", "--eval_steps", "1", "--metric_for_best_model", "mean_error_m",
                  "--zero_shot_dataset", workspace["other_city"])
    )
    history = results["validation_history"]
    errors = [entry["mean_error_m"] for entry in history]
    assert [entry["step"] for entry in history] == list(range(7))  # the default recipe's warm start is step 0
    assert results["best_step"] == history[errors.index(min(errors))]["step"]  # lower error is better; first on ties
    exported = AutoModel.from_pretrained(output / "model")
    best = load_file(output / "best" / "model.safetensors")
    for name, value in exported.state_dict().items():
        assert torch.equal(value, best[name]), name
    assert exported.cities == ["city-a", "city-b"]  # the zero-shot city's retriever ships with the model
    assert set(results["zero_shot"]) == {"city-b"}
    card = (output / "model" / "README.md").read_text()
    assert "model-index" in card and f"{results['test']['city-a']['hit@1']:.6f}".rstrip("0") in card


def test_the_default_recipe_trains_the_ranker_from_its_features_only_warm_start(workspace):
    output = workspace["root"] / "ranker"
    results = train_script.main(arguments(
        workspace, output, "--max_steps", "4", "--eval_steps", "2", "--task_mode", "at_time",
        "--gbdt_baseline", "--zero_shot_dataset", workspace["other_city"],
    ))
    assert results["task_mode"] == "at_time"
    # Step 0 is the warm-started model: its context path is zero, so it ranks exactly like the features-only ranker.
    history = results["validation_history"]
    assert [entry["step"] for entry in history] == [0, 2, 4]
    assert history[0]["hit@1"] == pytest.approx(max(results["ranker_warm_start"]["validation_hit@1"]))
    assert {"gbdt_ranker / city-a", "gbdt_ranker / city-b (zero-shot)", "hour_frequency / city-a"} <= set(
        results["baselines"])
    exported = AutoModel.from_pretrained(output / "model")
    config = exported.config
    assert (config.recipe, config.task_mode, config.head_type, config.candidate_history) == (
        "ranker", "at_time", "point_ranker", True)
    assert float(exported.candidate_scorer.feature_scale.min()) > 0  # scaling fitted on training candidates
    # The loss is shown and kept in its parts: the head's metres and the weighted listwise loss, which sum to it.
    assert len(results["training_history"]) == 4
    for entry in results["training_history"]:
        assert {"position_loss", "listwise_loss", "copy_last_loss"} <= set(entry)
        assert entry["loss"] == pytest.approx(entry["position_loss"] + entry["listwise_loss"], rel=1e-5)
        assert entry["listwise_loss"] > entry["position_loss"]  # weighted 10,000 by the recipe


def test_the_warm_start_is_bounded_by_its_epochs_and_by_max_steps(workspace):
    """The features-only warm start runs at most --warm_start_epochs, and --max_steps bounds its steps too (here one
    step is one epoch: the city has fewer training samples than the warm start's batch)."""
    root = workspace["root"]
    by_steps = train_script.main(arguments(workspace, root / "warm-steps", "--max_steps", "1",
                                           "--warm_start_epochs", "30", "--warm_start_patience", "30"))
    warm = by_steps["ranker_warm_start"]
    assert (warm["steps"], warm["epochs_run"], warm["stopped"]) == (1, 1, "max_steps")
    by_epochs = train_script.main(arguments(workspace, root / "warm-epochs", "--epochs", "1",
                                            "--warm_start_epochs", "2", "--warm_start_patience", "30"))
    warm = by_epochs["ranker_warm_start"]
    assert (warm["epochs_run"], warm["stopped"], len(warm["validation_hit@1"])) == (2, "epochs", 2)


def test_a_lora_run_exports_a_peft_adapter_that_predicts_as_the_whole_model(workspace, capsys):
    from peft import PeftModel

    from nextlocllm_hf.data import load_city_splits
    from nextlocllm_hf.evaluate import model_samples

    output = workspace["root"] / "lora"
    train_script.main(arguments(workspace, output, "--max_steps", "2", "--eval_steps", "2", "--adaptation", "lora",
                                "--export_adapter"))
    assert "adapter exported to" in capsys.readouterr().out
    whole = AutoModel.from_pretrained(output / "model")
    config = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((output / "adapter_base").resolve())
    adapted = PeftModel.from_pretrained(AutoModel.from_pretrained(output / "adapter_base"), output / "adapter")
    city = load_city_splits(workspace["city"])
    batch = model_samples(whole, city.splits["test"], {city.name: city.retriever})[:16]
    expected, got = whole.predict(batch, city=city.name, k=5), adapted.predict(batch, city=city.name, k=5)
    assert torch.equal(got.coordinates, expected.coordinates) and torch.equal(got.top_k_cells, expected.top_k_cells)
    # The adapter holds the backbone's LoRA weights and the model's own layers, none of the frozen backbone's.
    keys = list(load_file(output / "adapter" / "adapter_model.safetensors"))
    backbone_keys = [key for key in keys if ".backbone." in key]
    assert backbone_keys and all("lora_" in key for key in backbone_keys)
    assert any(".regression_head." in key for key in keys)


def test_dataloader_workers_gather_the_same_batches(workspace):
    """Batches gathered from the records by two worker processes train and evaluate exactly as in-process ones."""
    results = {}
    for workers in (0, 2):
        output = workspace["root"] / f"workers{workers}"
        results[workers] = train_script.main(arguments(workspace, output, "--max_steps", "3", "--eval_steps", "3",
                                                       "--dataloader_num_workers", str(workers)))
    assert results[2]["test"] == results[0]["test"] and results[2]["validation_history"] == results[0][
        "validation_history"]
    first = load_file(workspace["root"] / "workers0" / "model" / "model.safetensors")
    second = load_file(workspace["root"] / "workers2" / "model" / "model.safetensors")
    assert all(torch.equal(value, second[name]) for name, value in first.items())


def test_export_adapter_needs_lora(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_script.parse_args(arguments(workspace, tmp_path / "o", "--export_adapter"))
    assert "--export_adapter needs --adaptation lora (got --adaptation norms)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "metric, values, best_index",
    [("hit@1", [0.2, 0.5, 0.4, 0.5], 1), ("mean_error_m", [900.0, 700.0, 800.0, 700.0], 1), ("mrr", [0.1], 0)],
)
def test_tracker_direction(metric, values, best_index):
    tracker = BestCheckpointTracker(metric=metric)
    improvements = [tracker.update(value, step) for step, value in enumerate(values)]
    assert tracker.best_step == best_index and tracker.best_value == values[best_index]
    assert improvements[best_index] and sum(improvements) == 1 + (best_index > 0)


def test_tracker_patience_stops_training():
    tracker = BestCheckpointTracker(metric="hit@1", patience=2)
    for step, value in enumerate([0.3, 0.2, 0.3]):
        tracker.update(value, step)
    assert tracker.should_stop and tracker.best_step == 0
    with pytest.raises(ValueError, match="validation hit@1=nan"):
        tracker.update(float("nan"), 3)


def test_bad_inputs_fail_before_training(workspace, tmp_path):
    not_a_city = tmp_path / "empty"
    not_a_city.mkdir()
    with pytest.raises(FileNotFoundError, match="not a city dataset folder"):
        train_script.main(arguments(workspace, tmp_path / "o1", "--max_steps", "1") + ["--dataset", str(not_a_city)])
    short = train_script.build_model(
        train_script.parse_args(arguments(workspace, tmp_path / "x")), {**_metadata(workspace), "history_length": 10}
    )
    short.save_pretrained(tmp_path / "short-model")
    with pytest.raises(ValueError, match=r"history_length=40 in the data but 10 in the model"):
        train_script.main(
            arguments(workspace, tmp_path / "o2", "--max_steps", "1", "--init_model", str(tmp_path / "short-model"))
        )
    assert not (tmp_path / "o2").exists()  # nothing started


def test_accelerate_launch_with_two_cpu_processes(workspace, tmp_path):
    """The documented multi-process command, run for real: two gloo ranks, synchronized, loadable output."""
    output = tmp_path / "launched"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(REPO / "train.py"), *arguments(workspace, output, "--max_steps", "3", "--eval_steps", "3"),
    ]
    env = {**BASE_ENV, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = run(command, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es)" in result.stdout and "trained parameters identical on all 2 processes" in result.stdout
    assert AutoModel.from_pretrained(output / "model").cities == ["city-a"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _metadata(workspace):
    from nextlocllm_hf.data import load_city_splits

    return load_city_splits(workspace["city"]).metadata


@pytest.mark.parametrize("name", ["multi_gpu", "fsdp", "deepspeed_zero2"])
def test_accelerate_config_files_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.name == {"multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED"}[name]
    assert config.mixed_precision == "bf16"


def test_evaluate_cli_prints_model_and_baselines_zero_shot(workspace, tmp_path, capsys):
    from nextlocllm_hf.evaluate import main as evaluate_main

    output = tmp_path / "run"
    train_script.main(arguments(workspace, output, "--max_steps", "2", "--eval_steps", "2"))
    capsys.readouterr()
    evaluate_main(["--model", str(output / "model"), "--dataset", workspace["other_city"], "--baselines"])
    printed = capsys.readouterr().out
    assert "city 'city-b' is new to this model: evaluating zero-shot" in printed
    for row in ("NextLocLLM", "last_location", "most_frequent", "markov_within_sample", "nearest_cells"):
        assert row in printed


def test_fsdp_on_cpu_loads_the_best_weights_into_the_shards(workspace, tmp_path):
    """Accelerate runs FSDP only on GPUs; torch's FSDP2 runs on CPU (gloo), and `load_best` works on its shards."""
    model = train_script.build_model(train_script.parse_args(arguments(workspace, tmp_path / "x")),
                                     _metadata(workspace))
    model.save_pretrained(tmp_path / "model")
    model.save_pretrained(tmp_path / "best")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(REPO / "tests" / "fsdp_cpu_check.py"), str(tmp_path / "model"),
               str(tmp_path / "best")]
    env = {**BASE_ENV, "OMP_NUM_THREADS": "1"}
    result = run(command, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "FSDP CPU CHECK PASSED" in result.stdout


def test_fsdp_asked_for_on_cpu_is_refused_not_silently_replaced(workspace, tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes",
        "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
        str(free_port()), str(REPO / "train.py"), *arguments(workspace, tmp_path / "fsdp", "--max_steps", "1"),
    ]
    env = {**BASE_ENV, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = run(command, env=env, cwd=REPO)
    assert result.returncode != 0
    assert "error: the launcher asked for FSDP, but Accelerate runs MULTI_CPU" in result.stderr
    assert not (tmp_path / "fsdp").exists()


# --report_to: Accelerate's trackers, checked before any work; a TensorBoard run writes readable scalars.
def test_a_tensorboard_run_writes_train_and_validation_scalars(workspace):
    output = workspace["root"] / "tensorboard-run"
    train_script.main(arguments(workspace, output, "--max_steps", "4", "--eval_steps", "2", "--report_to", "tensorboard"))
    events = list((output / train_script.TRACKER_PROJECT).rglob("events.out.tfevents.*"))
    assert events, f"no event file under {output / train_script.TRACKER_PROJECT}"
    scalars = {}
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(accumulator.Scalars(tag))
    for tag in ("train/loss", "train/position_loss", "train/listwise_loss", "train/lr"):
        assert [event.step for event in scalars[tag]] == [1, 2, 3, 4], tag
    assert [event.step for event in scalars["validation/hit@1"]] == [0, 2, 4]  # 0: the ranker's warm start
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
