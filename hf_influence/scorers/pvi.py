"""Pointwise V-information (Ethayarajh, Choi, Swayamdipta, ICML 2022, Def. 3; used by Anand et al., EMNLP 2023).

PVI(x -> y) = -log2 p_null(y | ∅) + log2 p_x(y | x), in bits, where `p_x` is a model fine-tuned on the inputs and
`p_null` a model of the same family fine-tuned on the same labels with **empty inputs** (build its training set with
`make_null_input_dataset`). Anand et al. train both for 2 epochs and average over 10 seeds (pass lists of
checkpoints; the log-probabilities are averaged over each list, which equals the mean PVI over paired seeds).

Polarity: higher = easier; low or negative PVI = hard, possibly mislabeled (METHODS.md B.1-B.2). To keep the hardest
examples with `select_by_score`, use `strategy="easiest"` or the column `"-pvi"`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..batching import TOKEN_COLUMNS
from .base import Scorer
from .model_outputs import LossScorer
from .registry import register_scorer


def make_null_input_dataset(dataset: Any, text_columns: str | Sequence[str], null_text: str = "") -> Any:
    """The training set of the null model: every `text_columns` value replaced by `null_text` (labels kept).

    Args:
        dataset (`datasets.Dataset`): the (untokenized) training set.
        text_columns (`str` or `list[str]`): the input text column(s), e.g. `["premise", "hypothesis"]`.
        null_text (`str`, defaults to `""`): the empty input.

    Returns:
        `datasets.Dataset`: same rows and columns; tokenize it the same way as the real training set.

    Raises:
        ValueError: if a text column is missing, or the dataset holds token columns (tokenize after nulling).

    Example:
        ```python
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"premise": ["A dog runs."], "hypothesis": ["An animal moves."], "label": [0]})
        >>> make_null_input_dataset(ds, ["premise", "hypothesis"])[0]
        {'premise': '', 'hypothesis': '', 'label': 0}
        ```
    """
    columns = [text_columns] if isinstance(text_columns, str) else list(text_columns)
    if not columns:
        raise ValueError("Pass at least one text column to empty.")
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"Text column(s) {missing} are not in the dataset (columns: {dataset.column_names}).")
    tokens = [c for c in TOKEN_COLUMNS if c in dataset.column_names]
    if tokens:
        raise ValueError(
            f"The dataset already holds token columns {tokens}, which would keep the real inputs. Build the null "
            "dataset from the untokenized text, then tokenize it."
        )

    def empty(batch: dict[str, list]) -> dict[str, list]:
        return {c: [null_text] * len(batch[c]) for c in columns}

    return dataset.map(empty, batched=True, desc="Emptying inputs for the PVI null model")


@register_scorer(name="pvi")
class PVIScorer(Scorer):
    """Pointwise V-information in bits: log2 p_x(y|x) - log2 p_null(y|∅) (Ethayarajh et al. 2022, Def. 3).

    Args:
        model: the model(s) fine-tuned on the real inputs (object, path, run folder or list; see `EL2NScorer`).
        null_model: the model(s) fine-tuned on empty inputs (`make_null_input_dataset`).
        tokenizer (*optional*): tokenizer of both models; needed with `text_columns`.
        text_columns (`str` or `list[str]`, *optional*): raw text column(s); the null input is the tokenization of
            `null_text` for each of them (e.g. `[CLS] [SEP] [SEP]` for a BERT pair).
        null_input_ids (`list[int]`, *optional*): the null input's token ids when the dataset is pre-tokenized (e.g.
            `tokenizer("", "")["input_ids"]`); `null_token_type_ids` likewise.
        null_text (`str`, defaults to `""`): the empty input text.
        max_length, model_kwargs, cache_models: as for `EL2NScorer`.
        **kwargs: `column`, `batch_size`, `label_column`, `device`.

    Polarity: higher = easier.

    Example:
        ```python
        >>> scorer = PVIScorer("runs/x/checkpoint-best", "runs/null/checkpoint-best", tokenizer=tok,
        ...                    text_columns=["premise", "hypothesis"])  # doctest: +SKIP
        >>> scored = scorer(snli_train)  # adds "pvi"  # doctest: +SKIP
        ```
    """

    name = "pvi"
    polarity = "higher_is_easier"
    definition = "log2 p_x(y|x) - log2 p_null(y|empty input), in bits (models fine-tuned with/without inputs)"
    paper = (
        "Ethayarajh, Choi, Swayamdipta. Understanding Dataset Difficulty with V-Usable Information. ICML 2022, "
        "Def. 3; on SNLI: Anand, Tan, Minakova, EMNLP 2023, App. B.1"
    )

    def __init__(
        self,
        model: Any,
        null_model: Any,
        *,
        tokenizer: Any = None,
        text_columns: str | Sequence[str] | None = None,
        null_input_ids: Sequence[int] | None = None,
        null_token_type_ids: Sequence[int] | None = None,
        null_text: str = "",
        max_length: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        cache_models: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if null_model is None:
            raise ValueError("PVIScorer needs a null_model fine-tuned on empty inputs (see make_null_input_dataset).")
        shared = dict(
            task="sequence_classification",
            tokenizer=tokenizer,
            max_length=max_length,
            model_kwargs=model_kwargs,
            cache_models=cache_models,
            label_column=self.label_column,
            batch_size=self.batch_size,
        )
        self.inputs_scorer = LossScorer(model, text_columns=text_columns, **shared)
        self.null_scorer = LossScorer(null_model, **shared)
        self.text_columns = self.inputs_scorer.text_columns
        self.null_text = null_text
        if null_input_ids is None:
            if tokenizer is None or not self.text_columns:
                raise ValueError(
                    "PVIScorer needs the null input: pass tokenizer=... and text_columns=... (the null input is the "
                    "tokenized empty text), or null_input_ids=tokenizer('')['input_ids'] for a pre-tokenized dataset."
                )
            # Batched (list) form, as `Dataset.map(batched=True)` tokenizes the null training set: for a pair this
            # keeps both separators ([CLS] [SEP] [SEP]); the single-string form drops an empty text_pair.
            encoded = tokenizer(*([[null_text]] * len(self.text_columns)))
            null_input_ids = encoded["input_ids"][0]
            if "token_type_ids" in encoded:
                null_token_type_ids = encoded["token_type_ids"][0]
        self.null_input_ids = [int(i) for i in null_input_ids]
        self.null_token_type_ids = None if null_token_type_ids is None else [int(i) for i in null_token_type_ids]
        if self.null_token_type_ids is not None and len(self.null_token_type_ids) != len(self.null_input_ids):
            raise ValueError("null_token_type_ids must have the same length as null_input_ids.")

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        inner = self.inputs_scorer.config_dict()
        config.update(
            checkpoints=inner["checkpoints"],
            null_checkpoints=self.null_scorer.config_dict()["checkpoints"],
            text_columns=self.text_columns,
            tokenizer=inner["tokenizer"],
            max_length=inner["max_length"],
            null_input_ids=self.null_input_ids,
            null_token_type_ids=self.null_token_type_ids,
            null_text=self.null_text,
            model_kwargs=inner["model_kwargs"],
        )
        return config

    def checkpoint_fingerprint(self) -> str:
        return self.inputs_scorer.checkpoint_fingerprint() + self.null_scorer.checkpoint_fingerprint()

    def validate(self, dataset: Any) -> None:
        super().validate(dataset)
        self.inputs_scorer.validate(dataset)

    def score_batch(self, batch: dict[str, list]) -> np.ndarray:
        for inner in (self.inputs_scorer, self.null_scorer):
            inner._active_device = self.device
        loss_x = self.inputs_scorer.score_batch(batch)  # nats, mean over checkpoints, NaN for unlabelled rows
        rows = len(batch[self.label_column])
        null_batch: dict[str, list] = {
            "input_ids": [self.null_input_ids] * rows,
            self.label_column: batch[self.label_column],
        }
        if self.null_token_type_ids is not None:
            null_batch["token_type_ids"] = [self.null_token_type_ids] * rows
        loss_null = self.null_scorer.score_batch(null_batch)
        return (loss_null - loss_x) / math.log(2.0)
