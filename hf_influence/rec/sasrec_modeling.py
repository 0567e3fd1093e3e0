"""SASRec, the small sequential recommender DEALRec uses as its surrogate (METHODS.md C.2), as a HF `PreTrainedModel`:
its configuration, the model and its per-user loss.

Self-Attentive Sequential Recommendation (Kang & McAuley, ICDM 2018) in the configuration of the DEALRec code
(Lin et al., SIGIR 2024): item + position embeddings -> LayerNorm -> dropout -> 2 blocks of causal self-attention
(2 heads, output projection, residual, LayerNorm) and a position-wise feed-forward layer (residual, LayerNorm); hidden
size 64, GELU, dropout 0.5, init N(0, 0.02), sequences of the last 50 items, left-padded with item index 0.

Training objective (the authors' ``cross_entropy``): at every non-padding position t the next item is the positive and
one item drawn uniformly from the catalogue, outside the user's training sequence, is the negative;
``l_t = -log sigmoid(<h_t, e_pos>) - log(1 - sigmoid(<h_t, e_neg>))``. The per-sample loss is the mean of ``l_t`` over
the user's positions; the batch loss is the mean over all positions of the batch (``loss_reduction="tokens"``, as the
authors) or the mean of the per-sample losses (``"samples"``). Negatives are drawn by `SASRecCollator`
(`hf_influence.rec.sasrec_features`) at every call (the authors resample them in every ``__getitem__``) or, with
``resample=False``, as a fixed function of ``(seed, example_id)`` so that per-sample losses and gradients are
reproducible whatever the batching.

The model type "sasrec" is registered with `AutoConfig`/`AutoModel`, so `AutoModel.from_pretrained(dir)` loads a saved
surrogate. Module names follow the authors' code so that their influence scope,
``item_encoder.layer.1.attention.dense.weight`` (the last block's attention output projection, 64 x 64), names the
same tensor here.

Known differences from the authors' code (documented, not bugs): the feed-forward layer uses ``hidden_act`` once
(their module hard-codes ReLU after both 1x1 convolutions although their config says GELU); the padding row of the item
embedding starts at zero (HF convention; it never receives gradient and never reaches a loss or a ranking).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .data import ItemVocab

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
