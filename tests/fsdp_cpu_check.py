"""FSDP on CPU, as far as torch allows it (Accelerate chooses FSDP only on GPUs): two gloo ranks shard a saved model
with torch's `fully_shard` (FSDP2), and `checkpoints.load_best` puts the best weights into the shards. Run as
`torchrun --nproc_per_node 2 tests/fsdp_cpu_check.py MODEL_DIR BEST_DIR`; prints FSDP CPU CHECK PASSED."""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from nextlocllm_hf import NextLocLLMForCoordinateRegression
from nextlocllm_hf.checkpoints import load_best


def main(model_dir: str, best_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = NextLocLLMForCoordinateRegression.from_pretrained(model_dir)
    with torch.no_grad():  # other weights than the best ones, so that loading them shows
        for parameter in model.parameters():
            parameter.add_(1.0)
    for block in model.backbone.h:
        fully_shard(block)
    fully_shard(model)
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, is_main_process=rank == 0,
                                  wait_for_everyone=dist.barrier, unwrap_model=lambda module: module)
    returned = load_best(accelerator, model, Path(best_dir))
    placed = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        best = load_file(str(Path(best_dir) / "model.safetensors"))
        assert type(next(model.parameters())).__name__ == "DTensor"  # the model is sharded
        assert placed.keys() == best.keys() and all(torch.equal(placed[k], best[k]) for k in best)
        assert all(type(v) is torch.Tensor and torch.equal(v, best[k]) for k, v in returned.items())  # for the export
        print("FSDP CPU CHECK PASSED", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
