"""Data-parallel training under `torchrun`: the process group, the shared data order,
and the collectives that keep every rank's decisions identical.

One process (no torchrun) is world size 1 and takes exactly the single-process path:
the same data order and random streams as before DDP existed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, RandomSampler, Sampler


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process, 0..size-1
    size: int = 1  # processes taking part
    local_rank: int = 0  # this process on its node (picks the GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: str) -> World:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT); gloo on CPU, nccl on CUDA. Without torchrun: size 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return World(rank, size, local_rank)


def rank_device(device: str, world: World) -> str:
    """`cuda` under torchrun means this rank's own GPU."""
    return f"cuda:{world.local_rank}" if device == "cuda" and world.distributed else device


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class LossModule(nn.Module):
    """DDP synchronises gradients through `forward`; policies compute their loss in
    `compute_loss`, so this wrapper's forward is that call."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.policy.compute_loss(batch)


class RankBatches(Sampler[list[int]]):
    """Global batches of batch_size * world drawn from one shuffled order that every
    rank shares (one seed), each rank keeping its own contiguous slice. With one rank
    this is exactly DataLoader(shuffle=True, drop_last=True, generator=g).

    `skip` drops the first batches of the next pass without loading them (resuming in
    the middle of an epoch)."""

    def __init__(self, num_items: int, batch_size: int, world: World, generator: torch.Generator):
        global_batch = batch_size * world.size
        if num_items < global_batch:
            raise ValueError(
                f"batch_size={batch_size} x {world.size} process(es) = {global_batch} exceeds "
                f"the {num_items} training windows; lower batch_size or add demonstrations"
            )
        self.batches = BatchSampler(
            RandomSampler(range(num_items), generator=generator), global_batch, drop_last=True
        )
        self.batch_size, self.rank = batch_size, world.rank
        self.skip = 0

    def __len__(self) -> int:
        return len(self.batches) - self.skip

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(self.batches):
            if i >= skip:
                yield batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


def all_reduce_sum_(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, world: World, device) -> bool:
    """True on every rank when it is true on at least one."""
    if not world.distributed:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_bytes(data: torch.Tensor, world: World) -> list[torch.Tensor]:
    """Every rank's uint8 vector of the same length (RNG states), on every rank."""
    if not world.distributed:
        return [data]
    out = [torch.empty_like(data) for _ in range(world.size)]
    dist.all_gather(out, data)
    return out


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors, in order: equal iff names and bytes are equal."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_digest(module: nn.Module) -> str:
    """The digest of every parameter and buffer."""
    return tensors_digest(module.state_dict())


def rank_digests(module: nn.Module, world: World, device) -> list[str]:
    """Every rank's state digest (one entry with one process)."""
    digest = torch.tensor(list(bytes.fromhex(state_digest(module))), dtype=torch.uint8)
    return [bytes(d.tolist()).hex() for d in gather_bytes(digest.to(device), world)]
