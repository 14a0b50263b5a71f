"""Two gloo processes via `accelerate.debug_launcher`, run as `python tests/debug_launcher_check.py CITY BACKBONE OUT`.

It runs in a fresh interpreter: debug_launcher forks, and forking a process whose torch thread pools are already
busy (a pytest session that ran other tests) can deadlock the children.
"""

import sys
from functools import partial
from pathlib import Path

import torch
from accelerate import debug_launcher

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train as train_script  # noqa: E402
from nextlocllm_hf.data import load_city_splits  # noqa: E402


def distributed_run(city: str, backbone: str, output_dir: str) -> None:
    arguments = [
        "--dataset", city, "--backbone", backbone, "--num_backbone_layers", "2",
        "--per_device_batch_size", "12", "--per_device_eval_batch_size", "8",
        "--output_dir", output_dir, "--max_steps", "4", "--eval_steps", "2",
    ]
    run = train_script.train(train_script.parse_args(arguments))
    accelerator = run.accelerator
    assert accelerator.num_processes == 2
    flat = torch.cat([p.detach().flatten() for p in run.model.parameters() if p.requires_grad])
    everyone = accelerator.gather(flat[None])
    assert torch.equal(everyone[0], everyone[1]), "ranks hold different parameters"
    splits = load_city_splits(city).splits
    assert len(splits["test"]) % 2 == 1  # uneven across two ranks: gather_for_metrics must drop the padded duplicate
    assert run.results["test"][Path(city).name]["count"] == len(splits["test"])
    assert [entry["count"] for entry in run.results["validation_history"]] == [len(splits["validation"])] * 2
    if accelerator.is_main_process:
        print("DDP CHECK PASSED", flush=True)


if __name__ == "__main__":
    debug_launcher(partial(distributed_run, *sys.argv[1:4]), num_processes=2)
