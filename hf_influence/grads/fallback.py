"""The `torch.func` fallback: exact per-example gradient norms of parameters whose module has no hand-written rule.

`fallback_sq_norms` replays each example with `torch.func.vmap(grad(...))` over `functional_call` (in chunks), so it
is exact by construction but slower and heavier than the hook rules; the module types that need it are logged once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .core import per_example_losses
from .masks import attention_mask_2d, four_d_mask, likely_causal

logger = logging.get_logger(__name__)

#: Module types already named in the fallback's log line (it is written once per type and process).
_LOGGED_FALLBACK_TYPES: set[str] = set()


def log_fallback(types: list[str]) -> None:
    """Warn once per module type that its parameters' per-example gradients go through `torch.func`."""
    new = [t for t in types if t not in _LOGGED_FALLBACK_TYPES]
    if new:
        _LOGGED_FALLBACK_TYPES.update(new)
        logger.warning(
            f"No ghost-norm rule for module type(s) {', '.join(new)}: their parameters' per-example gradients are "
            "computed with torch.func (vmap over examples; slower, more memory)."
        )


def fallback_sq_norms(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    inputs: Mapping[str, Any],
    labels: torch.Tensor,
    task: str,
    reference_losses: torch.Tensor,
    chunk_size: int = 8,
) -> torch.Tensor:
    """Per-example squared gradient norms over `params` with `torch.func.vmap(grad(...))`, `chunk_size` at a time.

    The attention mask is passed as a pre-built 4-D additive mask (HF mask creation is not vmappable). Whether it
    must be causal is checked against the batched forward: the per-example losses under vmap must reproduce
    `reference_losses`, otherwise an error is raised rather than returning wrong norms.
    """
    from torch.func import functional_call, grad, vmap

    dtype = next(iter(params.values())).dtype
    detached = {name: p.detach() for name, p in params.items()}
    batch_size = labels.shape[0]
    mapped = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape[:1] == (batch_size,)}
    fixed = {k: v for k, v in inputs.items() if k not in mapped}
    mask2d = attention_mask_2d(mapped)
    mapped.pop("attention_mask", None)
    if mask2d.dim() != 2:
        raise ValueError("The torch.func fallback needs a 2-D attention_mask [batch, seq_len].")

    def loss_one(p: dict, example: dict, label: torch.Tensor, mask4d: torch.Tensor) -> tuple:
        kwargs = {k: v.unsqueeze(0) for k, v in example.items()}
        kwargs["attention_mask"] = mask4d.unsqueeze(0)
        out = functional_call(model, p, args=(), kwargs={**fixed, **kwargs})
        logits = out.logits if hasattr(out, "logits") else out[0]
        loss, _ = per_example_losses(logits, label.unsqueeze(0), task, check=False)
        return loss[0], loss[0].detach()

    per_example = vmap(grad(loss_one, has_aux=True), in_dims=(None, 0, 0, 0), chunk_size=chunk_size)
    first_causal = likely_causal(model, task)
    tried = []
    for causal in (first_causal, not first_causal):
        grads, losses = per_example(detached, mapped, labels, four_d_mask(mask2d, causal, dtype))
        tried.append(float((losses - reference_losses).abs().max()))
        if torch.allclose(losses, reference_losses, rtol=1e-4, atol=1e-5):
            return sum(g.float().reshape(batch_size, -1).square().sum(-1) for g in grads.values())
    raise RuntimeError(
        f"The torch.func fallback could not reproduce the model's per-example losses (max abs difference {tried}) "
        "with either a bidirectional or a causal 4-D attention mask. Exclude the parameters of "
        f"{sorted({type(m).__name__ for m in model.modules() if any(p is q for p in m._parameters.values() for q in params.values())})}"  # noqa: E501
        " with a params regex."
    )
