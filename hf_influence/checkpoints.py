"""Checkpoints: load a model for scoring, and expand a training run folder into its checkpoints.

A checkpoint reference is a model object, a local folder saved by `save_pretrained`, a local `.gguf` file or a Hub
id. The task (`hf_influence.tasks.TASKS`) picks the `AutoModelFor...` class (`auto_model_class`); scorers, VoG,
GraNd at initialisation and the experiment helpers all load through `load_checkpoint`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from .tasks import TASKS

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.get_logger(__name__)


def auto_model_class(task: str) -> Any:
    """The transformers Auto class that builds a model of `task`: `AutoModelForSequenceClassification` or
    `AutoModelForCausalLM`.

    Raises:
        ValueError: for a task outside `TASKS`.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; valid tasks are {', '.join(TASKS)}.")
    import transformers

    from . import mlp_head  # noqa: F401  (registers the MLP-head model type with the Auto classes)

    if task == "sequence_classification":
        return transformers.AutoModelForSequenceClassification
    return transformers.AutoModelForCausalLM


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
    auto = auto_model_class(task)
    if hasattr(ref, "state_dict") and hasattr(ref, "eval"):
        return ref.eval()
    if not isinstance(ref, (str, os.PathLike)):
        raise TypeError(f"Cannot load a checkpoint from {type(ref).__name__}: pass a model, a local path or a Hub id.")
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
