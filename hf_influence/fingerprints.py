"""Fingerprints: stable hashes of models, checkpoints and datasets, for cache keys, and the canonical form of
recorded settings.

Scorers build their `Dataset.map` `new_fingerprint` from these (see `hf_influence.scorers.Scorer.fingerprint`),
projected-gradient folders record them to know when to resume, and model cards cite them. Nothing is ever pickled:
model weights are hashed tensor by tensor, checkpoint files byte by byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

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


def canonical_settings(settings: Any) -> Any:
    """`settings` as its JSON form reads back, with integral floats as ints, for comparing recorded run settings:
    `num_train_epochs` is 4 from a YAML file and 4.0 from the command line, the same run either way."""
    def canonical(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in value.items()}
        if isinstance(value, list):
            return [canonical(v) for v in value]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    return canonical(json.loads(json.dumps(settings, default=str)))
