"""Scores from a forward pass of one or more trained checkpoints: EL2N, loss, entropy, perplexity.

Every value comes from `hf_influence.signals` (the same formulas the trainer records), computed in eval mode under
`torch.no_grad` with dynamic padding. With several checkpoints (e.g. one per independent training run, as Paul et al.
average EL2N over 10 runs) the per-checkpoint scores are averaged (arithmetic mean of the scores, not of the logits).

Memory: the loaded checkpoints are cached in the scorer instance (`cache_models=True`), so K checkpoints hold K
models in memory for the whole `map`; pass `cache_models=False` to load each checkpoint once per map batch instead
(slow, but one model at a time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from transformers.utils import logging

from ..batching import TOKEN_COLUMNS, pad_batch, resolve_pad_multiple
from ..checkpoints import iter_checkpoints, load_checkpoint
from ..fingerprints import model_fingerprint
from ..tasks import TASKS
from .base import Scorer
from .registry import register_scorer

logger = logging.get_logger(__name__)


class ModelOutputScorer(Scorer):
    """Base of the forward-pass scorers: one signal of `hf_influence.signals`, averaged over checkpoints.

    Args:
        model (model, path, Hub id, run folder, or a list of these): the checkpoint(s) to score with. A run folder
            holding `checkpoint-<step>` folders expands to all of them (see `iter_checkpoints`); pass an explicit list
            to pick some. Paths are loaded with `load_checkpoint(ref, task, **model_kwargs)`.
        task (`str`): `"sequence_classification"` (logits `[B, C]`, gold label from `label_column`) or
            `"causal_lm"` (logits `[B, T, V]`, labels from a `labels` column when present, else the input ids with
            padding masked; the signal is averaged over each example's own label tokens, `signals.causal_lm_signals`).
        tokenizer (*optional*): tokenizer for `text_columns`, and whose pad id is used for padding.
        text_columns (`str` or `list[str]`, *optional*): text column(s) to tokenize on the fly (two columns = a
            sentence pair). Without it the dataset must hold `input_ids` (+ optional `attention_mask`,
            `token_type_ids`).
        max_length (`int`, *optional*): truncation length when tokenizing `text_columns`.
        pad_token_id (`int`, *optional*): pad id when no tokenizer is given (defaults to the model config's, else 0).
        pad_to_multiple_of (`int`, *optional*): pad each batch to a multiple of this length instead of its longest
            row (fewer distinct shapes; the scores do not change beyond float rounding).
        model_kwargs (`dict`, *optional*): passed to `from_pretrained` when loading paths.
        cache_models (`bool`, defaults to `True`): keep loaded checkpoints in memory between batches.
        **kwargs: `column`, `batch_size`, `label_column`, `device` (see `Scorer`).
    """

    signal: ClassVar[str] = ""
    #: Whether the score depends on the gold label (label-free scores are computed for unlabelled rows too).
    needs_labels: ClassVar[bool] = True
    default_task: ClassVar[str] = "sequence_classification"
    supported_tasks: ClassVar[tuple[str, ...]] = TASKS

    def __init__(
        self,
        model: Any,
        *,
        task: str | None = None,
        tokenizer: Any = None,
        text_columns: str | Sequence[str] | None = None,
        max_length: int | None = None,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        cache_models: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        task = task or self.default_task
        if task not in self.supported_tasks:
            raise ValueError(
                f"{type(self).__name__} supports task in {', '.join(self.supported_tasks)}, got {task!r}."
            )
        if model is None:
            raise ValueError(f"{type(self).__name__} needs a model: a model object, a checkpoint path or a list.")
        self.task = task
        self.checkpoints = iter_checkpoints(model)
        self.tokenizer = tokenizer
        self.text_columns = [text_columns] if isinstance(text_columns, str) else list(text_columns or [])
        if self.text_columns and tokenizer is None:
            raise ValueError("text_columns needs a tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...).")
        if len(self.text_columns) > 2:
            raise ValueError(f"At most two text columns (a sentence pair) are supported, got {self.text_columns}.")
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = resolve_pad_multiple(pad_to_multiple_of)
        self.model_kwargs = dict(model_kwargs or {})
        self.cache_models = cache_models
        self._models: dict[int, Any] = {}
        self._checkpoint_hash: str | None = None

    # ---- configuration ---------------------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config.update(
            task=self.task,
            signal=self.signal,
            checkpoints=[_describe(ref) for ref in self.checkpoints],
            text_columns=self.text_columns,
            max_length=self.max_length,
            pad_token_id=self.pad_token_id,
            tokenizer=_describe_tokenizer(self.tokenizer),
            model_kwargs={k: str(v) for k, v in self.model_kwargs.items()},
        )
        return config

    def checkpoint_fingerprint(self) -> str:
        # Model objects may change between calls, so they are re-hashed every time; paths are hashed once.
        if any(not _is_path_like(ref) for ref in self.checkpoints):
            weights = model_fingerprint(list(self.checkpoints))
        else:
            if self._checkpoint_hash is None:
                self._checkpoint_hash = model_fingerprint(list(self.checkpoints))
            weights = self._checkpoint_hash
        if self.tokenizer is None:
            return weights
        from datasets.fingerprint import Hasher

        return weights + Hasher.hash(self.tokenizer)  # tokenizers are small; datasets hashes them the same way

    def validate(self, dataset: Any) -> None:
        super().validate(dataset)
        needed = list(self.text_columns) or ["input_ids"]
        if self.task == "sequence_classification" and self.needs_labels:
            needed.append(self.label_column)
        missing = [c for c in needed if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs column(s) {missing}, the dataset has {dataset.column_names}. "
                + (
                    "Set label_column=... to the gold-label column."
                    if self.label_column in missing
                    else "Tokenize the dataset (input_ids) or pass text_columns=... and tokenizer=...."
                )
            )

    # ---- models ----------------------------------------------------------------------------------------------------

    def _model(self, index: int) -> Any:
        model = self._models.get(index)
        if model is None:
            model = load_checkpoint(self.checkpoints[index], task=self.task, **self.model_kwargs)
            if self.cache_models:
                self._models[index] = model
        if next(model.parameters()).device != self.device:
            model.to(self.device)
        return model.eval()

    # ---- batches ---------------------------------------------------------------------------------------------------

    def encode(self, batch: dict[str, list]) -> dict[str, Any]:
        """Tokenize (if `text_columns`) and pad a map batch into model inputs (tensors on CPU)."""
        if self.text_columns:
            texts = [batch[c] for c in self.text_columns]
            encoded = self.tokenizer(*texts, truncation=self.max_length is not None, max_length=self.max_length)
            rows = {k: encoded[k] for k in TOKEN_COLUMNS if k in encoded}
        else:
            rows = {k: batch[k] for k in TOKEN_COLUMNS if k in batch}
        if self.task == "causal_lm" and "labels" in batch:
            rows["labels"] = batch["labels"]
        pad = self.pad_token_id
        if pad is None and self.tokenizer is None:
            config = getattr(self._model(0), "config", None)
            pad = getattr(config, "pad_token_id", None)
        return pad_batch(rows, tokenizer=self.tokenizer, pad_token_id=0 if pad is None else int(pad),
                         pad_to_multiple_of=self.pad_to_multiple_of)

    def signals_for(self, model: Any, inputs: dict[str, Any], labels: Any) -> dict[str, Any]:
        """All `hf_influence.signals` of one checkpoint on one padded batch."""
        import torch

        from hf_influence.signals import causal_lm_signals, classification_signals

        device = self.device
        feed = {k: v.to(device) for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            logits = model(**feed).logits
        if self.task == "causal_lm":
            if "labels" in inputs:
                lm_labels = inputs["labels"]
            else:
                lm_labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
            return causal_lm_signals(logits, lm_labels.to(device))
        return classification_signals(logits, labels.to(device))

    def transform(self, values: Any) -> Any:
        """Map the averaged-per-checkpoint signal to the score (identity by default)."""
        return values

    def score_batch(self, batch: dict[str, list]) -> np.ndarray:
        import torch

        inputs = self.encode(batch)
        num_rows = inputs["input_ids"].shape[0]
        valid = torch.ones(num_rows, dtype=torch.bool)
        labels = None
        if self.task == "sequence_classification":
            if self.label_column in batch:
                raw = [(-1 if y is None else int(y)) for y in batch[self.label_column]]
                labels = torch.as_tensor(raw, dtype=torch.long)
            else:
                labels = torch.zeros(num_rows, dtype=torch.long)
            if self.needs_labels:
                valid = labels >= 0  # unlabelled rows (e.g. SNLI's -1) get NaN
            labels = labels.clamp_min(0)
        total = torch.zeros(num_rows, dtype=torch.float64)
        for index in range(len(self.checkpoints)):
            model = self._model(index)
            values = self.signals_for(model, inputs, labels)[self.signal]
            total += self.transform(values.double().cpu())
        scores = total / len(self.checkpoints)
        scores[~valid] = math.nan
        return scores.numpy()


def _is_path_like(ref: Any) -> bool:
    import os

    return isinstance(ref, (str, os.PathLike))


def _describe_tokenizer(tokenizer: Any) -> str | None:
    if tokenizer is None:
        return None
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _describe(ref: Any) -> str:
    if _is_path_like(ref):
        return str(ref)
    config = getattr(ref, "config", None)
    return getattr(config, "_name_or_path", "") or type(ref).__name__


@register_scorer(name="el2n")
class EL2NScorer(ModelOutputScorer):
    """EL2N: L2 norm of the error vector, ||softmax(f(x)) - onehot(y)||_2, averaged over checkpoints/runs.

    Paul, Ganguli, Dziugaite, "Deep Learning on a Data Diet", NeurIPS 2021, Def. 2.3. The paper averages over 10
    independent runs at an early checkpoint (epoch 20 on CIFAR; the SNLI study of Anand et al. 2023 used epoch 2):
    pass one checkpoint per run as a list. Eval mode, no augmentation. Polarity: higher = harder.

    Example:
        ```python
        >>> scorer = EL2NScorer(["run0/checkpoint-500", "run1/checkpoint-500"], batch_size=64)  # doctest: +SKIP
        >>> dataset = scorer(dataset)  # adds "el2n"  # doctest: +SKIP
        ```
    """

    name = "el2n"
    polarity = "higher_is_harder"
    definition = "||softmax(f(x)) - onehot(y)||_2, mean over checkpoints/runs (eval mode)"
    paper = "Paul, Ganguli, Dziugaite. Deep Learning on a Data Diet. NeurIPS 2021, Def. 2.3"
    signal = "el2n"


@register_scorer(name="loss")
class LossScorer(ModelOutputScorer):
    """Per-example cross-entropy -log p(y|x) (causal LM: mean over the example's label tokens), mean over checkpoints.

    Polarity: higher = harder.
    """

    name = "loss"
    polarity = "higher_is_harder"
    definition = "-log p(y|x) (causal LM: mean token cross-entropy), mean over checkpoints"
    paper = "Per-example training loss (e.g. Toneva et al., ICLR 2019, loss baseline)"
    signal = "loss"


@register_scorer(name="entropy")
class EntropyScorer(ModelOutputScorer):
    """Predictive entropy -sum_k p_k log p_k in nats (causal LM: mean over label tokens), mean over checkpoints.

    Uncertainty sampling score (Settles, "Active Learning Literature Survey", 2009, Eq. 2.3; Coleman et al., ICLR
    2020 use it for data selection). Polarity: higher = harder (more uncertain).
    """

    name = "entropy"
    polarity = "higher_is_harder"
    definition = "-sum_k p_k log p_k (nats), mean over checkpoints"
    paper = "Settles 2009, Active Learning Literature Survey, Eq. 2.3; Coleman et al., ICLR 2020"
    signal = "entropy"
    needs_labels = False


@register_scorer(name="perplexity")
class PerplexityScorer(ModelOutputScorer):
    """Causal-LM perplexity exp(mean token cross-entropy of the example), mean over checkpoints.

    Tokens counted are the example's label tokens (a `labels` column with -100 masking, or every non-pad token after
    the first). Examples with no label token get NaN. With several checkpoints the perplexities (not the losses) are
    averaged. Polarity: higher = harder. Reference: Marion et al., "When Less is More: Investigating Data Pruning for
    Pretraining LLMs at Scale", 2023 (perplexity-based pruning).
    """

    name = "perplexity"
    polarity = "higher_is_harder"
    definition = "exp(mean over label tokens of -log p(token | prefix)), mean over checkpoints"
    paper = "Marion et al. 2023, When Less is More: Investigating Data Pruning for Pretraining LLMs at Scale"
    signal = "loss"
    default_task = "causal_lm"
    supported_tasks = ("causal_lm",)

    def transform(self, values: Any) -> Any:
        return values.exp()


#: `InputNormScorer` reductions over an example's real tokens.
INPUT_NORM_REDUCTIONS = ("norm", "mean")


@register_scorer(name="input_norm")
class InputNormScorer(ModelOutputScorer):
    """Norm of an example's input embeddings: the baseline to check GraNd at initialisation against.

    Kirsch ("Does 'Deep Learning on a Data Diet' reproduce? Overall yes, but GraNd at Initialization does not", TMLR
    2023) could not reproduce GraNd at initialisation and found that it follows the input norm ||x||_2. For text the
    input is the sequence of word embeddings e(t) = E[t] of the example's real tokens (those with attention mask 1;
    `model.get_input_embeddings()`, before position embeddings and normalisation):

    - `reduce="norm"` (default): sqrt(sum_t ||e(t)||_2^2), the L2 norm of the flattened input, Kirsch's ||x||_2. It
      grows with the length.
    - `reduce="mean"`: (1/T) sum_t ||e(t)||_2, the mean token-embedding norm, free of the length.

    Label-free; averaged over checkpoints (the embeddings change with fine-tuning). Polarity: higher = harder, as
    GraNd. A high rank correlation of `grand` with `input_norm` says the GraNd ranking is mostly input norm.

    Args:
        reduce (`str`, defaults to `"norm"`): one of `INPUT_NORM_REDUCTIONS`.
        **kwargs: see `ModelOutputScorer`.
    """

    name = "input_norm"
    polarity = "higher_is_harder"
    definition = "sqrt(sum over real tokens t of ||E[t]||_2^2), the input word embeddings' norm, mean over checkpoints"
    paper = ("Kirsch. Does 'Deep Learning on a Data Diet' reproduce? Overall yes, but GraNd at Initialization does "
             "not. TMLR 2023 (input-norm baseline)")
    signal = "input_norm"
    needs_labels = False

    def __init__(self, model: Any, *, reduce: str = "norm", **kwargs: Any) -> None:
        if reduce not in INPUT_NORM_REDUCTIONS:
            raise ValueError(f"reduce={reduce!r}; choose one of {INPUT_NORM_REDUCTIONS}.")
        super().__init__(model, **kwargs)
        self.reduce = reduce
        if reduce == "mean":
            self.definition = "mean over real tokens t of ||E[t]||_2 (input word embeddings), mean over checkpoints"

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config.update(reduce=self.reduce)
        return config

    def signals_for(self, model: Any, inputs: dict[str, Any], labels: Any) -> dict[str, Any]:
        import torch

        embeddings = model.get_input_embeddings()
        if embeddings is None:
            raise ValueError(f"{type(model).__name__} has no input embeddings (get_input_embeddings() is None); "
                             "InputNormScorer needs a token-embedding model.")
        input_ids = inputs["input_ids"].to(self.device)
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask.to(self.device)
        with torch.no_grad():
            token_norms = torch.linalg.vector_norm(embeddings(input_ids).double(), dim=-1) * mask
        if self.reduce == "norm":
            values = token_norms.square().sum(dim=1).sqrt()
        else:
            values = token_norms.sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        return {"input_norm": values}
