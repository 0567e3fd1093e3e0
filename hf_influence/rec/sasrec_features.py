"""SASRec input features: user rows -> item-index sequences (`build_sasrec_dataset`), uniform negative sampling
(`sample_negatives`) and batching (`SASRecCollator`: left-padding plus one negative item per target position).

Every SASRec sequence is laid out the same way (`left_pad`): the last ``max_len`` item indices, left-padded with 0, so
the most recent item sits at the last position. Negatives are drawn at every call (the authors resample them in every
``__getitem__``) or, with ``SASRecCollator(resample=False)``, as a fixed function of ``(seed, example_id)`` so that
per-sample losses and gradients are reproducible whatever the batching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import EXAMPLE_ID_COLUMN
from .data import ItemVocab
from .sasrec_modeling import SASRecConfig


def build_sasrec_dataset(
    rows,
    vocab: ItemVocab | SASRecConfig,
    *,
    for_training: bool = True,
    max_len: int | None = None,
    keep_columns: Sequence[str] = (EXAMPLE_ID_COLUMN, "user_id"),
):
    """Turn user rows (`load_dealrec_folder` splits) into SASRec features of item indices.

    Training (``for_training=True``; the authors' ``SeqDataset``): the user's sequence ``s = history + targets``
    (for a ``train`` row: all the user's training items); ``input_ids = s[:-1]`` and ``labels = s[1:]`` (the next item
    at every position), both keeping the last ``max_len`` positions. Evaluation: ``input_ids`` = the last ``max_len``
    history items and ``target_ids`` = the targets. Both add ``seen_item_ids`` (the user's whole sequence, unique),
    which `SASRecCollator` excludes from negatives and `evaluate_sasrec` can exclude from rankings. Sequences are
    stored unpadded; the collator left-pads to ``max_len``.

    Args:
        rows (`datasets.Dataset`): user rows with ``history_item_ids`` and ``target_item_ids``.
        vocab (`ItemVocab` or `SASRecConfig`): maps raw item ids to indices.
        for_training (`bool`, defaults to `True`): build training or evaluation features.
        max_len (`int`, *optional*): positions kept (defaults to the config's ``max_seq_length`` or 50).
        keep_columns (`Sequence[str]`): row columns to carry over when present (ids for joins).

    Returns:
        `datasets.Dataset` with ``input_ids``, ``seen_item_ids`` and ``labels`` (training) or ``target_ids`` (eval).
    """
    import datasets

    if isinstance(vocab, SASRecConfig):
        max_len = max_len or vocab.max_seq_length
        vocab = vocab.item_vocab()
    max_len = max_len or 50
    for column in ("history_item_ids", "target_item_ids"):
        if column not in rows.column_names:
            raise ValueError(
                f"The rows have no {column!r} column (columns: {rows.column_names}); pass user rows from "
                "load_dealrec_folder or load_movielens_1m."
            )

    def convert(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "seen_item_ids": [], "labels" if for_training else "target_ids": []}
        for history, targets in zip(batch["history_item_ids"], batch["target_item_ids"]):
            history, targets = vocab.encode(history), vocab.encode(targets)
            if for_training:
                sequence = history + targets
                out["input_ids"].append(sequence[:-1][-max_len:])
                out["labels"].append(sequence[1:][-max_len:])
                out["seen_item_ids"].append(sorted(set(sequence)))
            else:
                out["input_ids"].append(history[-max_len:])
                out["target_ids"].append(targets)
                out["seen_item_ids"].append(sorted(set(history)))
        return out

    ids = datasets.Sequence(datasets.Value("int64"))
    features = {name: rows.features[name] for name in keep_columns if name in rows.column_names}
    features.update({"input_ids": ids, "seen_item_ids": ids, ("labels" if for_training else "target_ids"): ids})
    drop = [name for name in rows.column_names if name not in keep_columns]
    return rows.map(
        convert,
        batched=True,
        remove_columns=drop,
        features=datasets.Features(features),
        desc="SASRec features",
    )


def sample_negatives(
    num_positions: int, exclude: Sequence[int] | np.ndarray, num_items: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``num_positions`` item indices uniformly from ``1..num_items`` outside ``exclude`` (with replacement)."""
    exclude = np.unique(np.asarray(exclude, dtype=np.int64))
    exclude = exclude[(exclude >= 1) & (exclude <= num_items)]
    if exclude.size >= num_items:
        raise ValueError(
            f"Cannot draw a negative: the user's sequence covers all {num_items} items. Use a larger catalogue."
        )
    draws = rng.integers(1, num_items + 1, size=num_positions)
    bad = np.isin(draws, exclude)
    while bad.any():  # rejection sampling, as the authors' neg_sample
        draws[bad] = rng.integers(1, num_items + 1, size=int(bad.sum()))
        bad = np.isin(draws, exclude)
    return draws


def left_pad(values: Sequence[int], max_len: int) -> list[int]:
    """The last ``max_len`` ids, left-padded with 0 to ``max_len`` (how every SASRec input sequence is laid out)."""
    values = [int(v) for v in values][-max_len:]
    return [0] * (max_len - len(values)) + values


@dataclass
class SASRecCollator:
    """Left-pad SASRec features to ``max_len`` and draw one negative item per target position.

    Args:
        num_items (`int`): catalogue size (negatives are drawn from ``1..num_items``).
        max_len (`int`, defaults to 50): padded length (the model's ``max_seq_length``: positions are absolute).
        seed (`int`, *optional*): seed of the negative sampler. ``None`` draws the seed from torch's global RNG when
            the collator is built (so ``transformers.set_seed`` beforehand makes runs reproducible).
        resample (`bool`, defaults to `True`): ``True`` draws fresh negatives at every call (the authors' behaviour);
            ``False`` derives each row's negatives from ``(seed, example_id)`` only, so a user gets the same negatives
            in every batch and epoch (needed for exact per-sample gradient comparisons and influence scoring).
        example_id_column (`str`, defaults to `"example_id"`): kept in the batch as a LongTensor when present and
            ``keep_example_id`` is True (a plain `Trainer` would pass it to ``forward``: use False there; the
            `ScoringTrainer` pops it before the forward pass).
        keep_example_id (`bool`, defaults to `True`): see above.

    Features need ``input_ids`` (and ``labels`` for training). Negatives avoid ``seen_item_ids`` when present, else the
    items of ``input_ids`` and ``labels`` (keep ``seen_item_ids`` by passing ``remove_unused_columns=False``).
    Evaluation features (with ``target_ids``) are padded without negatives.
    """

    num_items: int
    max_len: int = 50
    seed: int | None = None
    resample: bool = True
    example_id_column: str = EXAMPLE_ID_COLUMN
    keep_example_id: bool = True
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.seed is None:
            self.seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        self._rng = np.random.default_rng(self.seed)

    def _row_rng(self, feature: Mapping[str, Any]) -> np.random.Generator:
        if self.resample:
            return self._rng
        if self.example_id_column in feature:
            return np.random.default_rng([self.seed, int(feature[self.example_id_column])])
        key = [int(i) for i in feature["input_ids"]] + [int(i) for i in feature["labels"]]
        return np.random.default_rng([self.seed, len(key), *key])

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("SASRecCollator got an empty list of features.")
        batch: dict[str, Any] = {"input_ids": [left_pad(f["input_ids"], self.max_len) for f in features]}
        if "labels" in features[0]:
            labels, negatives = [], []
            for feature in features:
                padded = left_pad(feature["labels"], self.max_len)
                n_targets = sum(1 for v in padded if v > 0)
                if "seen_item_ids" in feature:
                    exclude = feature["seen_item_ids"]
                else:
                    exclude = list(feature["input_ids"]) + list(feature["labels"])
                drawn = sample_negatives(n_targets, exclude, self.num_items, self._row_rng(feature))
                negative = [0] * self.max_len
                slots = [t for t, v in enumerate(padded) if v > 0]
                for slot, item in zip(slots, drawn.tolist()):
                    negative[slot] = item
                labels.append(padded)
                negatives.append(negative)
            batch["labels"] = labels
            batch["neg_ids"] = negatives
        out = {name: torch.tensor(value, dtype=torch.long) for name, value in batch.items()}
        if self.keep_example_id and self.example_id_column in features[0]:
            out[self.example_id_column] = torch.tensor(
                [int(f[self.example_id_column]) for f in features], dtype=torch.long
            )
        return out
