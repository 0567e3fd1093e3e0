"""4-D additive attention masks built on the device from a batch's 2-D padding mask.

The `torch.func` fallback (HF mask creation is not vmappable) and the CUDA-graph step (HF mask creation reads the
mask's values on the host) hand the model such a mask instead of the 2-D `attention_mask`; whether it must be causal
is checked against the model's own per-example losses by their callers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def attention_mask_2d(inputs: Mapping[str, Any]) -> torch.Tensor:
    """The batch's 2-D `attention_mask`, or all ones shaped like its `input_ids` / `inputs_embeds`."""
    mask2d = inputs.get("attention_mask")
    if mask2d is None:
        ids = inputs.get("input_ids", inputs.get("inputs_embeds"))
        mask2d = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
    return mask2d


def likely_causal(model: nn.Module, task: str) -> bool:
    """The 4-D mask to try first: causal for causal LMs and decoder configs (the other one is tried next)."""
    return task == "causal_lm" or bool(getattr(getattr(model, "config", None), "is_decoder", False))


def four_d_mask(mask2d: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """Additive `[B, 1, T, T]` mask (0 = attend, dtype minimum = masked) from a 2-D padding mask; float32 for a
    non-floating `dtype`."""
    dtype = dtype if dtype.is_floating_point else torch.float32
    keep = mask2d.bool()[:, None, None, :].expand(-1, 1, mask2d.shape[1], -1)
    if causal:
        keep = keep & torch.ones(mask2d.shape[1], mask2d.shape[1], dtype=torch.bool, device=mask2d.device).tril()
    return torch.zeros(keep.shape, dtype=dtype, device=mask2d.device).masked_fill(~keep, torch.finfo(dtype).min)
