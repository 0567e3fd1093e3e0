"""Scorers: callables that add one float32 score column to a ``datasets.Dataset`` through ``Dataset.map``.

Use ``get_scorer(name, **config)`` or a scorer class directly, then call it on a dataset::

    from hf_influence.scorers import get_scorer, list_scorers

    scorer = get_scorer("el2n", model=["run/checkpoint-200"], batch_size=16)
    scored = scorer(dataset)            # adds the float32 column "el2n"

Scorer classes live in one module per family and are imported lazily (``import hf_influence.scorers`` stays cheap).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .base import (
    BUILTIN_SCORER_MODULES,
    POLARITIES,
    Scorer,
    get_scorer,
    get_scorer_class,
    iter_checkpoints,
    list_scorers,
    load_checkpoint,
    model_fingerprint,
    pad_batch,
    register_scorer,
)

_LAZY: dict[str, str] = {
    "ModelOutputScorer": "model_outputs",
    "EL2NScorer": "model_outputs",
    "LossScorer": "model_outputs",
    "EntropyScorer": "model_outputs",
    "PerplexityScorer": "model_outputs",
    "InputNormScorer": "model_outputs",
    "DynamicsScorer": "dynamics",
    "PVIScorer": "pvi",
    "make_null_input_dataset": "pvi",
    "add_threshold_samples": "aum",
    "flag_mislabeled": "aum",
}

__all__ = [
    "BUILTIN_SCORER_MODULES",
    "POLARITIES",
    "Scorer",
    "get_scorer",
    "get_scorer_class",
    "iter_checkpoints",
    "list_scorers",
    "load_checkpoint",
    "model_fingerprint",
    "pad_batch",
    "register_scorer",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    # Scorers of other families (gradients, vog, influence, effort) are found in their modules by name.
    for module in BUILTIN_SCORER_MODULES:
        if importlib.util.find_spec(f"{__name__}.{module}") is None:
            continue
        mod = importlib.import_module(f"{__name__}.{module}")
        if hasattr(mod, name):
            value = getattr(mod, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
