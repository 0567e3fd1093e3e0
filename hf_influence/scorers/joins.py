"""Helpers of the scorers that join precomputed per-example values by example id (training dynamics, gradient
similarity) instead of running a model on each batch."""

from __future__ import annotations

from typing import Any

import numpy as np


def count_unknown_ids(dataset: Any, id_column: str, known_ids: Any, scorer: str, fix: str) -> tuple[int, int]:
    """For scorers that join precomputed values by example id: `(ids of dataset without a value, all ids)`.

    Raises:
        ValueError: if `dataset` has no `id_column`, naming the scorer and `fix` (how to add the ids).
    """
    if id_column not in dataset.column_names:
        raise ValueError(f"{scorer} joins on {id_column!r}, which is not in the dataset (columns: "
                         f"{dataset.column_names}). {fix}")
    ids = np.asarray(dataset[id_column])
    return int((~np.isin(ids, np.asarray(known_ids))).sum()), len(ids)
