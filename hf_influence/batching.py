"""Batching: the token and label columns a model takes, and dynamic padding of a batch of them.

One definition for the whole package: scorers pad their `Dataset.map` batches with `pad_batch`, the per-example
gradient code (`hf_influence.grads`) collates with it and finds labels under `LABEL_KEYS`, and
`resolve_pad_multiple` fixes the padded lengths for CUDA graphs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The tokenizer output columns a model takes (what a scorer pads and a text column is tokenized into).
TOKEN_COLUMNS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")

#: The batch keys that may hold the labels, in the order they are looked up.
LABEL_KEYS: tuple[str, ...] = ("labels", "label", "label_ids")

#: The fill value of each padded column other than `input_ids` (which takes the tokenizer's pad id).
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "labels": -100}

#: Padding multiple used with CUDA graphs when none is given: one captured graph per padded length, so keep them few.
GRAPH_PAD_MULTIPLE = 64


def resolve_pad_multiple(pad_to_multiple_of: int | None, cuda_graph: bool = False) -> int | None:
    """The padding multiple a scorer uses: `pad_to_multiple_of` checked, or `GRAPH_PAD_MULTIPLE` with `cuda_graph`.

    Raises:
        ValueError: if `pad_to_multiple_of` is not a positive integer.
    """
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of}.")
    if pad_to_multiple_of is None and cuda_graph:
        return GRAPH_PAD_MULTIPLE
    return pad_to_multiple_of


def pad_batch(
    rows: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    tokenizer: Any = None,
    pad_token_id: int = 0,
    keys: Iterable[str] = (*TOKEN_COLUMNS, "labels"),
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Dynamically pad token sequences of a batch to the batch's longest row (right padding).

    Args:
        rows (`dict[str, list]` or `list[dict]`): a `datasets` batch (columns of lists) or a list of rows. Must hold
            `input_ids`; `attention_mask`, `token_type_ids` and `labels` are padded when present.
        tokenizer (*optional*): its `pad_token_id` (or `eos_token_id` when it has none) is used for `input_ids`.
        pad_token_id (`int`, defaults to 0): pad id when no tokenizer is given.
        keys (`Iterable[str]`): which sequence columns to pad; other columns are ignored.
        pad_to_multiple_of (`int`, *optional*): round the padded length up to a multiple of this (fewer distinct
            shapes, e.g. for CUDA graphs).

    Returns:
        `dict[str, torch.Tensor]`: int64 tensors `[B, T]`, always with an `attention_mask` (1 on real tokens).
        Padded `labels` positions are -100.

    Example:
        ```python
        >>> pad_batch({"input_ids": [[5, 6, 7], [8]]})["attention_mask"].tolist()
        [[1, 1, 1], [1, 0, 0]]
        ```
    """
    import torch

    if isinstance(rows, Mapping):
        columns = {k: list(v) for k, v in rows.items()}
    else:
        rows = list(rows)
        columns = {k: [row[k] for row in rows] for k in (rows[0] if rows else {})}
    if "input_ids" not in columns:
        raise ValueError(
            f"pad_batch needs an 'input_ids' column, got {sorted(columns)}. Tokenize the dataset first or pass "
            "text_columns and a tokenizer to the scorer."
        )
    if tokenizer is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        pad_token_id = int(pad) if pad is not None else pad_token_id
    ids = columns["input_ids"]
    lengths = [len(x) for x in ids]
    width = max(lengths) if lengths else 0
    multiple = resolve_pad_multiple(pad_to_multiple_of)
    if multiple is not None:
        width = -(-width // multiple) * multiple
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        if key not in columns:
            continue
        fill = pad_token_id if key == "input_ids" else _PAD_VALUES.get(key, 0)
        tensor = torch.full((len(ids), width), fill, dtype=torch.long)
        for i, seq in enumerate(columns[key]):
            if len(seq) != lengths[i]:
                raise ValueError(f"Row {i}: {key!r} has length {len(seq)} but input_ids has length {lengths[i]}.")
            if len(seq):
                tensor[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        out[key] = tensor
    if "attention_mask" not in out:
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, length in enumerate(lengths):
            mask[i, :length] = 1
        out["attention_mask"] = mask
    return out
