"""Per-example signals from logits and labels (pure torch, no Trainer).

All signals are computed in float32 under ``torch.no_grad`` and returned as tensors of shape ``[batch_size]``.
Polarity: higher ``loss``, ``el2n`` and ``entropy`` = harder; higher ``prob_gold``, ``margin`` and ``correct`` =
easier.

Definitions for one example with logits ``z`` (C classes), probabilities ``p = softmax(z)`` and gold class ``y``:

- ``loss`` = -log p_y (cross-entropy)
- ``prob_gold`` = p_y (the quantity dataset cartography averages, Swayamdipta et al. 2020)
- ``margin`` = z_y - max_{k != y} z_k (the AUM margin on logits, Pleiss et al. 2020)
- ``correct`` = 1[argmax_k z_k = y] (forgetting events, Toneva et al. 2019)
- ``el2n`` = ||p - onehot(y)||_2 (Paul et al. 2021, Def. 2.3)
- ``entropy`` = -sum_k p_k log p_k (nats)

For causal language models each signal is computed per label token (logits shifted by one position, labels equal to
``ignore_index`` masked out) and averaged over that example's own label tokens; an example without label tokens gets
NaN.
"""

from __future__ import annotations

import torch

SIGNAL_NAMES: tuple[str, ...] = ("loss", "prob_gold", "margin", "correct", "el2n", "entropy")


@torch.no_grad()
def token_signals(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Signals for each row of ``logits`` ``[..., C]`` against integer ``labels`` ``[...]`` (all valid)."""
    logits = logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    gold = labels.long().unsqueeze(-1)
    gold_log_prob = log_probs.gather(-1, gold).squeeze(-1)
    gold_prob = gold_log_prob.exp()
    gold_logit = logits.gather(-1, gold).squeeze(-1)
    other_logits = logits.scatter(-1, gold, float("-inf"))
    margin = gold_logit - other_logits.max(dim=-1).values
    correct = (logits.argmax(dim=-1) == labels).float()
    # ||p - e_y||^2 = sum_k p_k^2 - 2 p_y + 1
    el2n = ((probs * probs).sum(-1) - 2 * gold_prob + 1).clamp_min(0).sqrt()
    entropy = -(probs * log_probs.masked_fill(probs == 0, 0)).sum(-1)
    return {
        "loss": -gold_log_prob,
        "prob_gold": gold_prob,
        "margin": margin,
        "correct": correct,
        "el2n": el2n,
        "entropy": entropy,
    }


@torch.no_grad()
def classification_signals(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Signals for sequence classification: ``logits`` ``[B, C]``, ``labels`` ``[B]``.

    Raises:
        ValueError: if a label is outside ``[0, C)``.
    """
    if logits.dim() != 2:
        raise ValueError(f"Expected classification logits of shape [batch, num_labels], got {tuple(logits.shape)}.")
    check_class_ids(labels, logits.shape[-1])
    return token_signals(logits, labels)


def check_class_ids(labels: torch.Tensor, num_labels: int) -> None:
    """Check that every class id in ``labels`` lies in ``[0, num_labels)`` (an empty tensor passes).

    Raises:
        ValueError: naming the valid range and the labels' min and max, and how to fix it.
    """
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(
            f"Labels must lie in [0, {num_labels}) for this model, got min {int(labels.min())} and max "
            f"{int(labels.max())}. Drop unlabelled rows or set num_labels to cover every class."
        )


@torch.no_grad()
def causal_lm_signals(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> dict[str, torch.Tensor]:
    """Signals for causal LM: ``logits`` ``[B, T, V]``, ``labels`` ``[B, T]`` (unshifted, as HF models take them).

    Position t's logits predict label t+1. Each signal is the mean over the example's label tokens (those not equal to
    ``ignore_index``); examples with no label token get NaN. A ``num_tokens`` entry gives the count per example.
    """
    if logits.dim() != 3:
        raise ValueError(f"Expected causal-LM logits of shape [batch, seq, vocab], got {tuple(logits.shape)}.")
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != ignore_index
    vocab = shift_logits.shape[-1]
    valid = shift_labels[mask]
    if valid.numel() and (valid.min() < 0 or valid.max() >= vocab):
        raise ValueError(f"Label token ids must lie in [0, {vocab}) or equal {ignore_index}; got out-of-range ids.")
    per_token = token_signals(shift_logits[mask], valid)
    counts = mask.sum(dim=1)
    example_index = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(shift_labels)[mask]
    out: dict[str, torch.Tensor] = {}
    denom = counts.float()
    for name, values in per_token.items():
        sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=values.device)
        sums.index_add_(0, example_index, values)
        out[name] = torch.where(counts > 0, sums / denom.clamp_min(1), torch.full_like(sums, float("nan")))
    out["num_tokens"] = counts
    return out
