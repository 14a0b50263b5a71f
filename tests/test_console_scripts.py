"""The installed package's commands: `nextlocllm-build-city`, `-evaluate`, `-predict` and `-hub` (setup.cfg
console_scripts), each the same command as its `python -m` / `dataset_scripts/` form."""

import sys
from pathlib import Path

import pytest
from processes import run as run_bounded

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"nextlocllm-build-city": "--format", "nextlocllm-evaluate": "--model", "nextlocllm-predict": "--model",
            "nextlocllm-hub": "push-model"}
SYNTHETIC = ["--format", "synthetic", "--city", "tiny", "--users", "12", "--records-per-user", "40", "--seed", "4",
             "--no-progress"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_command_is_installed_and_prints_its_usage(command):
    run = run_bounded([str(BIN / command), "--help"])
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: {command}") and COMMANDS[command] in run.stdout


def test_build_city_command_and_script_build_the_same_city(tmp_path):
    installed = run_bounded([str(BIN / "nextlocllm-build-city"), *SYNTHETIC, "--output", str(tmp_path / "a")])
    script = run_bounded([sys.executable, str(REPO / "dataset_scripts" / "build_city.py"), *SYNTHETIC,
                          "--output", str(tmp_path / "b")])
    assert installed.returncode == 0 and script.returncode == 0, installed.stderr + script.stderr
    for name in ("train.parquet", "validation.parquet", "test.parquet", "cells.parquet", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_a_bad_option_value_is_one_error_line_from_the_command(tmp_path):
    run = run_bounded([str(BIN / "nextlocllm-build-city"), *SYNTHETIC, "--output", str(tmp_path / "c"),
                       "--license", "CC BY"])
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if "error:" in line] == [
        "error: license='CC BY': expected a Hub license id such as cc-by-4.0, other or unknown"]
    assert not (tmp_path / "c").exists()
