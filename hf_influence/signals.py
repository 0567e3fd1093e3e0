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


#: Bound on the float32 `[rows, T, V]` temporaries of `causal_lm_signals` (rows of the batch are processed in chunks).
_CAUSAL_LM_CHUNK_BYTES = 256 * 2**20


@torch.no_grad()
def token_signals(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Signals for each row of ``logits`` ``[..., C]`` against integer ``labels`` ``[...]`` (all valid).

    Float32 with no host sync and two ``[..., C]`` temporaries. Confident predictions keep their precision: with
    ``m`` the top logit and ``eps = sum_{k != argmax} exp(z_k - m)``, ``log p_y = (z_y - m) - log1p(eps)``, and
    ``||p - e_y||^2 = (1 - p_y)^2 + sum_{k != y} p_k^2`` with ``1 - p_y = eps / (1 + eps)`` when ``y`` is the argmax
    (the expanded ``sum_k p_k^2 - 2 p_y + 1`` loses every digit when ``p_y`` is close to 1).
    """
    logits = logits.float()
    gold = labels.long().unsqueeze(-1)
    top, top_index = logits.max(dim=-1, keepdim=True)
    shifted = (logits - top).exp_()  # exp(z_k - m); exactly 1 at the argmax
    shifted.scatter_(-1, top_index, 0.0)
    eps = shifted.sum(-1)
    probs = shifted.scatter_(-1, top_index, 1.0).div_((1.0 + eps).unsqueeze(-1))
    gold_logit = logits.gather(-1, gold).squeeze(-1)
    gold_log_prob = (gold_logit - top.squeeze(-1)) - torch.log1p(eps)
    gold_prob = gold_log_prob.exp()
    gold_is_top = top_index.squeeze(-1) == gold.squeeze(-1)
    one_minus_gold = torch.where(gold_is_top, eps / (1.0 + eps), 1.0 - gold_prob)
    if logits.shape[-1] > 1:
        top2 = logits.topk(2, dim=-1)
        runner_up = torch.where(top2.indices[..., 0] == gold.squeeze(-1), top2.values[..., 1], top2.values[..., 0])
    else:
        runner_up = torch.full_like(gold_logit, float("-inf"))
    entropy = torch.special.entr(probs).sum(-1)
    others_sq = torch.linalg.vector_norm(probs.scatter_(-1, gold, 0.0), dim=-1).square()  # probs is spent here
    return {
        "loss": -gold_log_prob,
        "prob_gold": gold_prob,
        "margin": gold_logit - runner_up,
        "correct": (logits.argmax(dim=-1) == gold.squeeze(-1)).float(),
        "el2n": (one_minus_gold.square() + others_sq).sqrt(),
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


def check_token_ids(labels: torch.Tensor, vocab_size: int, ignore_index: int = -100) -> None:
    """Check that every label token id is in ``[0, vocab_size)`` or equals ``ignore_index`` (one host sync).

    Raises:
        ValueError: naming the valid range.
    """
    ids = labels.masked_fill(labels == ignore_index, 0)
    if ids.numel() and bool((ids.min() < 0) | (ids.max() >= vocab_size)):
        raise ValueError(
            f"Label token ids must lie in [0, {vocab_size}) or equal {ignore_index}; got out-of-range ids."
        )


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
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, *, check: bool = True
) -> dict[str, torch.Tensor]:
    """Signals for causal LM: ``logits`` ``[B, T, V]``, ``labels`` ``[B, T]`` (unshifted, as HF models take them).

    Position t's logits predict label t+1. Each signal is the mean over the example's label tokens (those not equal to
    ``ignore_index``); examples with no label token get NaN. A ``num_tokens`` entry gives the count per example.

    Every position is scored (ignored ones against a dummy id, then masked out), in chunks of rows whose float32
    temporaries stay under 256 MiB, so no boolean indexing forces a host sync and memory does not grow with the
    vocabulary times the whole batch.

    Args:
        check (`bool`, defaults to `True`): check that label ids lie in ``[0, V)`` (one host sync; the trainer skips
            it because the model's own loss already fails on such ids).

    Raises:
        ValueError: with `check`, if a label id is outside ``[0, V)`` and not ``ignore_index``.
    """
    if logits.dim() != 3:
        raise ValueError(f"Expected causal-LM logits of shape [batch, seq, vocab], got {tuple(logits.shape)}.")
    batch, seq, vocab = logits.shape
    shift_labels = labels[:, 1:]
    mask = shift_labels != ignore_index
    if check:
        check_token_ids(shift_labels, vocab, ignore_index)
    safe_labels = shift_labels.masked_fill(~mask, 0)
    counts = mask.sum(dim=1)
    rows = max(1, _CAUSAL_LM_CHUNK_BYTES // max(1, 3 * max(seq - 1, 1) * vocab * 4))
    sums: dict[str, list[torch.Tensor]] = {name: [] for name in SIGNAL_NAMES}
    for start in range(0, batch, rows):
        chunk_mask = mask[start : start + rows]
        per_token = token_signals(logits[start : start + rows, :-1], safe_labels[start : start + rows])
        for name, values in per_token.items():
            sums[name].append(torch.where(chunk_mask, values, 0.0).sum(dim=1))
    denom = counts.float().clamp_min(1)
    nan = torch.tensor(float("nan"), device=logits.device)
    out: dict[str, torch.Tensor] = {}
    for name, parts in sums.items():
        out[name] = torch.where(counts > 0, torch.cat(parts) / denom if parts else denom, nan)
    out["num_tokens"] = counts
    return out
