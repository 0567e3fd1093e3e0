"""Per-example gradient-norm scores: GraNd (Paul et al. 2021) and TracIn self-influence (Pruthi et al. 2020).

Both use `hf_influence.grads.PerExampleGradNorms`: exact per-example gradient norms for the whole model (or a
parameter regex, or a PEFT model's adapters) from one batched backward per checkpoint and map batch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from transformers.utils import logging

from ..batching import resolve_pad_multiple
from ..checkpoints import auto_model_class, load_checkpoint
from ..grads import PerExampleGradNorms
from .model_outputs import ModelOutputScorer
from .registry import register_scorer

logger = logging.get_logger(__name__)


class _GradientNormScorer(ModelOutputScorer):
    """Shared part of GraNd and TracIn: the per-example gradient norm of one checkpoint on one padded batch."""

    squared: ClassVar[bool] = False

    def __init__(self, model: Any, *, params: str | None = None, cuda_graph: bool = False, **kwargs: Any) -> None:
        kwargs["pad_to_multiple_of"] = resolve_pad_multiple(kwargs.get("pad_to_multiple_of"), cuda_graph)
        super().__init__(model, **kwargs)
        if params is not None and not isinstance(params, str):
            raise TypeError(f"params must be None, 'all', 'last_layer' or a parameter-name regex string, got "
                            f"{type(params).__name__}.")
        if cuda_graph and not self.cache_models:
            raise ValueError("cuda_graph=True needs cache_models=True: the graphs are captured once per checkpoint "
                             "and replayed for every batch, so the checkpoints must stay loaded.")
        self.params = params
        self.cuda_graph = cuda_graph
        self._grad_norms: dict[int, PerExampleGradNorms] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_grad_norms"] = {}  # hook plans are rebuilt where the scorer is unpickled (num_proc workers)
        return state

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config["params"] = self.params
        return config

    def _grad_norms_for(self, model: Any) -> PerExampleGradNorms:
        """The hook plan of `model`, kept while the scorer caches its checkpoints (`cache_models=True`)."""
        grad_norms = self._grad_norms.get(id(model))
        if grad_norms is None or grad_norms.model is not model:
            grad_norms = PerExampleGradNorms(model, self.params, task=self.task, cuda_graph=self.cuda_graph)
            if self.cache_models:
                self._grad_norms[id(model)] = grad_norms
        return grad_norms

    def signals_for(self, model: Any, inputs: dict[str, Any], labels: Any) -> dict[str, Any]:
        batch = {k: v.to(self.device) for k, v in inputs.items() if k != "labels"}
        if self.task == "causal_lm":
            batch["labels"] = inputs["labels"] if "labels" in inputs else inputs["input_ids"].masked_fill(
                inputs["attention_mask"] == 0, -100
            )
        else:
            batch["labels"] = labels
        values = self._grad_norms_for(model)(batch, squared=self.squared)
        return {self.signal: values.detach().cpu()}


@register_scorer
class GraNdScorer(_GradientNormScorer):
    """GraNd: the L2 norm of the per-example loss gradient, averaged over checkpoints (independent runs or seeds).

    Paul, Ganguli, Dziugaite, "Deep Learning on a Data Diet", NeurIPS 2021, Def. 2.1:
    `chi_t(x, y) = E_{w_t} || grad_w loss(p(w_t, x), y) ||_2`. As in the authors' code the expectation is over the
    *scores* (each run's norm, then the arithmetic mean), in eval mode, over all trainable parameters (or `params`).
    GraNd at initialisation (`GraNdScorer.at_initialization`) is reported in the paper but did not reproduce in
    Kirsch's TMLR 2023 study (it correlates with the input norm). Polarity: higher = harder (more important).

    Args:
        model: checkpoint(s) as in `ModelOutputScorer` (a run folder expands to its `checkpoint-*` folders; pass one
            checkpoint per independent run/seed to average over runs).
        params (`str`, *optional*): `"all"` (every parameter, frozen ones too: the paper's whole-network GraNd),
            `"last_layer"` (the output layer, e.g. BERT's `classifier`), or a parameter-name regex (e.g.
            `r"classifier"`); default: every trainable parameter (see `hf_influence.grads.select_parameters`).
        cuda_graph (`bool`, defaults to `False`): on a GPU, capture each checkpoint's norms step as CUDA graphs and
            replay them (`PerExampleGradNorms(cuda_graph=True)`); batches are then padded to a multiple of 64 tokens
            unless `pad_to_multiple_of` says otherwise. Needs `cache_models=True`.
        **kwargs: `task`, `tokenizer`, `text_columns`, `max_length`, `pad_token_id`, `pad_to_multiple_of`,
            `model_kwargs`, `cache_models`, `column`, `batch_size`, `label_column`, `device` (see
            `ModelOutputScorer`).

    Example:
        ```python
        >>> scorer = GraNdScorer(["run0/checkpoint-500", "run1/checkpoint-500"], batch_size=32)
        >>> scored = scorer(train_dataset)  # adds float32 column "grand"
        ```
    """

    name = "grand"
    signal = "grand"
    polarity = "higher_is_harder"
    definition = "E_runs ||grad_w loss(w_t; x, y)||_2 (mean of per-run scores)"
    paper = "Paul, Ganguli, Dziugaite, Deep Learning on a Data Diet, NeurIPS 2021, Def. 2.1"

    @classmethod
    def at_initialization(
        cls,
        model: Any,
        seeds: Iterable[int] = range(10),
        *,
        task: str = "sequence_classification",
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> GraNdScorer:
        """GraNd at initialisation, averaged over `seeds` (Data Diet: 10 runs).

        Args:
            model: a `PretrainedConfig` (every weight freshly initialised with each seed) or a pretrained path / Hub
                id (pretrained body, task head freshly initialised with each seed, as when fine-tuning starts).
            seeds (`Iterable[int]`, defaults to `range(10)`): one model per seed.
            task (`str`): `"sequence_classification"` or `"causal_lm"`.
            model_kwargs (`dict`, *optional*): passed to `from_pretrained` (e.g. `num_labels=3`).
            **kwargs: other `GraNdScorer` arguments.
        """
        import torch
        import transformers

        auto = auto_model_class(task)
        seeds = [int(s) for s in seeds]
        models = []
        for seed in seeds:
            torch.manual_seed(seed)
            if isinstance(model, transformers.PretrainedConfig):
                models.append(auto.from_config(model).eval())
            else:
                models.append(load_checkpoint(str(model), task=task, **(model_kwargs or {})))
        if not models:
            raise ValueError("at_initialization needs at least one seed.")
        scorer = cls(models, task=task, **kwargs)
        scorer.init_seeds = seeds
        return scorer

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config["init_seeds"] = getattr(self, "init_seeds", None)
        return config


@register_scorer
class TracInScorer(_GradientNormScorer):
    """TracIn self-influence: `sum_c eta_c ||grad_w loss(w_c; z)||_2^2` over training checkpoints `w_c`.

    Pruthi, Liu, Kale, Sundararajan, "Estimating Training Data Influence by Tracing Gradient Descent", NeurIPS 2020,
    Eq. 4 (TracInCP) with the test point equal to the training point. Anand et al. (EMNLP 2023, App. B.1) use 10
    checkpoints logged every 500 iterations, a constant eta and gradients with respect to the last encoder layer
    (`params=r"encoder\\.layer\\.3\\."` for BERT-small). High self-influence flags mislabeled or atypical examples.
    Polarity: higher = harder.

    Args:
        model: the checkpoints `w_c` (a run folder expands to its `checkpoint-*` folders, sorted by step).
        learning_rates (`float` or `list[float]`, *optional*): `eta_c`, one per checkpoint, or one for all. By default
            each checkpoint's learning rate is read from its `trainer_state.json` (the last logged `learning_rate` at
            or before its `global_step`).
        params (`str`, *optional*): `"all"`, `"last_layer"` (the output layer: the classifier, not Anand et al.'s
            last encoder layer) or a parameter-name regex; default: every trainable parameter.
        **kwargs: as in `GraNdScorer`.

    Raises:
        ValueError: if learning rates are neither given nor readable from the checkpoints, or their count differs.
    """

    name = "tracin"
    signal = "tracin"
    polarity = "higher_is_harder"
    squared = True
    definition = "sum_c eta_c ||grad_w loss(w_c; z)||_2^2 (self-influence)"
    paper = "Pruthi et al., TracIn, NeurIPS 2020, Eq. 4 (self-influence); Anand et al., EMNLP 2023, App. B.1"

    def __init__(self, model: Any, *, learning_rates: float | Sequence[float] | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        count = len(self.checkpoints)
        if learning_rates is None:
            self.learning_rates = [_learning_rate_of(ref) for ref in self.checkpoints]
        elif isinstance(learning_rates, (int, float)):
            self.learning_rates = [float(learning_rates)] * count
        else:
            self.learning_rates = [float(x) for x in learning_rates]
        if len(self.learning_rates) != count:
            raise ValueError(
                f"Got {len(self.learning_rates)} learning rates for {count} checkpoints; pass one per checkpoint or "
                "a single float."
            )
        self._current = 0

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config["learning_rates"] = self.learning_rates
        return config

    def _model(self, index: int) -> Any:
        self._current = index  # the checkpoint whose norms the next signals_for call computes
        return super()._model(index)

    def signals_for(self, model: Any, inputs: dict[str, Any], labels: Any) -> dict[str, Any]:
        values = super().signals_for(model, inputs, labels)[self.signal]
        return {self.signal: values * self.learning_rates[self._current]}

    def score_batch(self, batch: dict[str, list]) -> np.ndarray:
        # the base class averages the per-checkpoint values; TracIn sums them
        return np.asarray(super().score_batch(batch)) * len(self.checkpoints)


def _learning_rate_of(ref: Any) -> float:
    state_file = Path(ref) / "trainer_state.json" if isinstance(ref, (str, os.PathLike)) else None
    if state_file is None or not state_file.is_file():
        raise ValueError(
            f"Cannot read the learning rate of checkpoint {ref if state_file else type(ref).__name__} (no "
            "trainer_state.json). Pass learning_rates=[...] (one per checkpoint), or learning_rates=1.0 for the "
            "constant-eta variant of Anand et al."
        )
    state = json.loads(state_file.read_text())
    step = state.get("global_step", math.inf)
    logged = [(e["step"], e["learning_rate"]) for e in state.get("log_history", []) if "learning_rate" in e]
    before = [lr for s, lr in logged if s <= step]
    if not before:
        raise ValueError(
            f"{state_file} logs no learning_rate at or before step {step}. Pass learning_rates=[...] explicitly."
        )
    return float(before[-1])
