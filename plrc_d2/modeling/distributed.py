"""Collectives for PLRC, all identities at world size 1 (detectron2.utils.comm decides).

Shuffle-BN (MoCo): the key batch is gathered, permuted, split across ranks for the momentum forward,
and the outputs are gathered and un-permuted, so BN statistics never see a rank's own query batch.
The permutation is drawn from a generator seeded with (seed, iteration) on every rank: all ranks hold the
same permutation without a broadcast, and a resumed run draws the same permutations as an
uninterrupted one.
"""
from typing import Tuple

import torch
import torch.distributed as dist

from detectron2.utils import comm

__all__ = [
    "host_to_device", "concat_all_gather", "all_reduce_sum", "shuffle_permutation", "batch_shuffle",
    "batch_unshuffle",
]


def host_to_device(x: torch.Tensor, device) -> torch.Tensor:
    """Host tensor -> device without waiting for the device queue (pinned, non-blocking upload on CUDA)."""
    if torch.device(device).type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (world*B, ...) in rank order, no gradient. Equal B on all ranks."""
    world = comm.get_world_size()
    if world == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned)."""
    if comm.get_world_size() > 1:
        dist.all_reduce(x)
    return x


def shuffle_permutation(n: int, seed: int, iteration: int, device) -> torch.Tensor:
    """(n,) int64 permutation, a pure function of (seed, iteration), identical on every rank."""
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(iteration)) % (2**63 - 1))
    return host_to_device(torch.randperm(n, generator=gen), device)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, perm: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """x (B, ...) local batch, perm (world*B,) -> (this rank's slice of the shuffled global batch (B, ...),
    idx_unshuffle (world*B,)). Identity at world size 1."""
    world = comm.get_world_size()
    if world == 1:
        return x, perm.new_empty(0)
    gathered = concat_all_gather(x)
    mine = perm.view(world, -1)[comm.get_rank()]
    return gathered[mine], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Inverse of `batch_shuffle` for a computed output x (B, ...)."""
    world = comm.get_world_size()
    if world == 1:
        return x
    gathered = concat_all_gather(x)
    return gathered[idx_unshuffle.view(world, -1)[comm.get_rank()]]
