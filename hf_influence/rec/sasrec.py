"""SASRec, the small sequential recommender DEALRec uses as its surrogate (METHODS.md C.2): the one import path for it.

The code lives in one module per concept; every name is re-exported here, so ``from hf_influence.rec.sasrec import
...`` (and ``from hf_influence.rec import ...``) keeps working:

- `hf_influence.rec.sasrec_modeling`: `SASRecConfig`, `SASRecModel` (a HF `PreTrainedModel`, registered with
  `AutoConfig`/`AutoModel` as model type "sasrec"), its layers and output, `sasrec_per_sample_loss`, the DEALRec
  influence scope `INFLUENCE_SCOPE`;
- `hf_influence.rec.sasrec_features`: user rows -> item-index features (`build_sasrec_dataset`), negative sampling
  (`sample_negatives`) and batching (`SASRecCollator`, `left_pad`);
- `hf_influence.rec.sasrec_training`: `train_sasrec` (HF `Trainer`, the authors' optimiser settings),
  `rank_items` and `evaluate_sasrec` (full-ranking Recall@K / NDCG@K).

Example:
    ```python
    >>> from hf_influence.rec.sasrec import SASRecConfig, SASRecModel, evaluate_sasrec, train_sasrec
    >>> result = train_sasrec(users["train"], valid_rows=users["valid"], output_dir="sasrec")  # doctest: +SKIP
    >>> evaluate_sasrec(result.model, users["test"])  # doctest: +SKIP
    ```
"""

from __future__ import annotations

from .sasrec_features import SASRecCollator, build_sasrec_dataset, left_pad, sample_negatives
from .sasrec_modeling import (
    INFLUENCE_SCOPE,
    LOSS_REDUCTIONS,
    SASRecConfig,
    SASRecEncoder,
    SASRecFeedForward,
    SASRecLayer,
    SASRecModel,
    SASRecOutput,
    SASRecPreTrainedModel,
    SASRecSelfAttention,
    sasrec_per_sample_loss,
)
from .sasrec_training import SASRecTrainingResult, evaluate_sasrec, rank_items, train_sasrec

__all__ = [
    "INFLUENCE_SCOPE",
    "LOSS_REDUCTIONS",
    "SASRecCollator",
    "SASRecConfig",
    "SASRecEncoder",
    "SASRecFeedForward",
    "SASRecLayer",
    "SASRecModel",
    "SASRecOutput",
    "SASRecPreTrainedModel",
    "SASRecSelfAttention",
    "SASRecTrainingResult",
    "build_sasrec_dataset",
    "evaluate_sasrec",
    "left_pad",
    "rank_items",
    "sample_negatives",
    "sasrec_per_sample_loss",
    "train_sasrec",
]
