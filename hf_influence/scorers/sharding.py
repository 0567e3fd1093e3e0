"""How a `Scorer` runs inside a multi-process job (`accelerate launch`, `torchrun`) and on several local GPUs.

**Sharded scoring** (`sharded_call`). Called on every rank of a job, a scorer scores the rank's contiguous shard of
the dataset on the rank's own device, all-gathers the `(row positions, values)` pairs (any shard sizes, empty ones
included) and adds the full column in dataset order, so every rank returns the same dataset. The column is added with
the same `new_fingerprint` as a single-process call, so the `datasets` cache is shared between both modes:

1. rank 0 looks for the cache file(s) of that fingerprint (the `cache_file_name` given, or the dataset's
   `cache-<fingerprint>.arrow`, also as `_<rank>_of_<num_proc>` pieces) and tells the others; on a hit every rank
   loads it and nothing is scored;
2. on a miss every rank scores its shard, the column is gathered, rank 0 writes the cache file with `Dataset.map`
   (the only writer), and after a barrier the other ranks load that file (or, for an in-memory dataset, add the
   column in memory).

**Several GPUs without a launcher** (`num_gpus=` of `Scorer.__call__`): `datasets`' own
`map(num_proc=N, with_rank=True)`; map process `rank` scores on `cuda:<rank>`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers.utils import logging

from ..distributed import (
    World,
    all_gather_objects,
    barrier,
    broadcast_object,
    current_world,
    gather_rows,
    local_device,
    shard_range,
)

if TYPE_CHECKING:  # pragma: no cover
    import datasets

    from .base import Scorer

logger = logging.get_logger(__name__)


def cache_exists(dataset: datasets.Dataset, fingerprint: str, map_kwargs: dict[str, Any]) -> bool:
    """Whether `dataset.map(..., new_fingerprint=fingerprint, **map_kwargs)` would be served from a cache file.

    Mirrors `Dataset.map`'s rule: `load_from_cache_file` (default: caching enabled), then the `cache_file_name` given
    or `cache-<fingerprint>.arrow` next to the dataset's own cache files, whole or as a complete set of
    `_<rank>_of_<num_proc>` pieces (written by a `num_proc` call).
    """
    import datasets

    load = map_kwargs.get("load_from_cache_file")
    if not (datasets.is_caching_enabled() if load is None else load) or map_kwargs.get("keep_in_memory"):
        return False
    name = map_kwargs.get("cache_file_name")
    if name is None:
        if not (datasets.is_caching_enabled() and dataset.cache_files):
            return False
        name = os.path.join(os.path.dirname(dataset.cache_files[0]["filename"]), f"cache-{fingerprint}.arrow")
    if os.path.exists(name):
        return True
    prefix, ext = os.path.splitext(name)
    pieces: dict[str, int] = {}
    for path in glob.glob(f"{glob.escape(prefix)}_*_of_*{ext}"):
        total = path[len(prefix) :].rsplit("_of_", 1)[-1][: -len(ext) or None]
        pieces[total] = pieces.get(total, 0) + 1
    return any(total.isdigit() and count == int(total) for total, count in pieces.items())


def scorer_world(scorer: Scorer) -> World:
    """The processes `scorer` splits its rows over: the running job's world when the scorer shards (its `shard` is
    not `False` and it runs a model), else `World(0, 1)` (this process scores everything)."""
    world = current_world()
    if world.is_distributed and scorer.shard is not False and scorer.shard_across_processes:
        return world
    return World()


def use_rank_device(scorer: Scorer, world: World) -> None:
    """In a multi-process job, score on this rank's own device (`local_device`) unless a device was requested."""
    if world.is_distributed and scorer._requested_device is None:
        scorer._active_device = local_device(world)


def sharded_values(scorer: Scorer, num_rows: int, compute: Callable[[range], np.ndarray], world: World
                   ) -> np.ndarray:
    """`compute(rows)` on this rank's contiguous shard of `num_rows`, gathered in row order on every rank.

    For scorers whose whole-dataset pass does not go through `Scorer.__call__`'s map (e.g. VoG's streaming pass):
    `compute` gets the row positions and returns one value per row. A collective call when `world` has several
    processes.
    """
    rows = shard_range(num_rows, world)
    use_rank_device(scorer, world)
    values = np.asarray(compute(rows)) if len(rows) else np.empty(0, dtype=np.float64)
    return gather_rows(values, rows, num_rows, world)


def score_rows(scorer: Scorer, dataset: datasets.Dataset, rows: range, desc: str) -> np.ndarray:
    """Float32 scores of `dataset[rows]`, one `score_batch` per `scorer.batch_size` rows, with a progress bar."""
    from tqdm.auto import tqdm

    values = np.empty(len(rows), dtype=np.float32)
    step = scorer.batch_size
    for offset in tqdm(range(0, len(rows), step), desc=desc, unit="batch"):
        start = rows.start + offset
        batch = dataset[start : min(start + step, rows.stop)]
        chunk = scorer._map_fn(batch)[scorer.column]
        values[offset : offset + len(chunk)] = chunk
    return values


def sharded_call(scorer: Scorer, dataset: datasets.Dataset, world: World, map_kwargs: dict[str, Any]
                 ) -> datasets.Dataset:
    """`scorer(dataset, **map_kwargs)` on every rank of `world` (see the module docstring). A collective call.

    Raises:
        ValueError: if the ranks disagree on the dataset or the scorer's fingerprint (e.g. different weights or
            data per rank), which would mix scores of different models.
    """
    fingerprint = scorer.fingerprint(dataset)
    identities = all_gather_objects((len(dataset), fingerprint), world)
    if len(set(identities)) > 1:
        raise ValueError(
            f"The ranks score different things (rows, fingerprint per rank: {identities}): every rank must call the "
            "scorer with the same dataset and the same model weights. Load the same checkpoint on every rank (or "
            "call the scorer after the trainer has synchronised the model)."
        )
    map_kwargs = dict(map_kwargs)
    if map_kwargs.pop("num_proc", None) not in (None, 1):
        logger.warning("num_proc is ignored in a multi-process job: each rank scores its own shard.")
    desc = map_kwargs.pop("desc", f"Scoring {scorer.column!r} ({type(scorer).__name__})")
    features = scorer.output_features(dataset, map_kwargs.get("remove_columns"))
    hit = broadcast_object(cache_exists(dataset, fingerprint, map_kwargs) if world.is_main else None, world)
    if hit:
        return _add_column(dataset, scorer.column, None, fingerprint, features, desc, map_kwargs)
    column = sharded_values(scorer, len(dataset),
                            lambda rows: score_rows(scorer, dataset, rows, f"{desc} [rank {world.rank}/{world.size}]"),
                            world).astype(np.float32)
    return add_gathered_column(dataset, scorer.column, column, fingerprint, features, desc, map_kwargs, world)


def add_gathered_column(dataset: datasets.Dataset, name: str, column: np.ndarray, fingerprint: str, features: Any,
                        desc: str, map_kwargs: dict[str, Any], world: World) -> datasets.Dataset:
    """Add the full `column` as `name` on every rank with `new_fingerprint=fingerprint`: rank 0 writes the cache file
    (if the dataset is cached on disk or a `cache_file_name` is given), then the other ranks read it."""
    if world.is_main:
        out = _add_column(dataset, name, column, fingerprint, features, desc,
                          {**map_kwargs, "load_from_cache_file": False})
    barrier(world)
    if not world.is_main:
        out = _add_column(dataset, name, column, fingerprint, features, desc,
                          {**map_kwargs, "load_from_cache_file": not map_kwargs.get("keep_in_memory", False)})
    return out


def _add_column(dataset: datasets.Dataset, name: str, column: np.ndarray | None, fingerprint: str, features: Any,
                desc: str, map_kwargs: dict[str, Any]) -> datasets.Dataset:
    """`Dataset.map` that sets column `name` to `column` (rows by position); `column=None` only loads the cache."""

    def fill(batch: dict[str, list], indices: list[int]) -> dict[str, np.ndarray]:
        if column is None:
            raise RuntimeError(f"The cached scores of {name!r} disappeared while being read; score again.")
        return {name: column[np.asarray(indices, dtype=np.int64)]}

    return dataset.map(fill, batched=True, with_indices=True, features=features, new_fingerprint=fingerprint,
                       desc=desc, **map_kwargs)


def resolve_num_gpus(num_gpus: int | str, map_kwargs: dict[str, Any], world: World) -> int:
    """Check a `num_gpus=` request of `Scorer.__call__` and return the number of map processes (one per GPU).

    Raises:
        ValueError: inside a multi-process job, with `num_proc` also given, without enough GPUs, or when CUDA is
            already initialised in this process and workers would be forked (CUDA cannot run in a forked child).
    """
    import torch

    if world.is_distributed:
        raise ValueError("num_gpus is for a plain `python` process; in an `accelerate`/`torchrun` job every rank "
                         "already scores its shard on its own GPU. Drop num_gpus.")
    if "num_proc" in map_kwargs:
        raise ValueError("Pass either num_gpus (one map process per GPU) or num_proc, not both.")
    available = torch.cuda.device_count()
    wanted = available if num_gpus == "all" else num_gpus
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
        raise ValueError(f"num_gpus must be a positive integer or 'all', got {num_gpus!r}.")
    if wanted > available:
        raise ValueError(f"num_gpus={num_gpus!r} but this machine has {available} CUDA device(s). Pass "
                         f"num_gpus={available or 'None'} (or 'all').")
    import multiprocess

    if torch.cuda.is_initialized() and multiprocess.get_start_method(allow_none=True) in (None, "fork"):
        raise ValueError(
            "CUDA is already initialised in this process, so the map workers (forked) cannot use it. Either keep the "
            "model on CPU and touch no GPU before scoring, or call multiprocess.set_start_method('spawn', force=True) "
            "at the start of the program (the scorer is then pickled to each worker)."
        )
    return wanted
