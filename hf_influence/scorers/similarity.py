"""Gradient similarity to a target set as a score column: TracIn train-to-test influence or LESS's cosine."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers.utils import logging

from ..data import EXAMPLE_ID_COLUMN
from .base import Scorer
from .joins import count_unknown_ids
from .registry import register_scorer

logger = logging.get_logger(__name__)


@register_scorer(name="gradient_similarity")
class GradientSimilarityScorer(Scorer):
    """Each training example's gradient similarity to a query (target) set, joined onto the dataset by example id.

    `score_i = reduce_j sum_c eta_c sim(g_i^c, q_j^c)` over projected per-example gradients (see
    `hf_influence.grads.similarity`): the dot product is TracIn's influence of training example `i` on query `j`
    summed over checkpoints (Pruthi et al., NeurIPS 2020, TracInCP); `normalize=True` takes the cosine, as LESS does
    to select instruction data for a target task (Xia et al., ICML 2024). Polarity: higher = more aligned with the
    target set, with no hard/easy reading (the column carries no polarity): keep the most similar with
    `select_by_score(dataset, "gradient_similarity", keep, "highest")`.

    For classification, a gradient's direction follows its gold label first, so against a target set of mixed labels
    the mean cosine ranks whole classes before examples: select with `class_balanced=True` (measured on SNLI in
    recipes/README.md: the plain top 55% held no "neutral" pair; class-balanced, it beat class-balanced random).

    Args:
        train_features (path or list of paths): the training set's folder(s) from `write_projected_gradients`, one
            per checkpoint (the dataset you score must carry the same `example_id`s).
        query_features (path or list of paths): the target set's folder(s), one per checkpoint, same projector.
        weights (`float` or list, *optional*): `eta_c` per checkpoint (default 1).
        normalize (`bool`, defaults to `False`): cosine instead of the dot product.
        reduce (`str`, defaults to `"mean"`): `"mean"` or `"max"` over the queries.
        id_column (`str`, defaults to `"example_id"`): the dataset's id column.
        **kwargs: `column`, `batch_size`, `device` (where the similarities are computed, once, at construction).

    Example:
        ```python
        >>> write_projected_gradients(model, train, "feats/train", params=r"lora_")  # doctest: +SKIP
        >>> write_projected_gradients(model, target, "feats/target", params=r"lora_")  # doctest: +SKIP
        >>> train = GradientSimilarityScorer("feats/train", "feats/target", normalize=True)(train)  # doctest: +SKIP
        ```
    """

    name = "gradient_similarity"
    polarity = None  # similarity to a target set has no hard/easy reading: select with "highest" / "lowest"
    definition = "mean over query examples j of sum_c eta_c <g_i^c, q_j^c> (projected per-example gradients)"
    paper = ("Pruthi et al. Estimating Training Data Influence by Tracing Gradient Descent. NeurIPS 2020 (TracInCP); "
             "cosine form: Xia et al. LESS. ICML 2024")
    shard_across_processes = False  # a join of precomputed values: nothing to split over the ranks of a job

    def __init__(
        self,
        train_features: Any,
        query_features: Any,
        *,
        weights: float | Sequence[float] | None = None,
        normalize: bool = False,
        reduce: str = "mean",
        id_column: str = EXAMPLE_ID_COLUMN,
        **kwargs: Any,
    ) -> None:
        from ..grads.similarity import gradient_similarity

        super().__init__(**kwargs)
        self.scores = gradient_similarity(train_features, query_features, weights=weights, normalize=normalize,
                                          reduce=reduce, device=self._requested_device)
        self.similarity = dict(self.scores.attrs["gradient_similarity"])
        self.id_column = id_column
        self.definition = (f"{reduce} over query examples j of sum_c eta_c "
                           f"{'cos(g_i^c, q_j^c)' if normalize else '<g_i^c, q_j^c>'} (projected per-example "
                           "gradients)")
        self._hash: str | None = None

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config.update(id_column=self.id_column, **self.similarity)
        return config

    def checkpoint_fingerprint(self) -> str:
        if self._hash is None:
            hasher = hashlib.blake2b(digest_size=16)
            hasher.update(self.scores.index.to_numpy().tobytes())
            hasher.update(self.scores.to_numpy().tobytes())
            self._hash = hasher.hexdigest()
        return self._hash

    def validate(self, dataset: Any) -> None:
        super().validate(dataset)
        missing, total = count_unknown_ids(dataset, self.id_column, self.scores.index, "GradientSimilarityScorer",
                                           "Add ids with add_example_ids before writing the features and scoring.")
        if missing == total:
            raise ValueError(f"None of the dataset's {total} example ids has training features; score the dataset "
                             "whose features were written (same example ids).")
        if missing:
            logger.warning(f"GradientSimilarityScorer: {missing} of {total} example ids have no training features; "
                           f"their {self.column!r} values are NaN.")

    def score_batch(self, batch: dict[str, list]) -> np.ndarray:
        return self.scores.reindex(batch[self.id_column]).to_numpy(dtype=np.float32)
