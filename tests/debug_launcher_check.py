"""Two gloo processes via `accelerate.debug_launcher`, run as `python tests/debug_launcher_check.py CITY BACKBONE OUT`.

It runs in a fresh interpreter: debug_launcher forks, and forking a process whose torch thread pools are already
busy (a pytest session that ran other tests) can deadlock the children.
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import debug_launcher
from accelerate.utils import gather_object
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train as train_script  # noqa: E402
from nextlocllm_hf.batching import CitySamples, collate_batch  # noqa: E402
from nextlocllm_hf.data import load_city_splits  # noqa: E402


def sample_keys(batch) -> list[bytes]:
    """What tells one window's sample from another: its target and its current records' coordinates."""
    joined = torch.cat([batch["labels"], batch["current_coordinates"].flatten(1)], dim=1).numpy()
    return [row.tobytes() for row in joined]


def check_loader_shards(accelerator, city: str) -> None:
    """The windowed train split through `accelerator.prepare(DataLoader)`: each rank gets its own batches, together
    every sample once (plus the few Accelerate repeats to even out the last batches)."""
    split = load_city_splits(city).splits["train"]
    samples = CitySamples(split, {Path(city).name: load_city_splits(city).retriever})
    index_of = {key: i for i, key in enumerate(sample_keys(samples[:]))}
    assert len(index_of) == len(samples), "sample keys are not unique"
    batch_size = 5
    loader = accelerator.prepare(DataLoader(samples, batch_size=batch_size, shuffle=True, collate_fn=collate_batch,
                                            generator=torch.Generator().manual_seed(0)))
    mine = [index_of[key] for batch in loader for key in sample_keys({k: v.cpu() for k, v in batch.items()})]
    everyone = gather_object([mine])
    assert len(everyone) == 2 and len(everyone[0]) == len(everyone[1])
    seen = np.concatenate(everyone)
    padded = -(-len(samples) // (2 * batch_size)) * 2 * batch_size
    assert len(seen) == padded and set(seen.tolist()) == set(range(len(samples))), "a sample missing"
    assert len(set(everyone[0]) & set(everyone[1])) <= padded - len(samples), "ranks share batches"


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
    # The default recipe's ranker: step 0 scores the warm-started model (each rank warm-starts it alike), then 2, 4.
    assert [(entry["step"], entry["count"]) for entry in run.results["validation_history"]] == [
        (step, len(splits["validation"])) for step in (0, 2, 4)]
    check_loader_shards(accelerator, city)
    if accelerator.is_main_process:
        print("DDP CHECK PASSED", flush=True)


if __name__ == "__main__":
    debug_launcher(partial(distributed_run, *sys.argv[1:4]), num_processes=2)
