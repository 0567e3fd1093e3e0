"""The scorer contract: a callable that adds one float32 score column to a ``datasets.Dataset``.

A scorer is used through ``Dataset.map(batched=True)``. The map call gets pinned output ``Features`` (the input
features plus one ``float32`` column, NaN for missing values) and a ``new_fingerprint`` built from the dataset's
fingerprint, the scorer's configuration and a hash of the model weights or checkpoint files. Model weights are never
pickled for hashing: a second identical call on a cached dataset is served from the ``datasets`` cache, and a changed
checkpoint is recomputed.

This module also holds the registry (``register_scorer``, ``get_scorer``, ``list_scorers``) and the helpers shared by
model-based scorers: ``model_fingerprint``, ``load_checkpoint``, ``iter_checkpoints`` and ``pad_batch``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from transformers.utils import logging

from ..distributed import current_world
from ..polarity import POLARITIES, score_feature
from ..tasks import TASKS

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import torch

logger = logging.get_logger(__name__)



# ----------------------------------------------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------------------------------------------

_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt")


def _hash_file(path: Path, hasher: Any) -> None:
    hasher.update(path.name.encode())
    hasher.update(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)


def _hash_module(model: Any, hasher: Any) -> None:
    import torch

    hasher.update(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        flat = tensor.reshape(-1).cpu().contiguous()
        if flat.numel():
            hasher.update(flat.view(torch.uint8).numpy().tobytes())


def model_fingerprint(model_or_path: Any) -> str:
    """A stable hash of a model's weights or of a checkpoint's files, for cache fingerprints.

    Never pickles anything: for an ``nn.Module`` it hashes the class name and every ``state_dict`` tensor's name,
    dtype, shape and raw bytes; for a local file it hashes the file's name, size and bytes; for a local folder it does
    the same for every weight/config/tokenizer file in it (sorted, sub-folders excluded). A Hub id that is not a local
    path is resolved in the local Hub cache (offline); if it is not cached, the id and revision string are hashed
    (with a warning that a later push to the same revision would not invalidate the cache). A sequence hashes each
    element in order.

    Args:
        model_or_path (`torch.nn.Module`, `str`, `os.PathLike` or a sequence of these): what to fingerprint.

    Returns:
        `str`: a 32-character hex digest.

    Example:
        ```python
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(hidden_size=8, num_hidden_layers=1,
        ...                                                  num_attention_heads=1, intermediate_size=8))
        >>> len(model_fingerprint(model))
        32
        ```
    """
    hasher = hashlib.blake2b(digest_size=16)
    _update_fingerprint(model_or_path, hasher)
    return hasher.hexdigest()


def _update_fingerprint(obj: Any, hasher: Any) -> None:
    if obj is None:
        hasher.update(b"none")
        return
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        _hash_module(obj, hasher)
        return
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_file():
            _hash_file(path, hasher)
            return
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _CHECKPOINT_SUFFIXES)
            if not files:
                raise ValueError(
                    f"Folder {path} holds no checkpoint files (expected one of {', '.join(_CHECKPOINT_SUFFIXES)}). "
                    "Pass the folder saved by `save_pretrained`, or the model object itself."
                )
            for file in files:
                _hash_file(file, hasher)
            return
        local = _resolve_hub_snapshot(str(obj))
        if local is not None:
            _update_fingerprint(local, hasher)
            return
        logger.warning(
            f"{obj!r} is neither a local path nor a cached Hub repo; fingerprinting its name only. Pin a `revision` "
            "or pass a local folder so that changed weights invalidate the score cache."
        )
        hasher.update(f"hub:{obj}".encode())
        return
    if isinstance(obj, Sequence):
        hasher.update(f"seq{len(obj)}".encode())
        for item in obj:
            _update_fingerprint(item, hasher)
        return
    raise TypeError(
        f"Cannot fingerprint an object of type {type(obj).__name__}: pass a torch.nn.Module, a checkpoint path or a "
        "Hub id (or a list of these)."
    )


def _resolve_hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a cached Hub repo, without any network access, or None."""
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", repo_id):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None


def dataset_fingerprint(dataset: Any) -> str:
    """The fingerprint ``datasets`` keeps for a ``Dataset`` (``dataset._fingerprint``)."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None:
        raise TypeError(f"Expected a datasets.Dataset, got {type(dataset).__name__}.")
    return str(fingerprint)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def load_checkpoint(ref: Any, task: str = "sequence_classification", **kwargs: Any) -> torch.nn.Module:
    """Load a model for scoring and put it in eval mode.

    Args:
        ref (`torch.nn.Module`, `str` or `os.PathLike`): a model object (returned in eval mode, not copied), a local
            folder saved by `save_pretrained`, a local `.gguf` file, or a Hub id (served from the local cache when
            `HF_HUB_OFFLINE=1`).
        task (`str`, defaults to `"sequence_classification"`): `"sequence_classification"` or `"causal_lm"`; picks the
            `AutoModelFor...` class.
        **kwargs: passed to `from_pretrained` (e.g. `revision`, `dtype`, `num_labels`). Without `dtype` the
            checkpoint's own dtype is kept (transformers 5), with a warning when that is half precision.

    Returns:
        `torch.nn.Module`: the model in eval mode.

    Raises:
        ValueError: for an unknown task.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; valid tasks are {', '.join(TASKS)}.")
    if hasattr(ref, "state_dict") and hasattr(ref, "eval"):
        return ref.eval()
    if not isinstance(ref, (str, os.PathLike)):
        raise TypeError(f"Cannot load a checkpoint from {type(ref).__name__}: pass a model, a local path or a Hub id.")
    import transformers

    from .. import mlp_head  # noqa: F401  (registers the MLP-head model type with the Auto classes)

    auto = (
        transformers.AutoModelForSequenceClassification
        if task == "sequence_classification"
        else transformers.AutoModelForCausalLM
    )
    path = Path(ref)
    if path.is_file() and path.suffix == ".gguf":
        kwargs.setdefault("gguf_file", path.name)
        ref = path.parent
    import torch

    model = auto.from_pretrained(str(ref), **kwargs)
    dtype = next(model.parameters()).dtype
    if "dtype" not in kwargs and "torch_dtype" not in kwargs and dtype in (torch.float16, torch.bfloat16):
        logger.warning(
            f"{ref} was loaded in {dtype} (transformers keeps the checkpoint's dtype): scores are computed in half "
            "precision. Pass model_kwargs={'dtype': torch.float32} to the scorer for full-precision scores."
        )
    return model.eval()


def iter_checkpoints(ref: Any) -> list[Any]:
    """Expand a run folder into its ``checkpoint-<step>`` sub-folders, sorted by step.

    Args:
        ref: a `Trainer` output folder (holding `checkpoint-*` folders), a single checkpoint (folder, file, Hub id or
            model), or a list of these (each expanded, order kept).

    Returns:
        `list`: checkpoint references, one per checkpoint.

    Raises:
        ValueError: if the list is empty.
    """
    if isinstance(ref, (list, tuple)):
        out = [item for r in ref for item in iter_checkpoints(r)]
        if not out:
            raise ValueError("Got an empty list of checkpoints; pass at least one model, folder or Hub id.")
        return out
    if isinstance(ref, (str, os.PathLike)) and Path(ref).is_dir():
        subdirs = [p for p in Path(ref).iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
        if subdirs:
            return sorted(subdirs, key=lambda p: int(p.name.split("-")[1]))
    return [ref]


# ----------------------------------------------------------------------------------------------------------------
# Padding
# ----------------------------------------------------------------------------------------------------------------

_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "labels": -100}


#: The tokenizer output columns a model takes (what a scorer pads and a text column is tokenized into).
TOKEN_COLUMNS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")

#: Padding multiple used with CUDA graphs when none is given: one captured graph per padded length, so keep them few.
GRAPH_PAD_MULTIPLE = 64


def resolve_pad_multiple(pad_to_multiple_of: int | None, cuda_graph: bool = False) -> int | None:
    """The padding multiple a scorer uses: `pad_to_multiple_of` checked, or `GRAPH_PAD_MULTIPLE` with `cuda_graph`.

    Raises:
        ValueError: if `pad_to_multiple_of` is not a positive integer.
    """
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of}.")
    if pad_to_multiple_of is None and cuda_graph:
        return GRAPH_PAD_MULTIPLE
    return pad_to_multiple_of


def pad_batch(
    rows: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    tokenizer: Any = None,
    pad_token_id: int = 0,
    keys: Iterable[str] = (*TOKEN_COLUMNS, "labels"),
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Dynamically pad token sequences of a batch to the batch's longest row (right padding).

    Args:
        rows (`dict[str, list]` or `list[dict]`): a `datasets` batch (columns of lists) or a list of rows. Must hold
            `input_ids`; `attention_mask`, `token_type_ids` and `labels` are padded when present.
        tokenizer (*optional*): its `pad_token_id` (or `eos_token_id` when it has none) is used for `input_ids`.
        pad_token_id (`int`, defaults to 0): pad id when no tokenizer is given.
        keys (`Iterable[str]`): which sequence columns to pad; other columns are ignored.
        pad_to_multiple_of (`int`, *optional*): round the padded length up to a multiple of this (fewer distinct
            shapes, e.g. for CUDA graphs).

    Returns:
        `dict[str, torch.Tensor]`: int64 tensors `[B, T]`, always with an `attention_mask` (1 on real tokens).
        Padded `labels` positions are -100.

    Example:
        ```python
        >>> pad_batch({"input_ids": [[5, 6, 7], [8]]})["attention_mask"].tolist()
        [[1, 1, 1], [1, 0, 0]]
        ```
    """
    import torch

    if isinstance(rows, Mapping):
        columns = {k: list(v) for k, v in rows.items()}
    else:
        rows = list(rows)
        columns = {k: [row[k] for row in rows] for k in (rows[0] if rows else {})}
    if "input_ids" not in columns:
        raise ValueError(
            f"pad_batch needs an 'input_ids' column, got {sorted(columns)}. Tokenize the dataset first or pass "
            "text_columns and a tokenizer to the scorer."
        )
    if tokenizer is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        pad_token_id = int(pad) if pad is not None else pad_token_id
    ids = columns["input_ids"]
    lengths = [len(x) for x in ids]
    width = max(lengths) if lengths else 0
    multiple = resolve_pad_multiple(pad_to_multiple_of)
    if multiple is not None:
        width = -(-width // multiple) * multiple
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        if key not in columns:
            continue
        fill = pad_token_id if key == "input_ids" else _PAD_VALUES.get(key, 0)
        tensor = torch.full((len(ids), width), fill, dtype=torch.long)
        for i, seq in enumerate(columns[key]):
            if len(seq) != lengths[i]:
                raise ValueError(f"Row {i}: {key!r} has length {len(seq)} but input_ids has length {lengths[i]}.")
            if len(seq):
                tensor[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        out[key] = tensor
    if "attention_mask" not in out:
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, length in enumerate(lengths):
            mask[i, :length] = 1
        out["attention_mask"] = mask
    return out


# ----------------------------------------------------------------------------------------------------------------
# Scorer base class
# ----------------------------------------------------------------------------------------------------------------



def _single_threaded_worker() -> None:
    """Run torch single-threaded in a `Dataset.map(num_proc=...)` worker process on CPU.

    The workers are forked from a parent whose OpenMP thread pool may already be running; a forked child that then
    enters a multi-threaded region waits forever on the parent's (absent) threads. One thread per worker avoids that
    deadlock, and `num_proc` workers already use the cores.
    """
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def count_unknown_ids(dataset: Any, id_column: str, known_ids: Any, scorer: str, fix: str) -> tuple[int, int]:
    """For scorers that join precomputed values by example id: `(ids of dataset without a value, all ids)`.

    Raises:
        ValueError: if `dataset` has no `id_column`, naming the scorer and `fix` (how to add the ids).
    """
    if id_column not in dataset.column_names:
        raise ValueError(f"{scorer} joins on {id_column!r}, which is not in the dataset (columns: "
                         f"{dataset.column_names}). {fix}")
    ids = np.asarray(dataset[id_column])
    return int((~np.isin(ids, np.asarray(known_ids))).sum()), len(ids)


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


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------

_SCORERS: dict[str, type[Scorer]] = {}
_IMPORT_ERRORS: dict[str, str] = {}

#: Modules of `hf_influence.scorers` whose scorers register themselves when imported (missing ones are skipped).
BUILTIN_SCORER_MODULES: tuple[str, ...] = (
    "model_outputs",
    "dynamics",
    "pvi",
    "gradients",
    "vog",
    "influence",
    "effort",
    "similarity",
)


def register_scorer(cls: type[Scorer] | None = None, /, *, name: str | None = None, overwrite: bool = False) -> Any:
    """Register a `Scorer` subclass under `name` (defaults to `cls.name`). Usable as a decorator.

    Args:
        cls (`type[Scorer]`, *optional*): the class (when used as `@register_scorer`).
        name (`str`, *optional*, keyword-only): registry name; defaults to `cls.name`.
        overwrite (`bool`, keyword-only): replace an existing registration of the same name.

    Returns:
        The class (decorator use) or a decorator.

    Example:
        ```python
        >>> @register_scorer(name="my_length")
        ... class MyLength(Scorer):
        ...     name, polarity, definition, paper = "my_length", "higher_is_harder", "len(input_ids)", "-"
        ...     def score_batch(self, batch):
        ...         return [len(x) for x in batch["input_ids"]]
        >>> "my_length" in list_scorers()
        True
        ```
    """

    def decorator(klass: type[Scorer]) -> type[Scorer]:
        if not (isinstance(klass, type) and issubclass(klass, Scorer)):
            raise TypeError(f"register_scorer expects a subclass of Scorer, got {klass!r}.")
        key = name or klass.name
        if not key:
            raise ValueError(f"{klass.__name__} has no `name`; set the class attribute or pass name=... .")
        if klass.polarity is not None and klass.polarity not in POLARITIES:
            raise ValueError(
                f"{klass.__name__}.polarity is {klass.polarity!r}; it must be one of {', '.join(POLARITIES)}, or None "
                "for a score with no hard/easy reading."
            )
        existing = _SCORERS.get(key)
        if existing is not None and existing is not klass and not overwrite:
            raise ValueError(
                f"A scorer named {key!r} is already registered ({existing.__module__}.{existing.__name__}). "
                "Choose another name or pass overwrite=True."
            )
        _SCORERS[key] = klass
        return klass

    if cls is not None:
        return decorator(cls)
    return decorator


def _load_builtin_scorers() -> None:
    for module in BUILTIN_SCORER_MODULES:
        full = f"hf_influence.scorers.{module}"
        if full in _IMPORT_ERRORS:
            continue
        if importlib.util.find_spec(full) is None:
            continue
        try:
            importlib.import_module(full)
        except Exception as err:  # noqa: BLE001 - one broken module must not hide the other scorers
            _IMPORT_ERRORS[full] = f"{type(err).__name__}: {err}"
            logger.warning(f"Could not import {full}; its scorers are unavailable ({_IMPORT_ERRORS[full]}).")


def list_scorers() -> list[str]:
    """Names of all registered scorers (built-in ones are imported on first call), sorted."""
    _load_builtin_scorers()
    return sorted(_SCORERS)


def get_scorer_class(name: str) -> type[Scorer]:
    """The registered `Scorer` subclass called `name`.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    _load_builtin_scorers()
    if name not in _SCORERS:
        hint = ""
        if _IMPORT_ERRORS:
            failed = "; ".join(f"{k} ({v})" for k, v in _IMPORT_ERRORS.items())
            hint = f" Some scorer modules failed to import: {failed}"
        raise ValueError(f"Unknown scorer {name!r}. Valid scorers: {', '.join(sorted(_SCORERS)) or '(none)'}.{hint}")
    return _SCORERS[name]


def get_scorer(name: str, **config: Any) -> Scorer:
    """Instantiate the registered scorer `name` with keyword `config`.

    Example:
        ```python
        >>> scorer = get_scorer("el2n", model=model, batch_size=16)  # doctest: +SKIP
        ```
    """
    return get_scorer_class(name)(**config)
