"""Data-parallel training with torch.distributed, started by torchrun:

    torchrun --nproc-per-node 2 -m digitlab train --preset fast

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; we pick gloo on CPU and NCCL
on CUDA (one GPU per local rank). Every rank keeps the whole dataset on its device and, for
each step, takes its own slice of the global batch, so N ranks with per-rank batch B/N
follow the same trajectory as one process with batch B: the hyperparameters carry over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from digitlab.engine.evaluate import EvalResult
from digitlab.errors import DigitlabError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0


def from_env() -> Dist:
    """The process's place in a torchrun job (a single process when not under torchrun)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise DigitlabError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    return Dist(rank, world, local)


def setup(info: Dist, device: torch.device) -> torch.device:
    """Join the process group; returns this rank's device (cuda:LOCAL_RANK on CUDA)."""
    if not info.enabled:
        return device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise DigitlabError(f"local rank {info.local_rank} has no GPU: this node has "
                                f"{torch.cuda.device_count()}; lower --nproc-per-node")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise DigitlabError(f"data-parallel training runs on cpu or cuda, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return device


def teardown(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, info: Dist, device: torch.device) -> torch.nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(indices: torch.Tensor, info: Dist) -> torch.Tensor:
    """This rank's share of a global batch's indices (every world-th one)."""
    return indices[info.rank :: info.world] if info.enabled else indices


def all_sum(value: torch.Tensor, info: Dist) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def reduce_eval(result: EvalResult, labels: torch.Tensor, info: Dist) -> EvalResult:
    """Combine the ranks' results on their test shards into the whole test set's result
    (loss summed per sample, as `evaluate` does with loss_average="sample")."""
    if not info.enabled:
        return result
    classes = len(result.per_class)
    totals = torch.bincount(labels, minlength=classes).to(torch.float64)
    hits = torch.tensor(result.per_class, dtype=torch.float64, device=labels.device) * totals
    packed = torch.cat([
        torch.tensor([result.accuracy * result.count, result.loss * result.count,
                      float(result.count)], dtype=torch.float64, device=labels.device),
        hits, totals,
    ])
    packed = all_sum(packed, info)
    correct, loss, count = packed[0].item(), packed[1].item(), packed[2].item()
    hits, totals = packed[3 : 3 + classes], packed[3 + classes :]
    return EvalResult(
        accuracy=round(correct) / count,
        loss=loss / count,
        per_class=(hits / totals.clamp_min(1)).tolist(),
        count=int(count),
    )
