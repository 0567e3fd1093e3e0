"""Scorers: callables that add one float32 score column to a ``datasets.Dataset`` through ``Dataset.map``.

Use ``get_scorer(name, **config)`` or a scorer class directly, then call it on a dataset::

    from hf_influence.scorers import get_scorer, list_scorers

    scorer = get_scorer("el2n", model=["run/checkpoint-200"], batch_size=16)
    scored = scorer(dataset)            # adds the float32 column "el2n"

Modules: `base` (the `Scorer` contract), `registry` (`register_scorer`, `get_scorer`, `list_scorers`), `sharding`
(scoring inside a multi-process job), `joins` (helpers of the scorers that join precomputed values by example id), and
one module per scorer family: `model_outputs`, `dynamics`, `pvi`, `gradients`, `vog`, `influence`, `effort`,
`similarity`. The plumbing they share sits below the package: `hf_influence.fingerprints`,
`hf_influence.checkpoints`, `hf_influence.batching`, `hf_influence.tasks`.

A new scorer is one file plus one import line: a module here whose `Scorer` subclass is decorated with
`@register_scorer`, and its name added to the plain import of the scorer modules below (importing a module registers
its scorers, as `peft` registers its methods).
"""

from __future__ import annotations

from ..aum import add_threshold_samples, flag_mislabeled
from ..batching import pad_batch
from ..checkpoints import iter_checkpoints, load_checkpoint
from ..fingerprints import model_fingerprint
from ..polarity import POLARITIES
from . import dynamics, effort, gradients, influence, model_outputs, pvi, similarity, vog  # noqa: F401 (registers)
from .base import Scorer
from .dynamics import DynamicsScorer
from .effort import EffortScorer
from .gradients import GraNdScorer, TracInScorer
from .influence import InfluenceScorer
from .model_outputs import (
    EL2NScorer,
    EntropyScorer,
    InputNormScorer,
    LossScorer,
    ModelOutputScorer,
    PerplexityScorer,
)
from .pvi import PVIScorer, make_null_input_dataset
from .registry import get_scorer, get_scorer_class, list_scorers, register_scorer
from .similarity import GradientSimilarityScorer
from .vog import VoGScorer

__all__ = [
    "POLARITIES",
    "DynamicsScorer",
    "EL2NScorer",
    "EffortScorer",
    "EntropyScorer",
    "GraNdScorer",
    "GradientSimilarityScorer",
    "InfluenceScorer",
    "InputNormScorer",
    "LossScorer",
    "ModelOutputScorer",
    "PVIScorer",
    "PerplexityScorer",
    "Scorer",
    "TracInScorer",
    "VoGScorer",
    "add_threshold_samples",
    "flag_mislabeled",
    "get_scorer",
    "get_scorer_class",
    "iter_checkpoints",
    "list_scorers",
    "load_checkpoint",
    "make_null_input_dataset",
    "model_fingerprint",
    "pad_batch",
    "register_scorer",
]
