"""The hook engine: layer inputs from forward hooks, output gradients from tensor hooks, one consumer per use.

`HookEngine` captures, for every hooked layer (`layers.HookedLayer`), the layer's input in the forward and its output
gradient in the backward, and hands each pair to `consume` as soon as the gradient arrives. Its consumers are
`norm_engine.NormsEngine` (per-example gradient norms) and `projection.ProjectionEngine` (projected per-example
gradients). `run_frozen_backward` drives an engine through one forward and the activation-only backward of a batch.

Layer inputs are captured by forward hooks and output gradients by tensor hooks registered on the outputs (no
``register_full_backward_hook``). With `frozen=True` (norms-only) every parameter is frozen for the duration of the
call and the graph starts at the first hooked layer's output, so no weight-gradient products are computed and no
``.grad`` is touched; the cost is a forward, the activation backward and the consumer's terms.

Position/token-type embeddings looked up with ids shared by the batch (BERT's and GPT-2's default `(1, T)` position
ids) are expanded per example inside the hook, so the model's own position ids are kept (RoBERTa's padding-aware
ones included) and their per-example gradients stay separable. A module with selected parameters that is called twice
in one forward (parameter reuse, gradient checkpointing) is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..tasks import resolve_task
from .core import per_example_losses, prepare_batch
from .layers import EmbeddingRule, HookedLayer
from .masks import attention_mask_2d, four_d_mask


class HookEngine:
    """Forward hooks capture layer inputs; tensor hooks on the outputs hand the output gradients to `consume`.

    Use it as a context manager around the forward (and the backward); `reset()` forgets a batch. Subclasses
    implement `consume` and may extend `clear_batch` (per-batch results), `start_batch` (allocate them at the first
    hooked forward of a batch) and `on_forward` (look at a layer's input and output).

    With `frozen=True` (norms-only), a layer output that does not require grad is made differentiable by adding a
    zero scalar leaf (`anchor`), so the backward (`torch.autograd.grad(total, engine.anchor)`) starts there and no
    parameter gradient is formed. With `frozen=False` (inside training) only outputs that already require grad are
    hooked and the training backward is left untouched.

    Args:
        model (`nn.Module`): the model whose root forward gives the batch size.
        layers (sequence of `HookedLayer`): the layers to hook.
        frozen (`bool`): norms-only mode (see above).
    """

    def __init__(self, model: nn.Module, layers: Sequence[HookedLayer], *, frozen: bool) -> None:
        self.model = model
        self.frozen = frozen
        self.layers = list(layers)
        self._grad_hooks = {id(layer.module): functools.partial(self._grad_hook, layer) for layer in self.layers}
        self._handles: list[Any] = []
        self.reset()

    # ---- what subclasses provide -----------------------------------------------------------------------------------

    def clear_batch(self) -> None:
        """Forget the results of the current batch (at `reset` and when a new forward follows a backward)."""

    def start_batch(self, batch_size: int, device: torch.device) -> None:
        """Called at the first hooked forward of a batch, once its size is known."""

    def on_forward(self, layer: HookedLayer, x: torch.Tensor, output: torch.Tensor) -> None:
        """Called for each hooked layer's forward, after its input `x` was captured."""

    def consume(self, layer: HookedLayer, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Use one layer's input `x` and output gradient `grad` (both detached, batch first)."""
        raise NotImplementedError

    # ---- capture ---------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything about the current batch."""
        self._pending: dict[int, torch.Tensor] = {}
        self.batch_size: int | None = None
        self._in_backward = False
        self._root_batch: int | None = None
        self.anchor: torch.Tensor | None = None
        self.half_precision = False  # whether an output gradient arrived in float16/bfloat16 (autocast)
        self.clear_batch()

    def captured_input(self, layer: HookedLayer) -> torch.Tensor | None:
        """The input `layer` saw in this batch's forward, while its output gradient has not arrived yet."""
        return self._pending.get(id(layer.module))

    def __enter__(self) -> HookEngine:
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True))
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(functools.partial(self._forward_hook, layer),
                                                                    with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _root_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Record the batch size from the model's own input (to expand broadcast position embeddings)."""
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds", args[0] if args else None)
        self._root_batch = ids.shape[0] if isinstance(ids, torch.Tensor) and ids.dim() >= 1 else None

    def _forward_hook(self, layer: HookedLayer, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"Layer {layer.name!r} ({type(module).__name__}) returned {type(output).__name__}, not a tensor; "
                "exclude its parameters with a params regex."
            )
        if not self.frozen and not output.requires_grad:
            return None  # a no-grad forward (evaluation) inside training: nothing to record
        if self._in_backward:  # a new forward after a backward: start a new batch
            self._pending.clear()
            self.batch_size, self._in_backward = None, False
            self.clear_batch()
        if id(module) in self._pending:
            raise ValueError(
                f"Module {layer.name!r} ({type(module).__name__}) was called twice in one forward pass (parameter "
                "reuse, or gradient checkpointing recomputing the forward). Per-example norms need cross terms for "
                "reused parameters; exclude this module's parameters with a params regex or disable gradient "
                "checkpointing."
            )
        x = args[0] if args else next(iter(kwargs.values()))
        batch, replaced = x.shape[0], False
        expected = self._root_batch if self._root_batch is not None else self.batch_size
        if isinstance(layer.rule, EmbeddingRule) and batch == 1 and output.shape[0] == 1 and (expected or 1) > 1:
            # ids shared by the batch (BERT/GPT-2 default position_ids of shape (1, T)): the output is broadcast
            # over examples downstream; give each example its own copy so its output gradient stays per example
            x = x.expand(expected, *x.shape[1:])
            output = output.expand(expected, *output.shape[1:]).clone()
            batch, replaced = expected, True
        if self.batch_size is None:
            self.batch_size = batch
            self.start_batch(batch, output.device)
        elif batch != self.batch_size or output.shape[0] != batch:
            raise ValueError(
                f"Layer {layer.name!r} sees a batch dimension of {batch} (output {tuple(output.shape)}) while the "
                f"batch has {self.batch_size} examples: its inputs are shared across examples, so per-example "
                "gradients are not separable. Pass per-example inputs or exclude it with a params regex."
            )
        self._pending[id(module)] = x.detach()
        self.on_forward(layer, x, output)
        if self.frozen and not output.requires_grad:
            if self.anchor is None:
                self.anchor = torch.zeros((), device=output.device, requires_grad=True)
            output, replaced = output + self.anchor.to(output.dtype), True
        output.register_hook(self._grad_hooks[id(module)])
        return output if replaced else None

    def _grad_hook(self, layer: HookedLayer, grad: torch.Tensor) -> None:
        x = self._pending.pop(id(layer.module), None)
        if x is None:
            return
        self._in_backward = True
        self.half_precision |= grad.dtype in (torch.float16, torch.bfloat16)
        self.consume(layer, x, grad.detach())


def run_frozen_backward(
    model: nn.Module,
    batch: Mapping[str, Any],
    engine: HookEngine,
    task: str = "auto",
    *,
    check_labels: bool = True,
    causal_mask: bool | None = None,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Forward with `engine`'s hooks, per-example losses, and one backward of their sum to the engine's anchor.

    Call inside `scoring_mode(model, freeze=True)`. Returns `(inputs, labels, losses (detached), valid, task)`.

    Args:
        check_labels (`bool`, defaults to `True`): range-check class ids (a host sync; off inside a CUDA graph).
        causal_mask (`bool`, *optional*): hand the model a 4-D additive mask (causal or bidirectional) built from the
            2-D `attention_mask` instead of the 2-D mask itself (HF's own mask creation syncs on the mask's values).
    """
    inputs, labels = prepare_batch(model, batch)
    feed = inputs
    if causal_mask is not None:
        dtype = next(model.parameters()).dtype
        feed = {**inputs, "attention_mask": four_d_mask(attention_mask_2d(inputs), causal_mask, dtype)}
    with engine:
        outputs = model(**feed)
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
        resolved = resolve_task(model, task, logits=logits)
        losses, valid = per_example_losses(logits, labels, resolved, check=check_labels)
        del outputs, logits  # the loss graph keeps what it needs; the logits themselves can go before the backward
        total = torch.where(valid, losses, torch.zeros_like(losses)).sum()
        if engine.anchor is not None and total.requires_grad:
            torch.autograd.grad(total, engine.anchor, allow_unused=True)
    return inputs, labels, losses.detach(), valid, resolved
