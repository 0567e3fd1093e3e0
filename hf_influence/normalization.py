"""Z-score normalisation of score columns, over the whole dataset or within each gold class.

Anand et al. (EMNLP 2023, §2.3 and App. B.1) compare **class-normalised** scores, `(s - mu_class) / sigma_class`
with the statistics of the example's gold class (the original VoG normalisation, Agarwal et al. CVPR 2022), and
**dataset-normalised** scores, `(s - mu) / sigma` over all examples. Class normalisation protects each class from
being pruned away on balanced data; dataset normalisation keeps small/complex classes on imbalanced data (METHODS.md
B.5). Both use the population standard deviation (`ddof=0`). NaN values are ignored by the statistics and stay NaN;
infinite values are refused (replace them first, e.g. forgetting's `inf` for never-learned examples).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers.utils import logging

from .polarity import get_polarity, score_feature

logger = logging.get_logger(__name__)


def _as_values(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one number per example, got shape {array.shape}.")
    if np.isinf(array).any():
        raise ValueError(
            f"{name} holds {int(np.isinf(array).sum())} infinite values; z-scores need finite values. Replace them "
            "first (e.g. forgetting=inf for never-learned examples -> a large finite count)."
        )
    if np.isnan(array).all():
        raise ValueError(f"{name} is all NaN: nothing to normalise.")
    return array


def _zscore(array: np.ndarray, what: str) -> np.ndarray:
    valid = ~np.isnan(array)
    mean = array[valid].mean()
    std = array[valid].std()
    out = np.full_like(array, np.nan)
    if std == 0:
        logger.warning(f"{what} has zero standard deviation; its z-scores are set to 0.")
        out[valid] = 0.0
    else:
        out[valid] = (array[valid] - mean) / std
    return out


def dataset_zscore(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Dataset-normalised z-scores `(s - mean) / std` (population std, NaN ignored and kept).

    Args:
        values (`Sequence[float]`): one score per example.

    Returns:
        `np.ndarray` (float64): the z-scores; all zeros (with a warning) when every value is equal.

    Example:
        ```python
        >>> dataset_zscore([1.0, 2.0, 3.0]).round(4).tolist()
        [-1.2247, 0.0, 1.2247]
        ```
    """
    return _zscore(_as_values(values), "The score")


def class_zscore(values: Sequence[float] | np.ndarray, labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Class-normalised z-scores: each value standardised with the mean and population std of its own class.

    Args:
        values (`Sequence[float]`): one score per example.
        labels (`Sequence`): the gold class of each example (any hashable values).

    Returns:
        `np.ndarray` (float64): the z-scores; a class whose values are all equal gets zeros (with a warning).

    Example:
        ```python
        >>> class_zscore([1.0, 3.0, 10.0, 20.0], [0, 0, 1, 1]).tolist()
        [-1.0, 1.0, -1.0, 1.0]
        ```
    """
    array = _as_values(values)
    labels = np.asarray(labels)
    if labels.shape != array.shape:
        raise ValueError(f"Got {array.size} values but {labels.size} labels; pass one label per value.")
    out = np.full_like(array, np.nan)
    for label in np.unique(labels):
        members = labels == label
        if np.isnan(array[members]).all():
            continue
        out[members] = _zscore(array[members], f"Class {label.item()!r}")
    return out


def minmax_scale(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Min-max scaling to [0, 1] (NaN ignored and kept; constant input gives zeros with a warning).

    DEALRec's official code min-max normalises the influence and effort scores before adding them (METHODS.md C.4).
    """
    array = _as_values(values)
    valid = ~np.isnan(array)
    low, high = array[valid].min(), array[valid].max()
    out = np.full_like(array, np.nan)
    if high == low:
        logger.warning("The score is constant; its min-max scaled values are set to 0.")
        out[valid] = 0.0
    else:
        out[valid] = (array[valid] - low) / (high - low)
    return out


NORMALIZATIONS: tuple[str, ...] = ("dataset", "class", "minmax")


def add_normalized_column(
    dataset: Any,
    column: str,
    *,
    by: str = "dataset",
    label_column: str = "label",
    output_column: str | None = None,
    overwrite: bool = False,
) -> Any:
    """Add a float32 column with the normalised values of `column`.

    Args:
        dataset (`datasets.Dataset`): the scored dataset.
        column (`str`): the score column.
        by (`str`, defaults to `"dataset"`): `"dataset"` (`dataset_zscore`), `"class"` (`class_zscore` with
            `label_column`) or `"minmax"` (`minmax_scale`).
        label_column (`str`, defaults to `"label"`): the gold class, for `by="class"`.
        output_column (`str`, *optional*): defaults to `"<column>_dataset_z"`, `"<column>_class_z"` or
            `"<column>_minmax"`.
        overwrite (`bool`, defaults to False): replace an existing output column.

    Returns:
        `datasets.Dataset`: the dataset with the new column (the input is left untouched).

    Example:
        ```python
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"vog": [1.0, 3.0, 10.0, 20.0], "label": [0, 0, 1, 1]})
        >>> list(add_normalized_column(ds, "vog", by="class")["vog_class_z"])
        [-1.0, 1.0, -1.0, 1.0]
        ```
    """
    if by not in NORMALIZATIONS:
        raise ValueError(f"Unknown normalisation by={by!r}; valid values are {', '.join(NORMALIZATIONS)}.")
    if column not in dataset.column_names:
        raise ValueError(f"Column {column!r} is not in the dataset; columns are {dataset.column_names}.")
    suffix = {"dataset": "dataset_z", "class": "class_z", "minmax": "minmax"}[by]
    output_column = output_column or f"{column}_{suffix}"
    if output_column in dataset.column_names:
        if not overwrite:
            raise ValueError(f"Column {output_column!r} already exists; pass overwrite=True or another output_column.")
        if output_column == column:
            raise ValueError("output_column must differ from the input column; choose another name.")
    values = np.asarray(dataset[column], dtype=np.float64)
    if by == "class":
        if label_column not in dataset.column_names:
            raise ValueError(
                f"by='class' needs the label column {label_column!r}, which is not in the dataset "
                f"(columns: {dataset.column_names}). Pass label_column=<name>."
            )
        normalized = class_zscore(values, np.asarray(dataset[label_column]))
    elif by == "dataset":
        normalized = dataset_zscore(values)
    else:
        normalized = minmax_scale(values)
    if output_column in dataset.column_names:
        dataset = dataset.remove_columns(output_column)
    polarity = get_polarity(dataset, column)  # z-scores and min-max are increasing maps: the polarity carries over
    return dataset.add_column(output_column, normalized.astype(np.float32), feature=score_feature(polarity))


def dataset_zscore_column(dataset: Any, column: str, **kwargs: Any) -> Any:
    """`add_normalized_column(dataset, column, by="dataset", ...)`."""
    return add_normalized_column(dataset, column, by="dataset", **kwargs)


def class_zscore_column(dataset: Any, column: str, *, label_column: str = "label", **kwargs: Any) -> Any:
    """`add_normalized_column(dataset, column, by="class", label_column=...)`."""
    return add_normalized_column(dataset, column, by="class", label_column=label_column, **kwargs)
