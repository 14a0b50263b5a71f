"""One writer per output (`nextlocllm_hf/locks.py`) for the city builder, predict's --plot and the demo, with real
processes: a second writer is refused, naming the first one's pid, and changes nothing; a lock left by a killed
writer blocks nobody."""

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from processes import BASE_ENV, run, spawned

REPO = Path(__file__).resolve().parents[1]
ENV = {**BASE_ENV, "OMP_NUM_THREADS": "1"}
BUILD = [sys.executable, str(REPO / "dataset_scripts" / "build_city.py"), "--format", "csv", "--history-length", "2",
         "--current-length", "1", "--stride", "1", "--no-progress"]
HOW = {"in process": [], "partitioned": ["--partitions", "2", "--scheduler", "synchronous"]}

# The build command itself, paused once it writes the city's tables (inside the folder it renames into place, its
# lock held) until a line arrives on stdin.
PAUSED_BUILD = """
import sys
from nextlocllm_hf import build_city
from nextlocllm_hf.data import build_config, partitioned

write = build_config.write_city_tables

def write_when_told(*args, **kwargs):
    print("writing", flush=True)
    sys.stdin.readline()
    write(*args, **kwargs)

build_config.write_city_tables = partitioned.write_city_tables = write_when_told
sys.exit(build_city.main(sys.argv[1:]))
"""
HOLD = ("import sys; from nextlocllm_hf.locks import exclusive_output\n"
        "with exclusive_output(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()")


@pytest.fixture
def checkins(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    rows = [{"user_id": f"u{u}", "utc_time": f"2012-05-0{1 + k % 7} {10 + u}:00:00",
             "latitude": 40.7 + rng.uniform(0, 0.05), "longitude": -74.0 + rng.uniform(0, 0.05),
             "category_name": "Bar"} for u in range(4) for k in range(8)]
    pd.DataFrame(rows).to_csv(tmp_path / "checkins.csv", index=False)
    return tmp_path / "checkins.csv"


def build_command(checkins: Path, output: Path, city: str, how: str) -> list[str]:
    return [*BUILD, *HOW[how], "--input", str(checkins), "--city", city, "--output", str(output)]


def paused_build(checkins: Path, output: Path, city: str, how: str):
    command = build_command(checkins, output, city, how)
    return spawned([sys.executable, "-c", PAUSED_BUILD, *command[2:]], env=ENV, cwd=REPO, stdin=-1, stdout=-1,
                   text=True)


@pytest.mark.parametrize("how", list(HOW))
def test_a_second_build_into_the_same_output_is_refused_while_the_first_writes(checkins, tmp_path, how):
    output = tmp_path / "city"
    with paused_build(checkins, output, "first", how) as first:
        assert first.stdout.readline().strip() == "writing"
        second = run(build_command(checkins, output, "second", how), env=ENV, cwd=REPO)
        assert second.returncode == 2, second.stderr[-3000:]
        assert [line for line in second.stderr.splitlines() if "error" in line] == [
            f"error: {output} is being written by another process (pid {first.pid})"]
        first.stdin.write("\n")
        first.stdin.flush()
        out, _ = first.communicate(timeout=240)
        assert first.returncode == 0, out[-3000:]
    assert json.loads((output / "city.json").read_text())["city"] == "first"  # the first build's result, whole
    assert not (tmp_path / ".city.partial").exists()


def test_a_killed_builders_lock_blocks_nobody(checkins, tmp_path):
    """(One path suffices: both take the same lock, in `build_and_save`.)"""
    output, how = tmp_path / "city", "in process"
    with paused_build(checkins, output, "first", how) as first:
        assert first.stdout.readline().strip() == "writing"
        first.send_signal(signal.SIGKILL)  # mid-write: its lock file and partial folder stay behind
        first.wait(timeout=60)
    assert (tmp_path / ".city.lock").is_file()
    second = run(build_command(checkins, output, "second", how), env=ENV, cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((output / "city.json").read_text())["city"] == "second"
    assert not (tmp_path / ".city.partial").exists()


@pytest.mark.parametrize("command", ["predict --plot", "demo --output_dir"])
def test_predict_plot_and_demo_output_are_refused_while_held(tmp_path, command):
    """The lock comes before any other work: these refusals need no model and train nothing."""
    target = tmp_path / ("figure.png" if command.startswith("predict") else "demo")
    commands = {
        "predict --plot": [sys.executable, "-m", "nextlocllm_hf.predict", "--model", str(tmp_path / "no-model"),
                           "--city", "x", "--input", str(tmp_path / "no-records.csv"), "--plot", str(target)],
        "demo --output_dir": [sys.executable, str(REPO / "demo.py"), "--output_dir", str(target)],
    }
    with spawned([sys.executable, "-c", HOLD, str(target)], env=ENV, stdin=-1, stdout=-1, text=True) as holder:
        assert holder.stdout.readline().strip() == "held"
        refused = run(commands[command], env=ENV, cwd=REPO)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {target} is being written by another process (pid {holder.pid})")
    assert not target.exists()
