"""Synthetic label noise for the noise experiments of Data Diet (Paul et al. 2021) and Anand et al. (2023).

Two modes (METHODS.md A.3, E.1):

- `"random"` (the Data Diet paper: "corrupt a random K% of labels, replacing them with a random label", after Zhang
  et al. 2017): each chosen example gets a label drawn uniformly from all `num_labels` classes, so about `1/C` of the
  chosen labels stay correct. `exclude_original=True` draws from the other `C - 1` classes instead.
- `"permute"` (the Data Diet code's `randomize_labels`): the labels of the chosen examples are permuted among
  themselves, which keeps the class marginals; again some labels stay correct.

The chosen rows are `floor(fraction * N)` positions drawn without replacement by a numpy `Generator(seed)`.
The returned dataset has two more columns: `original_label` (the clean label) and `is_noisy` (True where the label now
differs from the original; chosen rows whose label stayed the same are False, as Anand et al. count the actual
misannotation rate, METHODS.md B.2).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
from transformers.utils import logging

from .data import validate_class_labels

logger = logging.get_logger(__name__)

NOISE_MODES: tuple[str, ...] = ("random", "permute")


def noisy_labels(
    labels: np.ndarray,
    fraction: float,
    *,
    mode: str = "random",
    seed: int = 0,
    num_labels: int,
    exclude_original: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt a copy of `labels`; returns `(new_labels, chosen_positions)` (see `inject_label_noise`)."""
    if mode not in NOISE_MODES:
        raise ValueError(f"Unknown noise mode {mode!r}; valid modes are {', '.join(NOISE_MODES)}.")
    if isinstance(fraction, bool) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}.")
    if exclude_original and mode != "random":
        raise ValueError("exclude_original only applies to mode='random'.")
    if exclude_original and num_labels < 2:
        raise ValueError("exclude_original=True needs at least two classes.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    count = int(math.floor(fraction * len(labels) + 1e-9))
    chosen = np.sort(rng.choice(len(labels), size=count, replace=False))
    new = labels.copy()
    if mode == "random":
        if exclude_original:
            draws = rng.integers(0, num_labels - 1, size=count)
            new[chosen] = draws + (draws >= labels[chosen])  # skip the original class
        else:
            new[chosen] = rng.integers(0, num_labels, size=count)
    else:
        new[chosen] = labels[chosen][rng.permutation(count)]
    return new, chosen


def inject_label_noise(
    dataset: Any,
    fraction: float,
    mode: str = "random",
    seed: int = 0,
    label_column: str = "label",
    num_labels: int | None = None,
    *,
    exclude_original: bool = False,
) -> Any:
    """Return a copy of `dataset` with `fraction` of its labels corrupted, recording the clean labels.

    Args:
        dataset (`datasets.Dataset`): a classification dataset with integer labels in `[0, num_labels)`.
        fraction (`float`): share of rows to corrupt, in [0, 1] (`floor(fraction * N)` rows).
        mode (`str`, defaults to `"random"`): `"random"` (paper) or `"permute"` (official code); see module doc.
        seed (`int`, defaults to 0): seed of the numpy `Generator`.
        label_column (`str`, defaults to `"label"`): the label column.
        num_labels (`int`, *optional*): number of classes; defaults to the `ClassLabel` feature's, else max+1.
        exclude_original (`bool`, defaults to False): in `"random"` mode, never redraw the original label.

    Returns:
        `datasets.Dataset`: same rows and columns (label column replaced in place, its feature kept), plus
        `original_label` (int64) and `is_noisy` (bool).

    Raises:
        ValueError: unknown mode, fraction outside [0, 1], missing label column, labels outside `[0, num_labels)`,
            or `original_label`/`is_noisy` already present (noise already injected).

    Example:
        ```python
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"label": [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]})
        >>> noisy = inject_label_noise(ds, 0.3, mode="permute", seed=1)
        >>> sum(noisy["is_noisy"]) <= 3
        True
        ```
    """
    import datasets

    if label_column not in dataset.column_names:
        raise ValueError(
            f"Label column {label_column!r} is not in the dataset (columns: {dataset.column_names}). "
            "Pass label_column=<name>."
        )
    clash = [c for c in ("original_label", "is_noisy") if c in dataset.column_names]
    if clash:
        raise ValueError(
            f"The dataset already has {clash}: noise was injected before. Start from the clean dataset (its "
            "'original_label' column holds the clean labels)."
        )
    labels = np.asarray(dataset[label_column])
    feature = dataset.features[label_column]
    if num_labels is None:
        num_labels = int(feature.num_classes) if isinstance(feature, datasets.ClassLabel) else int(labels.max()) + 1
    validate_class_labels(labels, num_labels, label_column)
    new, chosen = noisy_labels(
        labels, fraction, mode=mode, seed=seed, num_labels=num_labels, exclude_original=exclude_original
    )
    flipped = new != labels
    logger.info(
        f"inject_label_noise: {len(chosen)} rows chosen ({mode}), {int(flipped.sum())} labels actually changed "
        f"({flipped.mean():.2%} of {len(labels)})."
    )
    features = dataset.features.copy()
    features["original_label"] = datasets.Value("int64")
    features["is_noisy"] = datasets.Value("bool")
    config = {"fraction": fraction, "mode": mode, "seed": seed, "label_column": label_column,
              "num_labels": num_labels, "exclude_original": exclude_original}
    fingerprint = hashlib.blake2b(
        (str(dataset._fingerprint) + json.dumps(config, sort_keys=True)).encode(), digest_size=16
    ).hexdigest()

    def apply(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        return {
            label_column: new[indices].tolist(),
            "original_label": labels[indices].tolist(),
            "is_noisy": flipped[indices].tolist(),
        }

    return dataset.map(
        apply,
        with_indices=True,
        batched=True,
        features=features,
        new_fingerprint=fingerprint,
        desc=f"Injecting {mode} label noise ({fraction:.0%})",
    )
