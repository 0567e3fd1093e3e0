"""Attach training-dynamics scores (the `SignalStore` summary) to a dataset by `example_id`.

Unlike the other scorers, `DynamicsScorer` adds **several** float32 columns in one `map` (one per summary column it
is given), because they all come from the same summary table; `card_entries()` gives one card entry per column
(`card_entry()` describes the whole group). The per-column definitions and polarities are:

| column | definition | polarity |
|---|---|---|
| `forgetting` | forgetting events, `inf` if never learned (Toneva et al., ICLR 2019) | higher = harder |
| `aum` | mean logit margin over updates (Pleiss et al., NeurIPS 2020, Eq. 1-2) | higher = easier |
| `confidence` | mean over epochs of p(y|x) (Swayamdipta et al., EMNLP 2020) | higher = easier |
| `variability` | population std over epochs of p(y|x) (Swayamdipta et al.) | higher = harder (ambiguous) |
| `correctness` | fraction of epochs correct (Swayamdipta et al.) | higher = easier |
| `mean_loss` | mean training loss over presentations | higher = harder |
| `el2n_epoch_<k>` | EL2N of epoch k's training passes (Paul et al., NeurIPS 2021, Def. 2.3) | higher = harder |
| `mean_grad_norm` | mean per-example gradient norm (GraNd-like, Paul et al. Def. 2.1) | higher = harder |
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers.utils import logging

from hf_influence.data import EXAMPLE_ID_COLUMN

from .base import Scorer
from .joins import count_unknown_ids
from .registry import register_scorer

logger = logging.get_logger(__name__)

_CARTOGRAPHY = "Swayamdipta et al. Dataset Cartography. EMNLP 2020, §2"
_CCS_CODE = "Zheng et al. Coverage-centric Coreset Selection for High Pruning Rates. ICLR 2023 (official code)"
_COLUMN_INFO: dict[str, tuple[str, str, str]] = {
    # column: (definition, paper, polarity)
    "forgetting": (
        "number of forgetting events (correct -> incorrect between consecutive evaluations); inf = never learned",
        "Toneva et al. An Empirical Study of Example Forgetting during Deep Neural Network Learning. ICLR 2019",
        "higher_is_harder",
    ),
    "aum": (
        "mean over training updates of the logit margin z_y - max_{k != y} z_k",
        "Pleiss et al. Identifying Mislabeled Data using the Area Under the Margin Ranking. NeurIPS 2020, Eq. 1-2",
        "higher_is_easier",
    ),
    "confidence": ("mean over epochs of p(y|x)", _CARTOGRAPHY, "higher_is_easier"),
    "variability": ("population std over epochs of p(y|x)", _CARTOGRAPHY, "higher_is_harder"),
    "correctness": ("fraction of epochs in which argmax = y", _CARTOGRAPHY, "higher_is_easier"),
    "el2n_accumulated": (
        "sum over the training presentations of the first epochs of ||softmax(f(x)) - onehot(y)||_2 (CCS code)",
        _CCS_CODE,
        "higher_is_harder",
    ),
    "prob_margin_accumulated": (
        "sum over the training presentations of the first epochs of the probability margin p_y - max_{k != y} p_k "
        "(the CCS code's accumulated_margin)",
        _CCS_CODE,
        "higher_is_easier",
    ),
    "mean_loss": ("mean training cross-entropy over presentations", "Per-example training loss", "higher_is_harder"),
    "mean_grad_norm": (
        "mean over presentations of ||grad_w loss(x, y)||_2",
        "Paul, Ganguli, Dziugaite. Deep Learning on a Data Diet. NeurIPS 2021, Def. 2.1 (GraNd, training passes)",
        "higher_is_harder",
    ),
}
_EL2N_EPOCH = re.compile(r"el2n_epoch_(\d+)")
#: Summary columns that `SignalStore.summary(burn_out=...)` restricts to the first epochs.
CARTOGRAPHY_COLUMNS = ("confidence", "variability", "correctness")


def column_info(column: str) -> tuple[str, str, str]:
    """(definition, paper, polarity) of a SignalStore summary column."""
    if column in _COLUMN_INFO:
        return _COLUMN_INFO[column]
    match = _EL2N_EPOCH.fullmatch(column)
    if match:
        return (
            f"||softmax(f(x)) - onehot(y)||_2 from the training forward passes of epoch {match.group(1)}",
            "Paul, Ganguli, Dziugaite. Deep Learning on a Data Diet. NeurIPS 2021, Def. 2.3",
            "higher_is_harder",
        )
    return (f"SignalStore summary column {column!r}", "hf_influence SignalStore", "higher_is_harder")


@register_scorer(name="dynamics")
class DynamicsScorer(Scorer):
    """Join SignalStore summary columns onto a dataset by example id (several float32 columns, NaN for missing ids).

    Args:
        store_or_summary (`SignalStore` or `pandas.DataFrame`): a store (its `summary()` is used) or a summary
            DataFrame indexed by `example_id` (or holding an `example_id` column).
        columns (`str` or `list[str]`, *optional*): the summary columns to attach (default: all numeric ones).
        id_column (`str`, defaults to `"example_id"`): the dataset's id column.
        prefix (`str`, defaults to `""`): prepended to each output column name (e.g. `"seed0_"`).
        **kwargs: `batch_size` (rows per map batch); `column` is not used (see `prefix`).

    Example:
        ```python
        >>> scored = DynamicsScorer(trainer.signal_store, columns=["aum", "forgetting"])(train)  # doctest: +SKIP
        ```
    """

    name = "dynamics"
    polarity = "higher_is_harder"
    definition = "training-dynamics summary columns joined by example_id (see card_entries() per column)"
    paper = "SignalStore summary: Toneva et al. 2019; Pleiss et al. 2020; Swayamdipta et al. 2020; Paul et al. 2021"
    shard_across_processes = False  # a join of precomputed values: nothing to split over the ranks of a job

    def __init__(
        self,
        store_or_summary: Any,
        columns: str | Sequence[str] | None = None,
        *,
        id_column: str = EXAMPLE_ID_COLUMN,
        prefix: str = "",
        **kwargs: Any,
    ) -> None:
        import pandas as pd

        super().__init__(**kwargs)
        summary = store_or_summary.summary() if hasattr(store_or_summary, "summary") else store_or_summary
        if not isinstance(summary, pd.DataFrame):
            raise TypeError(
                "DynamicsScorer expects a SignalStore or a summary DataFrame indexed by example_id, got "
                f"{type(store_or_summary).__name__}."
            )
        if summary.index.name != EXAMPLE_ID_COLUMN and EXAMPLE_ID_COLUMN in summary.columns:
            summary = summary.set_index(EXAMPLE_ID_COLUMN)
        if not summary.index.is_unique:
            raise ValueError("The summary index (example_id) has duplicated ids; pass one row per example.")
        numeric = [c for c in summary.columns if pd.api.types.is_numeric_dtype(summary[c])]
        if columns is None:
            columns = numeric
        columns = [columns] if isinstance(columns, str) else list(columns)
        unknown = [c for c in columns if c not in numeric]
        if unknown or not columns:
            raise ValueError(f"Unknown summary column(s) {unknown or columns}; valid numeric columns: {numeric}.")
        self.columns = columns
        self.prefix = prefix
        self.id_column = id_column
        self.cartography = dict(summary.attrs.get("cartography") or {})
        self.accumulated_epochs = dict(summary.attrs.get("accumulated_epochs") or {})
        self.summary = summary[columns].astype("float64")
        self.output_columns = [prefix + c for c in columns]
        self.column = ",".join(self.output_columns)
        self._summary_hash: str | None = None

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config.update(columns=self.columns, prefix=self.prefix, id_column=self.id_column)
        return config

    def checkpoint_fingerprint(self) -> str:
        if self._summary_hash is None:
            import pandas as pd

            hashed = pd.util.hash_pandas_object(self.summary, index=True).to_numpy()
            self._summary_hash = hashlib.blake2b(hashed.tobytes(), digest_size=16).hexdigest()
        return self._summary_hash

    def card_entries(self) -> list[dict[str, Any]]:
        """One card entry per attached column (what `hf_influence.cards` expects per score column)."""
        entries = []
        burn_out = self.cartography.get("burn_out")
        for source, output in zip(self.columns, self.output_columns):
            definition, paper, polarity = column_info(source)
            if source == "variability" and self.cartography.get("variability_ddof") == 1:
                definition = "bias-corrected sample std (ddof=1) over epochs of p(y|x)"
            if burn_out is not None and source in CARTOGRAPHY_COLUMNS:
                definition += f", first {burn_out} epoch(s) only (burn_out)"
            if source in self.accumulated_epochs:
                definition = definition.replace("the first epochs", f"the first {self.accumulated_epochs[source]} "
                                                                    "epoch(s)")
            entries.append(
                {
                    "name": source,
                    "column": output,
                    "definition": definition,
                    "paper": paper,
                    "polarity": polarity,
                    "config": {"source": "SignalStore.summary()", "id_column": self.id_column,
                               **({"cartography": self.cartography} if source in CARTOGRAPHY_COLUMNS
                                  and self.cartography else {})},
                }
            )
        return entries

    def validate(self, dataset: Any) -> None:
        super().validate(dataset)
        missing, total = count_unknown_ids(dataset, self.id_column, self.summary.index, "DynamicsScorer",
                                           "Add ids with add_example_ids before training and scoring.")
        if missing:
            logger.warning(
                f"DynamicsScorer: {missing} of {total} example ids have no training-dynamics summary; their "
                f"{self.output_columns} values are NaN."
            )
        self.num_missing = missing

    def output_features(self, dataset: Any, remove_columns: Any = None) -> Any:
        import datasets

        from ..polarity import score_feature

        removed = {remove_columns} if isinstance(remove_columns, str) else set(remove_columns or ())
        features = datasets.Features({k: v for k, v in dataset.features.items() if k not in removed})
        for entry in self.card_entries():  # each column with its own polarity
            features[entry["column"]] = score_feature(entry["polarity"])
        return features

    def score_batch(self, batch: dict[str, list]) -> np.ndarray:
        """A `[rows, columns]` array of summary values (NaN for ids without a summary)."""
        return self.summary.reindex(batch[self.id_column]).to_numpy(dtype=np.float32)

    def _map_fn(self, batch: dict[str, list], rank: int | None = None) -> dict[str, np.ndarray]:
        values = self.score_batch(batch)
        return {output: values[:, j] for j, output in enumerate(self.output_columns)}
