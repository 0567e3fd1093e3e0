"""Gradients of the gold-class output with respect to the input embeddings (the saliency maps VoG aggregates)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .core import prepare_batch, scoring_mode

INPUT_GRADIENT_TARGETS: tuple[str, ...] = ("gold_logit", "gold_prob")


def input_embedding_gradients(
    model: nn.Module, batch: Mapping[str, Any], target: str = "gold_logit"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example gradient of the gold class's output with respect to the input embeddings, in one batched backward.

    The token embeddings are looked up with `model.get_input_embeddings()` and fed back through `inputs_embeds`, so
    the gradient is taken at the embedding layer's output (Anand et al. 2023, App. B.1, Alg. 1: "the output of the
    embedding layer"). Examples are independent in eval mode, so backpropagating the sum of the targets gives every
    example's own gradient exactly. Parameters are frozen and dropout is off during the call (both restored after).

    Args:
        model (`nn.Module`): a sequence-classification model (logits `[B, C]`) that accepts `inputs_embeds`.
        batch (`dict`): `input_ids`, optional `attention_mask`/`token_type_ids`, and `labels` (or `label`).
        target (`str`, defaults to `"gold_logit"`): `"gold_logit"` = pre-softmax logit of the gold class (VoG's
            ImageNet code and the SNLI paper), `"gold_prob"` = its softmax probability (VoG's toy code).

    Returns:
        `(grads, mask)`: float32 `[B, T, d]` gradients and a bool `[B, T]` mask of real (non-pad) tokens.

    Raises:
        ValueError: for an unknown target, missing labels, or logits that are not `[batch, num_labels]`.

    Example:
        ```python
        >>> grads, mask = input_embedding_gradients(model, {"input_ids": ids, "attention_mask": am, "labels": y})
        ```
    """
    if target not in INPUT_GRADIENT_TARGETS:
        raise ValueError(f"Unknown target {target!r}; valid targets are {', '.join(INPUT_GRADIENT_TARGETS)}.")
    inputs, labels = prepare_batch(model, batch)
    input_ids = inputs.pop("input_ids", None)
    if input_ids is None:
        raise ValueError("input_embedding_gradients needs 'input_ids' in the batch.")
    with scoring_mode(model, freeze=True):
        embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, **inputs).logits
        if logits.dim() != 2:
            raise ValueError(
                f"Gold-class input-embedding gradients need sequence-classification logits [batch, num_labels], got "
                f"{tuple(logits.shape)}."
            )
        labels = labels.long().reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
            raise ValueError(f"Labels must lie in [0, {logits.shape[-1]}); drop unlabelled rows first.")
        scores = logits.float()
        if target == "gold_prob":
            scores = scores.softmax(-1)
        (grads,) = torch.autograd.grad(scores.gather(1, labels.unsqueeze(1)).sum(), embeds)
    mask = inputs.get("attention_mask")
    mask = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device) if mask is None else mask.bool()
    return grads.float(), mask
