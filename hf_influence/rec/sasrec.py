"""SASRec, the small sequential recommender DEALRec uses as its surrogate (METHODS.md C.2), as a HF `PreTrainedModel`.

Self-Attentive Sequential Recommendation (Kang & McAuley, ICDM 2018) in the configuration of the DEALRec code
(Lin et al., SIGIR 2024): item + position embeddings -> LayerNorm -> dropout -> 2 blocks of causal self-attention
(2 heads, output projection, residual, LayerNorm) and a position-wise feed-forward layer (residual, LayerNorm); hidden
size 64, GELU, dropout 0.5, init N(0, 0.02), sequences of the last 50 items, left-padded with item index 0.

Training objective (the authors' ``cross_entropy``): at every non-padding position t the next item is the positive and
one item drawn uniformly from the catalogue, outside the user's training sequence, is the negative;
``l_t = -log sigmoid(<h_t, e_pos>) - log(1 - sigmoid(<h_t, e_neg>))``. The per-sample loss is the mean of ``l_t`` over
the user's positions; the batch loss is the mean over all positions of the batch (``loss_reduction="tokens"``, as the
authors) or the mean of the per-sample losses (``"samples"``). Negatives are drawn by `SASRecCollator` at every call
(the authors resample them in every ``__getitem__``) or, with ``resample=False``, as a fixed function of
``(seed, example_id)`` so that per-sample losses and gradients are reproducible whatever the batching.

The model type "sasrec" is registered with `AutoConfig`/`AutoModel`, so `AutoModel.from_pretrained(dir)` loads a saved
surrogate. Module names follow the authors' code so that their influence scope,
``item_encoder.layer.1.attention.dense.weight`` (the last block's attention output projection, 64 x 64), names the
same tensor here.

Known differences from the authors' code (documented, not bugs): the feed-forward layer uses ``hidden_act`` once
(their module hard-codes ReLU after both 1x1 convolutions although their config says GELU); the padding row of the item
embedding starts at zero (HF convention; it never receives gradient and never reaches a loss or a ranking).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, TrainerCallback
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput, logging

from ..data import EXAMPLE_ID_COLUMN
from .data import ItemVocab
from .metrics import ranking_metrics

logger = logging.get_logger(__name__)

LOSS_REDUCTIONS = ("tokens", "samples")
INFLUENCE_SCOPE = "item_encoder.layer.1.attention.dense.weight"


class SASRecConfig(PretrainedConfig):
    """Configuration of `SASRecModel` (defaults = the DEALRec surrogate, METHODS.md C.2).

    Args:
        num_items (`int`): catalogue size; item indices are ``1..num_items`` and ``0`` is padding.
        item_ids (`list[int]`, *optional*): raw item id of each index (``item_ids[k]`` has index ``k + 1``), so that a
            saved model carries its `ItemVocab`. When omitted, raw ids are the indices themselves.
        hidden_size (`int`, defaults to 64), num_hidden_layers (`int`, defaults to 2), num_attention_heads (`int`,
            defaults to 2), intermediate_size (`int`, defaults to 64), hidden_act (`str`, defaults to `"gelu"`),
        hidden_dropout_prob (`float`, defaults to 0.5), attention_probs_dropout_prob (`float`, defaults to 0.5),
        initializer_range (`float`, defaults to 0.02), max_seq_length (`int`, defaults to 50),
        layer_norm_eps (`float`, defaults to 1e-12): the architecture.
        loss_reduction (`str`, defaults to `"tokens"`): batch loss = mean over all positions (the authors) or
            ``"samples"`` = mean of per-sample losses.
    """

    model_type = "sasrec"

    def __init__(
        self,
        num_items: int = 1,
        item_ids: list[int] | None = None,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        intermediate_size: int = 64,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.5,
        attention_probs_dropout_prob: float = 0.5,
        initializer_range: float = 0.02,
        max_seq_length: int = 50,
        layer_norm_eps: float = 1e-12,
        loss_reduction: str = "tokens",
        pad_token_id: int = 0,
        **kwargs,
    ):
        if item_ids is not None:
            item_ids = [int(i) for i in item_ids]
            if num_items in (None, 1) or num_items == len(item_ids):
                num_items = len(item_ids)
            else:
                raise ValueError(f"num_items={num_items} but item_ids has {len(item_ids)} entries; they must agree.")
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}.")
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size={hidden_size} is not a multiple of num_attention_heads={num_attention_heads}."
            )
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction={loss_reduction!r} is not valid; choose one of {LOSS_REDUCTIONS}.")
        self.num_items = int(num_items)
        self.item_ids = item_ids
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        self.max_seq_length = max_seq_length
        self.layer_norm_eps = layer_norm_eps
        self.loss_reduction = loss_reduction
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.num_items + 1

    def item_vocab(self) -> ItemVocab:
        """The `ItemVocab` of this model (identity over ``1..num_items`` when ``item_ids`` is not set)."""
        return ItemVocab(self.item_ids if self.item_ids is not None else list(range(1, self.num_items + 1)))


@dataclass
class SASRecOutput(ModelOutput):
    """Output of `SASRecModel.forward`.

    Args:
        loss (`torch.FloatTensor`, *optional*): batch loss (see ``config.loss_reduction``), when labels are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_items + 1)`, *optional*): scores of every item for the
            next position (column 0, padding, is ``-inf``); computed when no labels are given or on request.
        per_sample_loss (`torch.FloatTensor` of shape `(batch_size,)`, *optional*): each user's mean BCE.
        pos_logits, neg_logits (`torch.FloatTensor` of shape `(batch_size, seq_len)`, *optional*): positive and
            negative logits per position.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, seq_len, hidden_size)`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    per_sample_loss: torch.FloatTensor | None = None
    pos_logits: torch.FloatTensor | None = None
    neg_logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


class SASRecSelfAttention(nn.Module):
    """Multi-head causal self-attention, output projection ``dense``, dropout, residual and LayerNorm."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_heads, self.head_size).transpose(-3, -2)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        query, key, value = (self._heads(proj(hidden)) for proj in (self.query, self.key, self.value))
        scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_size) + additive_mask
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        context = (probs @ value).transpose(-3, -2).reshape(hidden.shape)
        return self.LayerNorm(self.out_dropout(self.dense(context)) + hidden)


class SASRecFeedForward(nn.Module):
    """Position-wise feed-forward layer (two linear maps = the authors' 1x1 convolutions), residual, LayerNorm."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.dense_1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.dense_2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense_2(self.act(self.dense_1(hidden)))) + hidden)


class SASRecLayer(nn.Module):
    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.attention = SASRecSelfAttention(config)
        self.intermediate = SASRecFeedForward(config)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.intermediate(self.attention(hidden, additive_mask))


class SASRecEncoder(nn.Module):
    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.layer = nn.ModuleList([SASRecLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, additive_mask)
        return hidden


class SASRecPreTrainedModel(PreTrainedModel):
    config_class = SASRecConfig
    base_model_prefix = "sasrec"
    main_input_name = "input_ids"


class SASRecModel(SASRecPreTrainedModel):
    """SASRec sequential recommender (Kang & McAuley, 2018) as configured by DEALRec (METHODS.md C.2).

    Inputs are item *indices* (``1..num_items``, see `ItemVocab`), left-padded with 0 to ``config.max_seq_length``
    (`SASRecCollator` does this), so the most recent item always sits at the last position.

    Example:
        ```python
        >>> import torch
        >>> model = SASRecModel(SASRecConfig(num_items=10)).eval()
        >>> model(input_ids=torch.tensor([[0] * 47 + [3, 5, 7]])).logits.shape
        torch.Size([1, 11])
        ```
    """

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        self.item_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_seq_length, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.item_encoder = SASRecEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.item_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.item_embeddings = value

    def encode(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Hidden state of every position, ``[batch, seq_len, hidden]`` (position t has seen items <= t)."""
        seq_len = input_ids.shape[-1]
        if seq_len > self.config.max_seq_length:
            raise ValueError(
                f"input_ids has {seq_len} positions but max_seq_length is {self.config.max_seq_length}; keep the "
                "most recent items (SASRecCollator truncates from the oldest side)."
            )
        positions = torch.arange(seq_len, device=input_ids.device)
        hidden = self.item_embeddings(input_ids) + self.position_embeddings(positions)
        hidden = self.dropout(self.LayerNorm(hidden))
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=input_ids.device).tril()
        allowed = causal & (input_ids > 0).unsqueeze(-2)  # [B, L(query), L(key)]
        additive = (1.0 - allowed.to(hidden.dtype)).unsqueeze(-3) * -10000.0  # [B, 1, L, L]
        return self.item_encoder(hidden, additive)

    def score_items(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """Scores of every item index from last-position hidden states ``[batch, hidden]`` (padding = -inf)."""
        scores = hidden_last @ self.item_embeddings.weight.T
        return scores.index_fill(-1, torch.zeros(1, dtype=torch.long, device=scores.device), float("-inf"))

    def forward(
        self,
        input_ids: torch.LongTensor,
        labels: torch.LongTensor | None = None,
        neg_ids: torch.LongTensor | None = None,
        return_item_scores: bool | None = None,
        return_dict: bool | None = None,
    ) -> SASRecOutput | tuple:
        """Encode the sequences; with ``labels`` (next-item indices, 0 = no target) and ``neg_ids`` compute the BCE.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`): left-padded item indices.
            labels (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*): positive item per position.
            neg_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*): negative item per position,
                required with ``labels`` (drawn by `SASRecCollator`).
            return_item_scores (`bool`, *optional*): compute ``logits`` over all items at the last position; defaults
                to ``labels is None``.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden = self.encode(input_ids)
        loss = per_sample = pos_logits = neg_logits = logits = None
        if labels is not None:
            if neg_ids is None:
                raise ValueError(
                    "SASRec's loss needs one negative item per position: pass neg_ids (SASRecCollator samples them)."
                )
            if labels.shape != input_ids.shape or neg_ids.shape != input_ids.shape:
                raise ValueError(
                    f"labels {tuple(labels.shape)} and neg_ids {tuple(neg_ids.shape)} must have the shape of "
                    f"input_ids {tuple(input_ids.shape)}."
                )
            pos_logits = (hidden * self.item_embeddings(labels)).sum(-1)
            neg_logits = (hidden * self.item_embeddings(neg_ids)).sum(-1)
            mask = (labels > 0).to(hidden.dtype)
            # -log sigmoid(p) - log(1 - sigmoid(n)) in a numerically stable form
            position_loss = (nn.functional.softplus(-pos_logits) + nn.functional.softplus(neg_logits)) * mask
            counts = mask.sum(-1)
            per_sample = position_loss.sum(-1) / counts.clamp(min=1.0)
            if self.config.loss_reduction == "tokens":
                loss = position_loss.sum() / counts.sum().clamp(min=1.0)
            else:
                loss = per_sample.mean()
        if return_item_scores if return_item_scores is not None else labels is None:
            logits = self.score_items(hidden[..., -1, :])
        output = SASRecOutput(
            loss=loss,
            logits=logits,
            per_sample_loss=per_sample,
            pos_logits=pos_logits,
            neg_logits=neg_logits,
            last_hidden_state=hidden,
        )
        return output if return_dict else output.to_tuple()


AutoConfig.register(SASRecConfig.model_type, SASRecConfig, exist_ok=True)
AutoModel.register(SASRecConfig, SASRecModel, exist_ok=True)


def sasrec_per_sample_loss(model: SASRecModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-user SASRec loss ``[batch]``: the mean BCE over that user's positions (METHODS.md C.2, "Per-sample loss").

    ``batch`` holds ``input_ids``, ``labels`` and ``neg_ids`` as built by `SASRecCollator`; the negatives are taken
    as given, so the result is deterministic for a fixed batch (use ``SASRecCollator(resample=False)`` for negatives
    that depend only on ``(seed, example_id)``). The model's train/eval mode is respected (DEALRec scores in eval
    mode).
    Uses no data-dependent Python control flow, so it works under ``torch.func.vmap`` / ``grad``.
    """
    device = next(model.parameters()).device
    output = model(
        input_ids=batch["input_ids"].to(device),
        labels=batch["labels"].to(device),
        neg_ids=batch["neg_ids"].to(device),
        return_item_scores=False,
        return_dict=True,
    )
    return output.per_sample_loss


# ---------------------------------------------------------------------------------------------------------------------
# Features, negatives, collation
# ---------------------------------------------------------------------------------------------------------------------


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


def _left_pad(values: Sequence[int], max_len: int) -> list[int]:
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
        batch: dict[str, Any] = {"input_ids": [_left_pad(f["input_ids"], self.max_len) for f in features]}
        if "labels" in features[0]:
            labels, negatives = [], []
            for feature in features:
                padded = _left_pad(feature["labels"], self.max_len)
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


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation and training
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def rank_items(
    model: SASRecModel, rows, *, k: int = 20, exclude_history: bool = True, batch_size: int = 256
) -> list[list[int]]:
    """Top-``k`` raw item ids for each user row (full ranking over the catalogue, best first).

    Args:
        model (`SASRecModel`): the surrogate (its config's ``item_ids`` map indices back to raw ids).
        rows (`datasets.Dataset`): user rows (``history_item_ids``).
        k (`int`, defaults to 20): how many items to return per user.
        exclude_history (`bool`, defaults to `True`): never recommend items of the user's history (the authors'
            surrogate evaluation masks the training items).
        batch_size (`int`, defaults to 256): users per forward pass.
    """
    vocab = model.config.item_vocab()
    max_len = model.config.max_seq_length
    k = min(int(k), vocab.num_items)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rankings: list[list[int]] = []
    try:
        histories = rows["history_item_ids"]
        for start in range(0, len(histories), batch_size):
            encoded = [vocab.encode(h) for h in histories[start : start + batch_size]]
            padded = [_left_pad(h, max_len) for h in encoded]
            input_ids = torch.tensor(padded, dtype=torch.long, device=device)
            scores = model(input_ids=input_ids, return_item_scores=True, return_dict=True).logits
            if exclude_history:
                for row, history in enumerate(encoded):
                    scores[row, torch.tensor(history, dtype=torch.long, device=device)] = float("-inf")
            top = scores.topk(k, dim=-1).indices.cpu().tolist()
            rankings.extend(vocab.decode(ids) for ids in top)
    finally:
        model.train(was_training)
    return rankings


def evaluate_sasrec(
    model: SASRecModel,
    rows,
    ks: Sequence[int] = (5, 10, 20),
    *,
    exclude_history: bool = True,
    batch_size: int = 256,
) -> dict[str, float]:
    """Recall@K and NDCG@K of the surrogate on user rows (e.g. the ``valid`` split), full ranking over all items.

    Returns:
        `dict[str, float]`: ``recall@K`` and ``ndcg@K`` for every K (see `hf_influence.rec.metrics`).

    Example:
        ```python
        >>> result = train_sasrec(users["train"], epochs=20, output_dir="sasrec")  # doctest: +SKIP
        >>> evaluate_sasrec(result.model, users["valid"], ks=(5, 10, 20))  # doctest: +SKIP
        ```
    """
    rankings = rank_items(model, rows, k=max(ks), exclude_history=exclude_history, batch_size=batch_size)
    return ranking_metrics(rankings, rows["target_item_ids"], ks=list(ks))


@dataclass
class SASRecTrainingResult:
    """What `train_sasrec` returns: the model, per-epoch training loss, validation history and the kept epoch."""

    model: SASRecModel
    train_loss: list[float]
    valid_metrics: list[dict[str, float]]
    kept_epoch: int
    output_dir: str | None


class _ValidationCallback(TrainerCallback):
    """Evaluate on validation rows every ``every`` epochs; remember the best weights by ``metric``."""

    def __init__(self, rows, ks: Sequence[int], every: int, metric: str, keep_best: bool):
        self.rows, self.ks, self.every, self.metric, self.keep_best = rows, ks, every, metric, keep_best
        self.history: list[dict[str, float]] = []
        self.best_value = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = int(round(state.epoch))
        if epoch % self.every and epoch != int(args.num_train_epochs):
            return
        metrics = evaluate_sasrec(model, self.rows, ks=self.ks)
        self.history.append({"epoch": epoch, **metrics})
        logger.info(f"SASRec epoch {epoch}: {metrics}")
        if metrics[self.metric] > self.best_value:
            self.best_value, self.best_epoch = metrics[self.metric], epoch
            if self.keep_best:
                self.best_state = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}


def train_sasrec(
    train_rows,
    *,
    valid_rows=None,
    vocab: ItemVocab | None = None,
    config: SASRecConfig | Mapping[str, Any] | None = None,
    epochs: int = 200,
    batch_size: int = 500,
    lr: float = 1e-3,
    seed: int = 42,
    output_dir: str | os.PathLike | None = "sasrec_surrogate",
    keep: str = "last",
    eval_every: int = 5,
    eval_ks: Sequence[int] = (5, 10, 20),
    metric_for_best: str = "recall@5",
    negative_seed: int | None = None,
    trainer_cls: type | None = None,
    args_cls: type | None = None,
    training_args: Mapping[str, Any] | None = None,
) -> SASRecTrainingResult:
    """Train the SASRec surrogate with the HF `Trainer` stack, as DEALRec does (METHODS.md C.2).

    Optimiser: ``optim="adamw_torch"`` with ``weight_decay=0`` (= Adam), betas (0.9, 0.999), constant learning rate,
    no warm-up and no gradient clipping (``max_grad_norm=0``), matching the authors' plain ``torch.optim.Adam``.
    Negatives are redrawn at every batch (`SASRecCollator`, seeded by ``negative_seed`` or ``seed``).

    Args:
        train_rows (`datasets.Dataset`): the ``train`` split of user rows.
        valid_rows (`datasets.Dataset`, *optional*): the ``valid`` split, evaluated every ``eval_every`` epochs and at
            the end (Recall/NDCG at ``eval_ks``, full ranking, history excluded).
        vocab (`ItemVocab`, *optional*): item id mapping; defaults to every item of ``train_rows`` and ``valid_rows``.
            Pass ``ItemVocab.from_items(load_items(folder))`` to rank over the whole catalogue.
        config (`SASRecConfig` or `dict`, *optional*): architecture overrides (``num_items``/``item_ids`` are set
            from ``vocab``).
        epochs (`int`, defaults to 200), batch_size (`int`, defaults to 500), lr (`float`, defaults to 1e-3),
        seed (`int`, defaults to 42): the authors' settings.
        output_dir (`str`, *optional*): where the Trainer writes and the kept model is saved (``None``: temporary
            Trainer folder, nothing saved).
        keep (`str`, defaults to `"last"`): ``"last"`` keeps the final-epoch model (the authors' quirk, METHODS.md
            E.8); ``"best"`` restores the weights with the best ``metric_for_best`` on ``valid_rows``.
        trainer_cls (`type`, *optional*): a `Trainer` subclass that removes the ``example_id`` column from the batch
            before ``forward`` (e.g. ``hf_influence.ScoringTrainer``); the default plain `Trainer` gets no ids, and
        args_cls (`type`, *optional*): its arguments class (e.g. ``hf_influence.ScoringConfig``);
        training_args (`dict`, *optional*): extra fields for ``args_cls``.

    Returns:
        `SASRecTrainingResult` (``model`` in eval mode, ``train_loss`` per epoch, ``valid_metrics``, ``kept_epoch``).
    """
    import shutil
    import tempfile

    from transformers import Trainer, TrainingArguments, set_seed

    if keep not in ("last", "best"):
        raise ValueError(f"keep={keep!r} is not valid; choose 'last' (the authors' final epoch) or 'best'.")
    if keep == "best" and valid_rows is None:
        raise ValueError("keep='best' needs valid_rows to choose the epoch; pass the valid split or keep='last'.")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if metric_for_best not in {f"{m}@{k}" for m in ("recall", "ndcg") for k in eval_ks}:
        raise ValueError(f"metric_for_best={metric_for_best!r} must be recall@K or ndcg@K with K in {list(eval_ks)}.")
    set_seed(seed)
    if vocab is None:
        vocab = ItemVocab.from_dataset([train_rows] + ([valid_rows] if valid_rows is not None else []))
    if isinstance(config, SASRecConfig):
        config = copy.deepcopy(config)
        config.num_items, config.item_ids = vocab.num_items, list(vocab.item_ids)
    else:
        config = SASRecConfig(**{**dict(config or {}), "num_items": vocab.num_items, "item_ids": vocab.item_ids})
    model = SASRecModel(config)
    features = build_sasrec_dataset(train_rows, config)
    collator = SASRecCollator(
        num_items=config.num_items,
        max_len=config.max_seq_length,
        seed=seed if negative_seed is None else negative_seed,
        keep_example_id=trainer_cls is not None,  # a custom trainer (ScoringTrainer) strips the ids itself
    )
    trainer_cls = trainer_cls or Trainer
    args_cls = args_cls or TrainingArguments
    workdir = str(output_dir) if output_dir is not None else tempfile.mkdtemp(prefix="sasrec_")
    args = dict(
        output_dir=workdir,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        seed=seed,
        data_seed=seed,
        logging_strategy="epoch",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    args.update(training_args or {})
    callback = None
    callbacks = []
    if valid_rows is not None:
        callback = _ValidationCallback(valid_rows, eval_ks, max(1, eval_every), metric_for_best, keep == "best")
        callbacks.append(callback)
    trainer = trainer_cls(
        model=model, args=args_cls(**args), train_dataset=features, data_collator=collator, callbacks=callbacks
    )
    try:
        trainer.train()
    finally:
        if output_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    model = trainer.model
    kept_epoch = epochs
    if keep == "best" and callback is not None and callback.best_state is not None:
        model.load_state_dict(callback.best_state)
        kept_epoch = callback.best_epoch
    model.eval()
    train_loss = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if output_dir is not None:
        model.save_pretrained(workdir)
    return SASRecTrainingResult(
        model=model,
        train_loss=train_loss,
        valid_metrics=callback.history if callback is not None else [],
        kept_epoch=kept_epoch,
        output_dir=workdir if output_dir is not None else None,
    )
