"""The files training writes and reads back: resumable checkpoints (what `train.py --checkpointing_steps` writes and
`--resume_from_checkpoint` reads) and the best model (`best/`, a `save_pretrained` folder), with nothing in either ever
unpickled beyond tensors, containers and numbers. Which checkpoint is the best is decided in
`checkpoint_selection.py`.

Checkpoint folders get copied between machines and shared, so reading one must not run code. Accelerate's
`save_state` writes the model as safetensors and the optimizer and random states with `torch.save`; its `load_state`
reads those through torch's restricted unpickler (`weights_only=True`), but objects registered with
`register_for_checkpointing` as full pickles (`custom_checkpoint_N.pkl`, `weights_only=False`), and it skips a random
state it cannot read without a word. Hence:
- the run's own state (the best-checkpoint tracker, the learning-rate scheduler) is JSON (`trainer_state.json`);
  nothing is registered with Accelerate;
- before `load_state`, every file in the folder is read the safe way (safetensors headers, JSON, torch files through
  the restricted unpickler), so a crafted or damaged file is refused with its name, and any other file (an older
  run's `custom_checkpoint_0.pkl`, a sharded checkpoint's pickled `.metadata`) is refused unread.
The best model is safetensors alone, gathered from every rank to be written and placed back into each rank's shard
when read (FSDP).
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from accelerate.utils import load as restricted_torch_load  # torch.load(weights_only=True) + numpy's array types
from safetensors import safe_open
from safetensors.torch import load_file

from .outputs import remove_folder, replacing_folder

CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"  # the tracker's and the scheduler's state
# What Accelerate's save_state writes with torch.save, read back here before it does.
TORCH_FILES = ("optimizer*.bin", "scheduler*.bin", "sampler*.bin", "dl_state_dict*.bin", "random_states_*.pkl",
               "scaler.pt", "pytorch_model*.bin")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from (a `ValueError`: one `error:` line naming the file)."""


def checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints in `output_dir`, oldest step first (one being written has a hidden name)."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.fullmatch(p.name).group(1)))


def save_checkpoint(accelerator: Accelerator, folder: Path, trainer_state: dict, keep: int | None) -> None:
    """`save_state` plus `trainer_state` (JSON) into a hidden sibling renamed to `folder` once every rank has written,
    so `latest` never meets a half-written checkpoint; then only the newest `keep` checkpoints stay. (Accelerate's
    automatic naming and `total_limit` write in place, where a kill leaves a damaged newest checkpoint.)"""
    with replacing_folder(folder, is_main=accelerator.is_main_process, wait=accelerator.wait_for_everyone) as partial:
        accelerator.save_state(str(partial))
        if accelerator.is_main_process:
            (partial / TRAINER_STATE).write_text(json.dumps(trainer_state), encoding="utf-8")
    if keep and accelerator.is_main_process:
        for old in checkpoints(folder.parent)[:-keep]:
            remove_folder(old)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator: Accelerator, folder: Path, expected_state: dict) -> dict:
    """`load_state` of a folder `check_checkpoint_files` has passed (train.py checks it before any work, so the files
    are read the safe way once); returns the trainer state saved beside it, which must have the keys and kinds of
    values of `expected_state` (this run's own, freshly made)."""
    folder = Path(folder)
    trainer_state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    problem = state_mismatch(trainer_state, expected_state)
    if problem:
        raise CheckpointError(f"--resume_from_checkpoint {folder}: {TRAINER_STATE} is not this run's ({problem})")
    try:
        accelerator.load_state(str(folder))
    except (RuntimeError, KeyError, ValueError, OSError) as error:  # e.g. another model's shapes
        raise CheckpointError(f"--resume_from_checkpoint {folder}: damaged, incomplete or from another configuration "
                              f"({type(error).__name__}: {first_line(error)})") from error
    return trainer_state


def state_mismatch(saved, expected, where: str = "") -> str | None:
    """What makes `saved` (read from JSON) not a state of the same shape as `expected`: a missing or extra key, or
    a value of another kind (numbers are one kind; None in `expected` takes anything); None when it matches."""
    if expected is None:
        return None
    if isinstance(expected, dict):
        if not isinstance(saved, dict):
            return f"{where or 'the state'} is not an object"
        if set(saved) != set(expected):
            keys = sorted(set(saved) ^ set(expected))
            return f"{where or 'the state'} has other keys ({', '.join(keys[:5])})"
        return next((problem for key in expected if (problem := state_mismatch(saved[key], expected[key],
                                                                             f"{where}.{key}".lstrip(".")))), None)
    number = (int, float)
    same_kind = (isinstance(saved, number) and isinstance(expected, number) and not isinstance(saved, bool)
                 or isinstance(saved, type(expected)) or saved is None)
    return None if same_kind else f"{where} is {saved!r}"


def check_checkpoint_files(folder: Path, process_index: int) -> None:
    """Read every file of the checkpoint without running code, or raise `CheckpointError` naming the first bad one."""
    for required in (TRAINER_STATE, f"random_states_{process_index}.pkl"):
        if not (folder / required).is_file():
            raise CheckpointError(f"--resume_from_checkpoint {folder}: damaged, incomplete or from another "
                                  f"configuration (no {required}: written by an older version, or by fewer processes "
                                  f"than this run's)")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder)
        is_torch_file = any(fnmatch.fnmatch(path.name, pattern) for pattern in TORCH_FILES)
        if path.suffix not in (".safetensors", ".json") and not is_torch_file:
            raise CheckpointError(f"--resume_from_checkpoint {folder}: {name} is not a file train.py writes, and was "
                                  f"not loaded (it may be a pickle; an older version's checkpoints cannot be resumed)")
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt"):
                    pass
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            else:
                restricted_torch_load(str(path), map_location="cpu")
        except Exception as error:  # noqa: BLE001 - any failure to read a user's file is reported with its name
            raise CheckpointError(f"--resume_from_checkpoint {folder}: {name} is damaged, or holds more than "
                                  f"tensors and numbers, and was not loaded ({first_line(error)})") from error


def first_line(error: BaseException) -> str:
    """The line of an error that says what went wrong (torch's refusal of a pickle says it in its middle)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return next((line for line in lines if "Unsupported global" in line), lines[0])[:300]


# ------------------------------------------------------------------------------------------------------------------
# the best model


def save_model(accelerator: Accelerator, model, folder: Path) -> None:
    """On every rank: `get_state_dict` gathers FSDP shards (or DeepSpeed's partitions), the main process writes, into
    a hidden sibling renamed into place once complete."""
    weights = accelerator.get_state_dict(model)
    with replacing_folder(folder, is_main=accelerator.is_main_process, wait=accelerator.wait_for_everyone) as partial:
        accelerator.unwrap_model(model).save_pretrained(partial, is_main_process=accelerator.is_main_process,
                                                        state_dict=weights)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The full state dict saved by `save_pretrained` in `folder`: one safetensors file, or the shards of its index."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        names = ["model.safetensors"]
    weights = {}
    for name in names:
        weights.update(load_file(str(folder / name)))
    return weights


def load_best(accelerator: Accelerator, model, folder: Path) -> dict[str, torch.Tensor]:
    """Load the best weights into the prepared model on every rank; returns them (on the main process under FSDP,
    which reads them once and places each rank's shard; DDP and DeepSpeed ZeRO-2 ranks hold full copies)."""
    accelerator.wait_for_everyone()
    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        weights = read_weights(folder) if accelerator.is_main_process else {}
        # A copy: torch replaces the dict's values by the distributed tensors it places (the export needs full ones).
        set_model_state_dict(model, dict(weights),
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return weights
    weights = read_weights(folder)
    accelerator.unwrap_model(model).load_state_dict(weights, strict=True)
    return weights
