"""AUM threshold samples (Pleiss, Zhang, Elenberg, Weinberger, NeurIPS 2020, §3).

AUM itself, the mean over training updates of the logit margin `z_y - max_{k != y} z_k`, is recorded by the trainer
(`SignalStore.summary()["aum"]`, low = likely mislabeled). To turn it into a decision, Pleiss et al. relabel
`floor(N / (C + 1))` random examples to an extra, fake class `C` (0-based: the model gets `C + 1` outputs), train,
and take the 99th percentile of these deliberately mislabeled examples' AUM as the cutoff: a real example whose AUM
falls below it is flagged as mislabeled.

Threshold samples do not get a trustworthy AUM of their own; to score every example, run twice with disjoint
threshold sets (pass the first run's ids as `exclude_ids` to the second call).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from transformers.utils import logging

from .data import EXAMPLE_ID_COLUMN, validate_class_labels

logger = logging.get_logger(__name__)

THRESHOLD_COLUMN = "is_threshold_sample"


def add_threshold_samples(
    dataset: Any,
    num_labels: int,
    label_column: str = "label",
    seed: int = 0,
    *,
    id_column: str = EXAMPLE_ID_COLUMN,
    exclude_ids: Iterable[int] | None = None,
) -> tuple[Any, list[int]]:
    """Relabel `floor(N / (C + 1))` random examples to the fake class `C = num_labels`.

    Args:
        dataset (`datasets.Dataset`): a classification dataset with ids (`add_example_ids`) and labels in `[0, C)`.
        num_labels (`int`): the number of real classes `C`. Train the model with `num_labels + 1` outputs.
        label_column (`str`, defaults to `"label"`): the label column. Its feature becomes plain `int64` (a
            `ClassLabel` cannot hold the extra class).
        seed (`int`, defaults to 0): seed of the numpy `Generator`.
        id_column (`str`, defaults to `"example_id"`): the id column.
        exclude_ids (`Iterable[int]`, *optional*): ids never chosen (the threshold set of a previous run).

    Returns:
        `(datasets.Dataset, list[int])`: the relabelled dataset (with a bool column `is_threshold_sample`) and the
        sorted example ids of the threshold samples.

    Raises:
        ValueError: missing id/label column, labels outside `[0, C)`, or too few eligible examples.

    Example:
        ```python
        >>> ds, ids = add_threshold_samples(train, num_labels=3, seed=0)  # doctest: +SKIP
        >>> model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=4)  # doctest: +SKIP
        ```
    """
    import datasets

    for column in (id_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(
                f"Column {column!r} is not in the dataset (columns: {dataset.column_names}). "
                + ("Add ids first with add_example_ids(dataset)." if column == id_column else "Pass label_column=...")
            )
    if THRESHOLD_COLUMN in dataset.column_names:
        raise ValueError(
            f"The dataset already has {THRESHOLD_COLUMN!r}; start from the dataset without threshold samples."
        )
    labels = np.asarray(dataset[label_column])
    validate_class_labels(labels, num_labels, label_column)
    ids = np.asarray(dataset[id_column])
    count = len(labels) // (num_labels + 1)
    excluded = np.unique(np.asarray(list(exclude_ids or []), dtype=ids.dtype))
    eligible = np.flatnonzero(~np.isin(ids, excluded))
    if count == 0 or count > len(eligible):
        raise ValueError(
            f"Need {count} threshold samples (N // (C + 1) = {len(labels)} // {num_labels + 1}) but "
            f"{len(eligible)} examples are eligible. Use a larger dataset or fewer excluded ids."
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(eligible, size=count, replace=False))
    is_threshold = np.zeros(len(labels), dtype=bool)
    is_threshold[chosen] = True
    new_labels = np.where(is_threshold, num_labels, labels).astype(np.int64)

    features = dataset.features.copy()
    features[label_column] = datasets.Value("int64")
    features[THRESHOLD_COLUMN] = datasets.Value("bool")

    def apply(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        return {label_column: new_labels[indices].tolist(), THRESHOLD_COLUMN: is_threshold[indices].tolist()}

    out = dataset.map(
        apply,
        with_indices=True,
        batched=True,
        features=features,
        new_fingerprint=hashlib.blake2b(
            f"{dataset._fingerprint}|aum-threshold|{label_column}|{num_labels}|{seed}|{excluded.tolist()}".encode(),
            digest_size=16,
        ).hexdigest(),
        desc="Adding AUM threshold samples",
    )
    logger.info(f"add_threshold_samples: relabelled {count} of {len(labels)} examples to fake class {num_labels}.")
    return out, sorted(int(i) for i in ids[chosen])


def _as_series(aum_by_id: Any) -> Any:
    import pandas as pd

    if isinstance(aum_by_id, pd.DataFrame):
        if "aum" not in aum_by_id.columns:
            raise ValueError(f"The DataFrame has no 'aum' column (columns: {list(aum_by_id.columns)}).")
        series = aum_by_id["aum"]
    elif isinstance(aum_by_id, pd.Series):
        series = aum_by_id
    elif isinstance(aum_by_id, Mapping):
        series = pd.Series(aum_by_id, dtype=float)
    else:
        raise TypeError(
            "aum_by_id must be a pandas Series/DataFrame indexed by example_id (e.g. SignalStore.summary()) or a "
            f"dict id -> AUM, got {type(aum_by_id).__name__}."
        )
    return series.astype(float)


def aum_threshold(aum_by_id: Any, threshold_ids: Iterable[int], percentile: float = 99.0) -> float:
    """The `percentile`-th percentile (numpy linear interpolation) of the threshold samples' AUM.

    Raises:
        ValueError: if a threshold id has no AUM, or the percentile is outside [0, 100].
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}.")
    series = _as_series(aum_by_id)
    threshold_ids = list(threshold_ids)
    if not threshold_ids:
        raise ValueError("threshold_ids is empty; pass the ids returned by add_threshold_samples.")
    missing = [i for i in threshold_ids if i not in series.index]
    if missing:
        raise ValueError(
            f"{len(missing)} threshold ids have no AUM (e.g. {missing[:3]}). Pass the AUM of the run trained on the "
            "dataset returned by add_threshold_samples."
        )
    values = series.loc[threshold_ids].to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("Every threshold sample's AUM is NaN; check that training recorded margins.")
    return float(np.percentile(values, percentile))


def flag_mislabeled(aum_by_id: Any, threshold_ids: Iterable[int], percentile: float = 99.0) -> Any:
    """Flag examples whose AUM is strictly below the `percentile` of the threshold samples' AUM.

    Args:
        aum_by_id (`pandas.Series`, `pandas.DataFrame` with an `aum` column, or `dict`): AUM indexed by example id.
        threshold_ids (`Iterable[int]`): ids returned by `add_threshold_samples`.
        percentile (`float`, defaults to 99): Pleiss et al.'s cutoff percentile.

    Returns:
        `pandas.Series` of bool named `"mislabeled"`, indexed by example id, for every example that is not a
        threshold sample (NaN AUM -> False). `series.attrs["aum_threshold"]` holds the cutoff.
    """
    series = _as_series(aum_by_id)
    threshold_ids = list(threshold_ids)
    cutoff = aum_threshold(series, threshold_ids, percentile)
    real = series.drop(index=threshold_ids)
    flags = (real < cutoff).rename("mislabeled")
    flags.attrs["aum_threshold"] = cutoff
    logger.info(f"flag_mislabeled: {int(flags.sum())} of {len(flags)} examples below AUM {cutoff:.4g}.")
    return flags
