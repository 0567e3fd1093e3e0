"""The scorer contract: `Scorer`, a callable that adds one float32 score column to a ``datasets.Dataset``.

A scorer is used through ``Dataset.map(batched=True)``. The map call gets pinned output ``Features`` (the input
features plus one ``float32`` column, NaN for missing values, its polarity recorded on the feature) and a
``new_fingerprint`` built from the dataset's fingerprint, the scorer's configuration and a hash of the model weights
or checkpoint files (`hf_influence.fingerprints`). Model weights are never pickled for hashing: a second identical
call on a cached dataset is served from the ``datasets`` cache, and a changed checkpoint is recomputed. Inside a
multi-process job the call is sharded over the ranks (`hf_influence.scorers.sharding`).

The plumbing scorers share lives in the modules of its concern: `hf_influence.fingerprints` (`model_fingerprint`,
`dataset_fingerprint`), `hf_influence.checkpoints` (`load_checkpoint`, `iter_checkpoints`), `hf_influence.batching`
(`pad_batch`, `TOKEN_COLUMNS`, `resolve_pad_multiple`), `hf_influence.scorers.joins` (`count_unknown_ids`) and
`hf_influence.scorers.registry` (`register_scorer`, `get_scorer`, `list_scorers`). The names of the first four are
also importable from here, as they were before the split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..batching import GRAPH_PAD_MULTIPLE, TOKEN_COLUMNS, pad_batch, resolve_pad_multiple
from ..checkpoints import iter_checkpoints, load_checkpoint
from ..distributed import current_world
from ..fingerprints import dataset_fingerprint, model_fingerprint
from ..polarity import score_feature
from ..tasks import TASKS
from .joins import count_unknown_ids

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import torch

__all__ = [
    "GRAPH_PAD_MULTIPLE",
    "TASKS",
    "TOKEN_COLUMNS",
    "Scorer",
    "count_unknown_ids",
    "dataset_fingerprint",
    "iter_checkpoints",
    "load_checkpoint",
    "model_fingerprint",
    "pad_batch",
    "resolve_pad_multiple",
]


def _single_threaded_worker() -> None:
    """Run torch single-threaded in a `Dataset.map(num_proc=...)` worker process on CPU.

    The workers are forked from a parent whose OpenMP thread pool may already be running; a forked child that then
    enters a multi-threaded region waits forever on the parent's (absent) threads. One thread per worker avoids that
    deadlock, and `num_proc` workers already use the cores.
    """
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)



class Scorer:
    """Base class of every scorer: adds ONE float32 column to a dataset with `Dataset.map(batched=True)`.

    Subclasses set the class attributes and implement `score_batch`; model-based scorers also override
    `checkpoint_fingerprint` (so that changed weights give a new cache entry) and use `self.device`.

    Class attributes:
        name (`str`): registry name and default column name.
        polarity (`str` or None): `"higher_is_harder"`, `"higher_is_easier"`, or None for a score with no hard/easy
            reading (select those with the `"highest"`/`"lowest"` strategies). Recorded on the output column
            (`hf_influence.polarity`), so selection finds it again after save/load.
        definition (`str`): one-line formula of the score.
        paper (`str`): the paper and equation the score comes from.

    Args:
        column (`str`, *optional*): output column name; defaults to `name`.
        batch_size (`int`, defaults to 32): rows per `map` batch (and per forward pass).
        label_column (`str`, defaults to `"label"`): gold labels, for scorers that need them.
        device (`str` or `torch.device`, *optional*): defaults to CUDA when available, else CPU. With `num_proc`
            (or `num_gpus`) and several GPUs, map process `rank` uses `cuda:<rank % device_count>`; in a
            multi-process job, rank `r` uses `cuda:<LOCAL_RANK>`.
        shard (`bool`, *optional*): inside an `accelerate launch` / `torchrun` job (an initialised
            `torch.distributed` process group of several processes), score only this rank's contiguous shard and
            gather the column, so every rank returns the same scored dataset (see `hf_influence.scorers.sharding`).
            The call is then collective: **call the scorer on every rank**. Default (`None`): shard whenever such a
            process group exists (scorers that run no model, `shard_across_processes = False`, never shard);
            `False`: score the whole dataset in this process (e.g. a call made on the main process only).

    Example:
        ```python
        >>> from datasets import Dataset
        >>> class LengthScorer(Scorer):
        ...     name, polarity, definition, paper = "length", "higher_is_harder", "len(input_ids)", "-"
        ...     def score_batch(self, batch):
        ...         return [len(x) for x in batch["input_ids"]]
        >>> list(LengthScorer()(Dataset.from_dict({"input_ids": [[1, 2], [3]]}))["length"])
        [2.0, 1.0]
        ```
    """

    name: ClassVar[str] = ""
    polarity: ClassVar[str | None] = "higher_is_harder"
    definition: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    #: Config keys that cannot change the scores and are left out of the cache fingerprint.
    fingerprint_exclude: ClassVar[tuple[str, ...]] = ("batch_size", "device")
    #: Whether a call inside a multi-process job splits the rows over the ranks (scorers that run a model do; cheap
    #: joins of precomputed values do not, and may then be called on any subset of ranks).
    shard_across_processes: ClassVar[bool] = True

    def __init__(
        self,
        *,
        column: str | None = None,
        batch_size: int = 32,
        label_column: str = "label",
        device: str | Any | None = None,
        shard: bool | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if column is not None and not column:
            raise ValueError("column must be a non-empty string (or None for the scorer's name).")
        self.column = column or self.name
        self.batch_size = batch_size
        self.label_column = label_column
        self._requested_device = device
        self._active_device: Any = None
        self.shard = shard

    # ---- configuration -------------------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable configuration of this scorer (everything that defines its values, plus batch/device)."""
        return {
            "column": self.column,
            "batch_size": self.batch_size,
            "label_column": self.label_column,
            "device": None if self._requested_device is None else str(self._requested_device),
        }

    def checkpoint_fingerprint(self) -> str:
        """Hash of the model weights/checkpoints the scores depend on ("" for model-free scorers)."""
        return ""

    def card_entry(self) -> dict[str, Any]:
        """What a dataset card records for this score column."""
        return {
            "name": self.name,
            "column": self.column,
            "definition": self.definition,
            "paper": self.paper,
            "polarity": self.polarity,
            "config": self.config_dict(),
        }

    def fingerprint(self, dataset: datasets.Dataset) -> str:
        """The `new_fingerprint` of `self(dataset)`: dataset fingerprint + config + checkpoint hash."""
        config = {k: v for k, v in self.config_dict().items() if k not in self.fingerprint_exclude}
        hasher = hashlib.blake2b(digest_size=16)
        hasher.update(dataset_fingerprint(dataset).encode())
        hasher.update(f"{type(self).__module__}.{type(self).__qualname__}".encode())
        hasher.update(json.dumps(config, sort_keys=True, default=str).encode())
        hasher.update(self.checkpoint_fingerprint().encode())
        return hasher.hexdigest()

    # ---- device ----------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device of the current map process (resolved on first use)."""
        if self._active_device is None:
            self._active_device = self._resolve_device(None)
        return self._active_device

    def _resolve_device(self, rank: int | None) -> torch.device:
        import torch

        if self._requested_device is not None:
            return torch.device(self._requested_device)
        if torch.cuda.is_available():
            if rank is None:
                return torch.device("cuda")
            return torch.device(f"cuda:{rank % torch.cuda.device_count()}")
        return torch.device("cpu")

    # ---- scoring ---------------------------------------------------------------------------------------------------

    def score_batch(self, batch: dict[str, list]) -> Sequence[float] | np.ndarray:
        """Scores for one batch: exactly one value per row (NaN for missing). Implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_batch(batch).")

    def _map_fn(self, batch: dict[str, list], rank: int | None = None) -> dict[str, np.ndarray]:
        if rank is not None or self._active_device is None:
            self._active_device = self._resolve_device(rank)
            if rank is not None and self._active_device.type == "cpu":
                _single_threaded_worker()
        num_rows = len(next(iter(batch.values()))) if batch else 0
        values = np.asarray(self.score_batch(batch), dtype=np.float32).reshape(-1)
        if values.shape[0] != num_rows:
            raise ValueError(
                f"{type(self).__name__}.score_batch returned {values.shape[0]} values for a batch of {num_rows} rows; "
                "it must return exactly one value per row (use NaN for missing)."
            )
        return {self.column: values}

    def output_features(self, dataset: datasets.Dataset, remove_columns: Any = None) -> datasets.Features:
        """Input features (minus `remove_columns`) plus the float32 score column."""
        import datasets

        removed = {remove_columns} if isinstance(remove_columns, str) else set(remove_columns or ())
        features = datasets.Features({k: v for k, v in dataset.features.items() if k not in removed})
        features[self.column] = score_feature(self.polarity)  # the polarity travels with the column
        return features

    def __call__(self, dataset: datasets.Dataset, num_gpus: int | str | None = None, **map_kwargs: Any
                 ) -> datasets.Dataset:
        """Add the score column to `dataset` (an existing column of that name is overwritten).

        Inside an `accelerate launch` / `torchrun` job the call is sharded over the ranks (see `shard`): call it on
        every rank; each scores its share on its own device and all return the same dataset. The `datasets` cache
        is shared with single-process calls (same fingerprint) and written by rank 0 only.

        Args:
            dataset (`datasets.Dataset`): the dataset to score.
            num_gpus (`int` or `"all"`, *optional*): in a plain `python` process, score on this many local GPUs at
                once: `datasets`' `map(num_proc=num_gpus, with_rank=True)`, map process `rank` on `cuda:<rank>`.
                Opt-in; keep the model on CPU until the call (each process moves its copy to its GPU).
            **map_kwargs: passed to `Dataset.map` (e.g. `num_proc`, `cache_file_name`, `load_from_cache_file`,
                `keep_in_memory`). `batched`, `batch_size`, `features`, `new_fingerprint`, `with_rank` and
                `function` are set by the scorer; `desc` may be overridden.

        Returns:
            `datasets.Dataset`: the dataset with one more float32 column.

        Note:
            With `num_proc > 1` (or `num_gpus`) on GPUs, keep the model on CPU until the call (the scorer moves it
            to `cuda:<rank>` inside each process), or use the "spawn" start method
            (`multiprocess.set_start_method("spawn")`) if CUDA was initialised before the call.
        """
        reserved = {
            "function", "batched", "batch_size", "features", "new_fingerprint", "with_rank", "with_indices",
            "input_columns", "fn_kwargs",
        }
        clash = reserved & set(map_kwargs)
        if clash:
            raise ValueError(
                f"{sorted(clash)} are set by the scorer and cannot be passed to map; use the scorer's own config "
                f"(e.g. batch_size=...) instead."
            )
        if not hasattr(dataset, "_fingerprint") or not hasattr(dataset, "map"):
            raise TypeError(
                f"A scorer takes one datasets.Dataset, got {type(dataset).__name__}. For a DatasetDict, score each "
                "split: DatasetDict({name: scorer(split) for name, split in dataset_dict.items()})."
            )
        self.validate(dataset)
        from . import sharding

        if num_gpus is not None:
            map_kwargs["num_proc"] = sharding.resolve_num_gpus(num_gpus, map_kwargs, current_world())
        world = sharding.scorer_world(self)
        if world.is_distributed:
            return sharding.sharded_call(self, dataset, world, map_kwargs)
        return dataset.map(
            self._map_fn,
            batched=True,
            batch_size=self.batch_size,
            with_rank=True,
            features=self.output_features(dataset, map_kwargs.get("remove_columns")),
            new_fingerprint=self.fingerprint(dataset),
            desc=map_kwargs.pop("desc", f"Scoring {self.column!r} ({type(self).__name__})"),
            **map_kwargs,
        )

    def validate(self, dataset: datasets.Dataset) -> None:
        """Check the dataset has what this scorer needs (called before map). Subclasses extend."""
        if len(dataset) == 0:
            raise ValueError("Cannot score an empty dataset.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.config_dict(), default=str)})"
