"""`NormsEngine`: the hook engine's consumer that turns each layer's input and output gradient into per-example
squared gradient norms (with the `layers` rules), for the norms-only step and the in-training collector."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .hooks import HookEngine
from .layers import (
    EmbeddingRule,
    HookedLayer,
    build_plan,
    embedding_cross_term_into,
    gram_fits_one_chunk,
    tied_cross_term,
    uses_gram_form,
)


class NormsEngine(HookEngine):
    """Per-example squared gradient norms of the selected parameters that have a hand-written rule.

    Each hooked layer owns two rows ("slots") of a `[2 * num_layers, B]` float32 buffer allocated at the first hooked
    forward of a batch; the rules write their per-example terms there and `sq` sums them once. Linear layers in the
    Gram regime that read the very same input tensor (q/k/v projections, the LoRA adapters of one block) share its
    Gram matrix `A_i A_i^T`; a tied embedding / output head pair gets its cross term in the embedding's second slot.

    Args:
        model (`nn.Module`): the model.
        selected (`dict[str, nn.Parameter]`): the selected parameters (`core.select_parameters`).
        frozen (`bool`): norms-only mode (see `HookEngine`).

    Attributes:
        selection (`frozenset[int]`): ids of the selected parameters.
        fallback (`dict[str, nn.Parameter]`), fallback_types (`list[str]`): selected parameters without a rule (for
            the `torch.func` fallback) and their module types.
    """

    def __init__(self, model: nn.Module, selected: Mapping[str, nn.Parameter], *, frozen: bool) -> None:
        self.selection = frozenset(id(param) for param in selected.values())
        layers, self.fallback, self.fallback_types = build_plan(model, selected)
        self._slot = {id(layer.module): 2 * index for index, layer in enumerate(layers)}
        super().__init__(model, layers, frozen=frozen)

    def clear_batch(self) -> None:
        self._buffer: torch.Tensor | None = None
        self._consumed = False
        self._cross: dict[int, torch.Tensor] = {}
        self._gram_key: dict[int, tuple] = {}  # module id -> key of its input, for Gram-form Linear layers
        self._gram_readers: dict[tuple, int] = {}  # key -> layers still to read the input's Gram matrix
        self._grams: dict[tuple, torch.Tensor] = {}  # key -> the input Gram matrix, while readers remain

    def start_batch(self, batch_size: int, device: torch.device) -> None:
        self._buffer = torch.zeros(2 * len(self.layers), batch_size, dtype=torch.float32, device=device)

    @property
    def sq(self) -> torch.Tensor | None:
        """Per-example squared norms `[B]` summed over the hooked layers, or None before any output gradient."""
        return self._buffer.sum(0) if self._consumed else None

    def per_layer_sq_norms(self) -> torch.Tensor | None:
        """Per-layer, per-example squared norms `[num_layers, B]` (layer order of `layers`), or None before any
        output gradient."""
        if not self._consumed:
            return None
        return self._buffer.view(len(self.layers), 2, -1).sum(1)

    def on_forward(self, layer: HookedLayer, x: torch.Tensor, output: torch.Tensor) -> None:
        if layer.rule.shares_input_gram and layer.weight:
            self._note_gram_reader(layer, x, output)

    def _note_gram_reader(self, layer: HookedLayer, x: torch.Tensor, output: torch.Tensor) -> None:
        """Count the Gram-form Linear layers that read the very same input tensor, so that its Gram matrix is formed
        once and shared by all of them."""
        batch, d_in, d_out = x.shape[0], x.shape[-1], output.shape[-1]
        seq = x.numel() // max(1, batch * d_in)
        if not (uses_gram_form(seq, d_in, d_out) and gram_fits_one_chunk(batch, seq)):
            return
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, layer.bias)
        self._gram_key[id(layer.module)] = key
        self._gram_readers[key] = self._gram_readers.get(key, 0) + 1

    def consume(self, layer: HookedLayer, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Turn one layer's input and output gradient into per-example squared norms (written to its slots)."""
        slot = self._slot[id(layer.module)]
        out = self._buffer[slot : slot + 2]
        self._consumed = True
        key = self._gram_key.pop(id(layer.module), None)
        gram_a = layer.sq_norms_into(x, grad, out, gram_a=self._grams.get(key))
        if key is not None:
            self._gram_readers[key] -= 1
            if self._gram_readers[key] > 0 and gram_a is not None:
                self._grams[key] = gram_a
            else:
                self._grams.pop(key, None)
        if layer.tied is None:
            return
        batch = grad.shape[0]
        if not isinstance(layer.rule, EmbeddingRule):  # the output head runs backward first: prepare the cross term
            ids = self.captured_input(layer.tied)
            if ids is not None:
                h = x.reshape(batch, -1, x.shape[-1]).float()
                self._cross[id(layer.tied.module)] = tied_cross_term(ids.reshape(batch, -1), h, grad.float())
            return
        cross = self._cross.pop(id(layer.module), None)
        if cross is not None:  # 2 <g_emb, g_head>, in the embedding's free second slot
            embedding_cross_term_into(x.reshape(batch, -1), grad, layer.module.padding_idx, cross, out[1])
