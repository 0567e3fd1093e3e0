"""The autograd check of the hook rules: each hooked layer's norm for one example against autograd's gradient.

The hooks see a layer's parameters only through that layer's own forward; a parameter used outside its owning
module's forward (e.g. `F.linear(h, self.embed.weight)` in a parent module, DeBERTa's `rel_embeddings.weight`) would
silently be missing from the norm. `check_hooks_against_autograd` finds such layers on one example and names them;
`check_hooks_once` runs it once per model and parameter selection.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .core import ScoringMode, per_example_losses, prepare_batch
from .hooks import run_frozen_backward
from .norm_engine import NormsEngine

#: Per model (weakly held): the parameter selections whose hooks already agreed with autograd (`check_hooks_once`).
_CHECKED_SELECTIONS: weakref.WeakKeyDictionary[nn.Module, set[frozenset[int]]] = weakref.WeakKeyDictionary()


def _one_labelled_example(inputs: Mapping[str, Any], labels: torch.Tensor) -> dict[str, Any] | None:
    """The batch's first example that has a label (a causal-LM example needs a label token after the shift), as a
    batch of one; None when no example has one."""
    batch = labels.shape[0]
    if labels.dim() == 1:
        row = 0
    else:
        labelled = (labels[:, 1:] != -100).any(1).nonzero()  # a host sync: runs once per model and selection
        if labelled.numel() == 0:
            return None
        row = int(labelled[0])
    single = {
        k: v[row : row + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch else v
        for k, v in inputs.items()
    }
    single["labels"] = labels[row : row + 1]
    return single


def _tf32_matmuls() -> bool:
    """Whether float32 matmuls on CUDA may run in TF32 (read through the new `fp32_precision` setting when present:
    the legacy `allow_tf32` / `get_float32_matmul_precision` raise once the new one has been set)."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if precision is not None:
        return precision == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32)


def check_hooks_once(
    model: nn.Module, engine: NormsEngine, mode: ScoringMode, batch: Mapping[str, Any], task: str
) -> bool:
    """`check_hooks_against_autograd`, skipped when `model` already passed it with the same parameter selection
    (`_CHECKED_SELECTIONS`). Returns whether the selection is now checked."""
    checked = _CHECKED_SELECTIONS.setdefault(model, set())
    if engine.selection in checked:
        return True
    if not check_hooks_against_autograd(model, engine, mode, batch, task):
        return False
    checked.add(engine.selection)
    return True


def check_hooks_against_autograd(
    model: nn.Module, engine: NormsEngine, mode: ScoringMode, batch: Mapping[str, Any], task: str = "auto"
) -> bool:
    """Compare each hooked layer's per-example squared gradient norm with autograd's, on one example of `batch`.

    The hooks see a layer's parameters only through that layer's own forward; a weight also read elsewhere (e.g.
    `F.linear(h, module.weight)` in a parent module) would silently be missing from the norm. Here the first labelled
    example is run through the hooks and, separately, through a plain backward of its loss with the selected
    parameters requiring grad; per layer (a tied embedding/head pair together) the two squared norms must agree to
    2e-3 relative in float32 (1e-2 with TF32 matmuls on a GPU, 5e-2 in half precision or under autocast), up to 1e-6
    of the example's total. Parameters of the
    `torch.func` fallback are exact by construction and not compared.

    Returns:
        `bool`: True when checked (False when `batch` has no labelled example: check a later batch).

    Raises:
        ValueError: naming every layer whose hooked norm differs from autograd's, with both values and the fix.
    """
    layers = engine.layers
    if not layers:
        return True
    inputs, labels = prepare_batch(model, batch)
    single = _one_labelled_example(inputs, labels)
    if single is None:
        return False
    engine.reset()
    with mode(freeze=True):
        _, _, _, valid, resolved = run_frozen_backward(model, single, engine, task)
    if not bool(valid[0]):
        return False
    per_layer = engine.per_layer_sq_norms()
    hooked = (per_layer[:, 0] if per_layer is not None
              else torch.zeros(len(layers), device=labels.device)).double().tolist()
    half = engine.half_precision
    engine.reset()

    index = {id(layer): i for i, layer in enumerate(layers)}
    groups: list[list[int]] = []
    for i, layer in enumerate(layers):
        partner = index.get(id(layer.tied)) if layer.tied is not None else None
        if partner is None or partner > i:
            groups.append([i] if partner is None else [i, partner])
    params = {id(param): param for layer in layers for param in layer.selected_parameters()}
    flags = [(param, param.requires_grad) for param in params.values()]
    try:
        with mode(freeze=False):
            for param, _ in flags:
                param.requires_grad_(True)
            single_inputs = {k: v for k, v in single.items() if k != "labels"}
            outputs = model(**single_inputs)
            logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
            loss, _ = per_example_losses(logits, single["labels"], resolved)
            grads = torch.autograd.grad(loss[0], list(params.values()), allow_unused=True)
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
    sq = {pid: 0.0 if g is None else float(g.double().square().sum()) for pid, g in zip(params, grads)}

    # a set per group: the weight of a tied embedding/head pair counts once
    expected = [sum(sq[pid] for pid in {id(param) for i in group for param in layers[i].selected_parameters()})
                for group in groups]
    found = [sum(hooked[i] for i in group) for group in groups]
    # The two sides round differently: autograd's weight gradients in the compute dtype, the hooks' products in float32
    # from the same activations. Half precision (parameters or autocast) or TF32 matmuls on a GPU loosen the bound;
    # a weight missed by the hooks is usually a large share of its layer's norm.
    half = half or next(iter(params.values())).dtype in (torch.float16, torch.bfloat16)
    tf32 = labels.device.type == "cuda" and _tf32_matmuls()
    rtol = 5e-2 if half else 1e-2 if tf32 else 2e-3
    floor = 1e-6 * sum(expected)
    wrong = [
        (" + ".join(f"{layers[i].name!r} ({type(layers[i].module).__name__})" for i in group), f, e)
        for group, f, e in zip(groups, found, expected)
        if abs(f - e) > rtol * max(f, e) + floor
    ]
    if wrong:
        listed = "; ".join(f"{name}: hooks {f:.4g}, autograd {e:.4g}" for name, f, e in wrong[:8])
        more = f" (and {len(wrong) - 8} more)" if len(wrong) > 8 else ""
        raise ValueError(
            f"Per-example gradient norms from the layer hooks disagree with autograd on one example for {listed}"
            f"{more}. A weight of these layers is used outside the layer's own forward (e.g. read as `module.weight` "
            "by a parent module), which the hooks cannot see. Exclude these parameters with a params regex (e.g. "
            "params=r'^(?!.*rel_embeddings)'), or pass check_hooks=False if you accept the difference."
        )
    return True
