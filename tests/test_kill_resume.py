"""train.py killed with SIGKILL (not only Ctrl-C) mid-run resumes with `--resume_from_checkpoint latest` to the weights
and results of an uninterrupted run. Two kills here (while checkpoint 4 is written, mid-epoch, and while the model is
exported); `python benchmarks/kill_resume.py` runs the same harness with 10 seeded kills."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kill_resume import KillPoint, kill_and_resume  # noqa: E402


def test_sigkill_then_resume_latest_equals_an_uninterrupted_run(tmp_path):
    report = kill_and_resume(tmp_path, [KillPoint("checkpoint", 4), KillPoint("export")])
    assert [outcome.split()[0] for outcome in report["outcomes"]] == ["killed", "killed", "finished"]
    assert report["final_weights_equal"] and report["exported_weights_equal"]
    assert report["results_equal"]
    assert report["same_files"]  # no partial folder left behind, the same newest 2 checkpoints kept
