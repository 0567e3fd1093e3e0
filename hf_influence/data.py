"""Stable example ids and the collator that carries them through a ``Trainer``.

Every stage of hf_influence joins on the ``example_id`` column, never on row positions: the sampler order cannot be
reconstructed after the fact, and ``Dataset.select``/``shuffle``/``filter`` change positions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

EXAMPLE_ID_COLUMN = "example_id"


def add_example_ids(dataset, column: str = EXAMPLE_ID_COLUMN, overwrite: bool = False):
    """Add an int64 column ``column`` holding ``0..n-1`` to a ``datasets.Dataset``.

    Create ids before any shuffle, select or filter, so that the ids name the examples of the original split.

    Args:
        dataset (`datasets.Dataset`): the dataset to label.
        column (`str`, defaults to `"example_id"`): name of the id column.
        overwrite (`bool`, defaults to `False`): replace an existing column of that name.

    Returns:
        `datasets.Dataset`: a new dataset with the id column.

    Raises:
        ValueError: if the dataset is empty, or the column exists and ``overwrite`` is False.

    Example:
        ```python
        >>> from datasets import Dataset
        >>> ds = add_example_ids(Dataset.from_dict({"text": ["a", "b", "c"]}))
        >>> ds["example_id"]
        [0, 1, 2]
        ```
    """
    import datasets

    if len(dataset) == 0:
        raise ValueError("Cannot add example ids to an empty dataset: it has no rows. Check your filtering/splits.")
    if column in dataset.column_names:
        if not overwrite:
            raise ValueError(
                f"The dataset already has a column named {column!r}. Pass overwrite=True to replace it, or choose "
                "another column name."
            )
        dataset = dataset.remove_columns(column)
    ids = np.arange(len(dataset), dtype=np.int64)
    return dataset.add_column(column, ids, feature=datasets.Value("int64"))


def check_unique_ids(ids: Sequence[int] | np.ndarray, column: str = EXAMPLE_ID_COLUMN) -> None:
    """Raise a ValueError if ``ids`` holds duplicates (ids must name examples one-to-one)."""
    ids = np.asarray(ids)
    unique = np.unique(ids)
    if unique.size != ids.size:
        raise ValueError(
            f"Column {column!r} holds {ids.size - unique.size} duplicated ids; ids must be unique per example. "
            f"Recreate them with add_example_ids(dataset, overwrite=True) before any shuffle/select."
        )


class ExampleIdCollator:
    """Wrap any data collator so that the example id survives collation.

    The id is popped from each feature before the wrapped collator runs (so collators that do not know the column
    never see it) and added back to the batch as an int64 tensor of shape ``[batch_size]``.

    Args:
        collator (`Callable`): the collator to wrap, e.g. `DataCollatorWithPadding`.
        column (`str`, defaults to `"example_id"`): the id column.
    """

    def __init__(self, collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]], column: str = EXAMPLE_ID_COLUMN):
        self.collator = collator
        self.column = column

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if features and self.column not in features[0]:
            return self.collator(features)
        ids = []
        stripped = []
        for feature in features:
            feature = dict(feature)
            ids.append(int(feature.pop(self.column)))
            stripped.append(feature)
        batch = dict(self.collator(stripped))
        batch[self.column] = torch.tensor(ids, dtype=torch.long)
        return batch

    def __getattr__(self, name: str) -> Any:  # expose e.g. tokenizer/padding of the wrapped collator
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)


def validate_class_labels(labels: Sequence[int] | np.ndarray, num_labels: int, column: str = "label") -> None:
    """Check that classification labels are integers in ``[0, num_labels)``.

    Raises:
        ValueError: naming how many labels are out of range (with an example) and how to fix it.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(f"Column {column!r} is empty: the dataset has no examples.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Column {column!r} must hold integer class ids, got dtype {labels.dtype}. Map string labels to ids "
            "with dataset.class_encode_column(...)."
        )
    bad = (labels < 0) | (labels >= num_labels)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} labels in column {column!r} are outside [0, {num_labels}) (e.g. {labels[bad][0]}). "
            f"Drop unlabelled rows (SNLI marks them -1) or set the model's num_labels to cover every class."
        )
