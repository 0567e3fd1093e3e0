"""Scoring across the processes of a running `accelerate` / `torchrun` job: shards, gathers and reductions.

Under `accelerate launch` or `torchrun` every rank runs the same script. A scorer called on every rank then splits the
dataset into contiguous shards (rank `r` scores rows `shard_range(n, world)[r]`, the split of
`Dataset.shard(num_shards=size, index=rank, contiguous=True)`), scores its shard on its own device and all-gathers
the `(row positions, values)` pairs, so every rank returns the same full column in dataset order. Quantities summed
over the whole dataset (the influence mean gradient, full-data Hessian-vector products, an explicit Hessian) are
summed over each rank's shard and all-reduced.

Nothing here initialises a process group: `current_world()` only reads the state of `torch.distributed` (initialised
by `accelerate`, `torchrun` + `init_process_group`, or the `Trainer`). Without one, or with a single process, it is
`World(rank=0, size=1)` and every helper is a no-op, so a single-process call is unchanged.

Every helper that takes a `World` of size > 1 is a collective: all ranks must call it, in the same order. With the
NCCL backend each process must own its GPU (`torch.cuda.set_device(LOCAL_RANK)`, which `accelerate` does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "World",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "current_world",
    "gather_rows",
    "local_device",
    "shard_range",
]


@dataclass(frozen=True)
class World:
    """The processes a collective call runs over: this process's `rank` among `size` processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_distributed(self) -> bool:
        """Whether there is more than one process (collectives are needed)."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that writes shared files)."""
        return self.rank == 0


def current_world() -> World:
    """The `torch.distributed` world of this process if a process group of several processes is initialised, else
    `World(0, 1)`. Never initialises anything (no process group, no `accelerate.PartialState`)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return World()
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    size = dist.get_world_size()
    return World(rank=dist.get_rank(), size=size) if size > 1 else World()


def local_device(world: World) -> torch.device:
    """The device this rank scores on when none is requested: `cuda:<LOCAL_RANK % device_count>` with CUDA (one GPU
    per process, as `accelerate` places them; plain `torchrun` does not move processes off `cuda:0`), else CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", world.rank))
    return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")


def shard_range(num_rows: int, world: World) -> range:
    """The contiguous rows of this rank: the first `num_rows % size` ranks hold one row more than the others, as
    `Dataset.shard(num_shards=size, index=rank, contiguous=True)` splits them. A rank may hold no row at all."""
    base, extra = divmod(num_rows, world.size)
    start = world.rank * base + min(world.rank, extra)
    return range(start, start + base + (1 if world.rank < extra else 0))


def all_gather_objects(obj: Any, world: World) -> list[Any]:
    """`obj` of every rank, in rank order (any picklable object, of any size per rank: no padding needed)."""
    if not world.is_distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, world: World, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if not world.is_distributed:
        return obj
    import torch.distributed as dist

    box = [obj if world.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(world: World) -> None:
    """Wait until every rank reaches this point."""
    if world.is_distributed:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise sum of `tensor` over ranks (a new tensor on `tensor`'s device and dtype).

    Sum partial sums, never means: a rank with fewer rows must weigh less. The reduction runs where the backend can
    (CUDA for NCCL, CPU for gloo) and the result comes back to `tensor`'s device.
    """
    if not world.is_distributed:
        return tensor
    import torch
    import torch.distributed as dist

    backend = str(dist.get_backend()).lower()
    if "nccl" in backend:
        work = tensor.detach().to(torch.device("cuda", torch.cuda.current_device())).clone()
    else:
        work = tensor.detach().cpu().clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def gather_rows(values: np.ndarray, rows: range | np.ndarray, num_rows: int, world: World) -> np.ndarray:
    """Reassemble a per-row array from every rank's `(rows, values)` pairs, in dataset order, on every rank.

    Args:
        values (`np.ndarray`): this rank's values, first axis aligned with `rows`.
        rows (`range` or `np.ndarray`): the dataset row positions of `values` (any subset; shards may be uneven or
            empty).
        num_rows (`int`): rows of the whole dataset.
        world (`World`): the processes.

    Returns:
        `np.ndarray`: `[num_rows, ...]`, the same on every rank.

    Raises:
        RuntimeError: if the ranks' rows do not cover every row exactly once.
    """
    values = np.asarray(values)
    positions = np.asarray(rows, dtype=np.int64)
    if len(positions) != len(values):
        raise ValueError(f"Got {len(values)} values for {len(positions)} rows.")
    if not world.is_distributed:
        pieces = [(positions, values)]
    else:
        pieces = all_gather_objects((positions, values), world)
    dtype = np.result_type(*[piece[1].dtype for piece in pieces])
    shape = next((piece[1].shape[1:] for piece in pieces if len(piece[1])), values.shape[1:])
    out = np.empty((num_rows, *shape), dtype=dtype)
    seen = np.zeros(num_rows, dtype=np.int64)
    for piece_rows, piece_values in pieces:
        out[piece_rows] = piece_values
        np.add.at(seen, piece_rows, 1)
    if not (seen == 1).all():
        missing, doubled = int((seen == 0).sum()), int((seen > 1).sum())
        raise RuntimeError(
            f"The ranks' shards do not cover the dataset exactly once ({missing} rows missing, {doubled} rows scored "
            "more than once): every rank must call the scorer on the same dataset."
        )
    return out
