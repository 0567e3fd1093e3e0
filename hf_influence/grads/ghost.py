"""Exact per-example gradient norms at about the cost of one training step ("ghost norms").

For a layer with inputs ``A_i`` (``T x d``) and output gradients ``B_i = dL_i/d(output)`` (``T x p``), the
per-example weight gradient is ``G_i = B_i^T A_i``. Its squared Frobenius norm is computed without materialising
``G_i`` for the whole model at once (Li, Tramer, Liang, Hashimoto 2022, arXiv:2110.05679, Eq. 3; Bu et al. 2023,
arXiv:2210.00038):

- Linear / HF ``Conv1D``: the Gram form ``<A_i A_i^T, B_i B_i^T>_F`` when ``T (p + d) <= p d`` (fewer FLOPs), else
  ``G_i`` instantiated by ``bmm`` in bounded chunks of examples and discarded; bias ``||sum_t b_it||^2``.
- Embedding: ``sum_v ||sum_{t: x_it = v} b_it||^2`` by segment sums over unique (example, id) keys, ``padding_idx``
  tokens excluded (PyTorch gives them no gradient).
- LayerNorm / RMSNorm: ``sum_t xhat_it * b_it`` instantiated (``xhat`` recomputed from the saved input); bias
  ``sum_t b_it``.
- Tied input/output embeddings (GPT-2 ``lm_head = wte``): ``||g_emb||^2 + ||g_head||^2 + 2 <g_emb, g_head>`` with the
  exact cross term ``<g_emb, g_head> = sum_{t,s} c_s[x_t] (h_s . b_t)`` (``c`` = logit gradients, ``h`` = final hidden
  states).
- Any other module owning selected parameters: per-example gradients with ``torch.func`` (``vmap(grad)`` over
  ``functional_call``, in chunks), logged once per module type.

Position/token-type embeddings looked up with ids shared by the batch (BERT's and GPT-2's default `(1, T)` position
ids) are expanded per example inside the hook, so the model's own position ids are kept (RoBERTa's padding-aware
ones included) and their per-example gradients stay separable.

Limitations: a parameter used outside its owning module's forward (e.g. `F.linear(h, self.embed.weight)` in a parent
module, DeBERTa's `rel_embeddings.weight`) is invisible to the hooks; such models need that weight excluded (params
regex). `PerExampleGradNorms` detects it: on its first batch it compares every hooked layer's norm for one example
with autograd's gradient of that example's loss (`check_hooks`, once per model and parameter selection) and names the
layers that disagree. A module with selected parameters that is called twice in one forward (parameter reuse,
gradient checkpointing) is refused.

Layer inputs are captured by forward hooks and output gradients by tensor hooks registered on the outputs (no
``register_full_backward_hook``). In norms-only mode every parameter is frozen for the duration of the call and the
graph starts at the first hooked layer's output, so no weight-gradient products are computed and no ``.grad`` is
touched; the cost is a forward, the activation backward and the norm terms.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

from .core import (
    ParamSpec,
    ScoringMode,
    infer_task,
    per_example_losses,
    prepare_batch,
    select_parameters,
)

logger = logging.get_logger(__name__)

#: Bound on the transient memory of an instantiated per-example weight gradient chunk (or a Gram chunk).
_CHUNK_BYTES = 256 * 2**20
_LOGGED_FALLBACK_TYPES: set[str] = set()
#: Per model (weakly held): the parameter selections whose hooks already agreed with autograd (`check_hooks`).
_CHECKED_SELECTIONS: weakref.WeakKeyDictionary[nn.Module, set[frozenset[int]]] = weakref.WeakKeyDictionary()

try:  # transformers' GPT-2 style "Conv1D" (weight stored as [in, out])
    from transformers.pytorch_utils import Conv1D as _HFConv1D
except ImportError:  # pragma: no cover - very old transformers
    _HFConv1D = None

#: Parameter attributes each layer kind has a hand-written rule for.
_SUPPORTED_ATTRS: dict[str, frozenset[str]] = {
    "linear": frozenset({"weight", "bias"}),
    "conv1d": frozenset({"weight", "bias"}),
    "embedding": frozenset({"weight"}),
    "layernorm": frozenset({"weight", "bias"}),
    "rmsnorm": frozenset({"weight"}),
}


def _rms_eps(module: nn.Module) -> float | None:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, (float, int)) and not isinstance(value, bool):
            return float(value)
    return None


def layer_kind(module: nn.Module) -> str | None:
    """The hand-written rule for `module` (`"linear"`, `"conv1d"`, `"embedding"`, `"layernorm"`, `"rmsnorm"`), or None.

    Exact types only: a subclass may use its weights differently (e.g. `MultiheadAttention.out_proj`) and falls back to
    `torch.func`. RMSNorm is recognised by a class name ending in "RMSNorm" with a single `weight` and an epsilon
    attribute (Llama, Mistral, Qwen2, ...; the Gemma `1 + weight` form has the same weight gradient).
    """
    kind = type(module)
    if kind is nn.Linear:
        return "linear"
    if _HFConv1D is not None and kind is _HFConv1D:
        return "conv1d"
    if kind is nn.Embedding:
        return "embedding"
    if kind is nn.LayerNorm:
        return "layernorm"
    params = {k for k, v in module._parameters.items() if v is not None}
    if kind.__name__.endswith("RMSNorm") and params == {"weight"} and _rms_eps(module) is not None:
        return "rmsnorm"
    return None


@dataclass(eq=False)
class _Layer:
    name: str
    module: nn.Module
    kind: str
    weight: bool = False
    bias: bool = False
    tied: _Layer | None = field(default=None, repr=False)  # the other user of a tied embedding / output weight


def build_plan(
    model: nn.Module, selected: Mapping[str, nn.Parameter]
) -> tuple[list[_Layer], dict[str, nn.Parameter], list[str]]:
    """Assign each selected parameter to a hooked layer rule or to the `torch.func` fallback.

    Returns:
        `(layers, fallback_params, fallback_module_types)`.

    Raises:
        ValueError: if a selected parameter is shared by modules in a way other than tied input/output embeddings.
    """
    by_id = {id(p): (name, p) for name, p in selected.items()}
    owners: dict[int, dict[int, tuple[str, nn.Module, str]]] = {pid: {} for pid in by_id}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is not None and id(param) in by_id:
                owners[id(param)].setdefault(id(module), (module_name, module, attr))
    layers: dict[int, _Layer] = {}
    fallback: dict[str, nn.Parameter] = {}
    fallback_types: list[str] = []

    def layer_for(module_name: str, module: nn.Module) -> _Layer | None:
        if id(module) not in layers:
            kind = layer_kind(module)
            if kind is None:
                return None
            layers[id(module)] = _Layer(module_name, module, kind)
        return layers[id(module)]

    for pid, users in owners.items():
        param_name, param = by_id[pid]
        users = list(users.values())
        if len(users) == 2:
            (n1, m1, a1), (n2, m2, a2) = users
            if layer_kind(m2) == "embedding":
                (n1, m1, a1), (n2, m2, a2) = (n2, m2, a2), (n1, m1, a1)
            if layer_kind(m1) == "embedding" and layer_kind(m2) == "linear" and a1 == a2 == "weight":
                emb, head = layer_for(n1, m1), layer_for(n2, m2)
                emb.weight = head.weight = True
                emb.tied, head.tied = head, emb
                continue
        if len(users) != 1:
            where = ", ".join(f"{n or '<root>'}.{a} ({type(m).__name__})" for n, m, a in users)
            raise ValueError(
                f"Parameter {param_name!r} is shared by several modules ({where}). Only tied input/output embeddings "
                "(nn.Embedding + nn.Linear) are supported; exclude this parameter with a params regex or untie it."
            )
        module_name, module, attr = users[0]
        layer = layer_for(module_name, module)
        if layer is None or attr not in _SUPPORTED_ATTRS[layer.kind]:
            fallback[param_name] = param
            type_name = type(module).__name__
            if type_name not in fallback_types:
                fallback_types.append(type_name)
            continue
        setattr(layer, attr, True)
    return [layer for layer in layers.values() if layer.weight or layer.bias], fallback, fallback_types


# ----------------------------------------------------------------------------------------------------------------
# Per-layer math (shared by the norms-only path and the in-training collector)
#
# Every term is written straight into a row of the engine's `[num_slots, B]` buffer (`out=`), summed once at the end:
# on a GPU the step is launch-bound at typical batch sizes, so each rule is a handful of kernels with no host sync.
# ----------------------------------------------------------------------------------------------------------------

#: Embedding layers use the masked Gram form (no sort, no device sync) up to this sequence length, segment sums above.
_EMBEDDING_GRAM_MAX_SEQ = 1024


def _chunk(batch_size: int, bytes_per_example: int) -> int:
    return max(1, min(batch_size, _CHUNK_BYTES // max(1, bytes_per_example)))


@functools.lru_cache(maxsize=16)
def _one(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A cached scalar 1 (the `+ 1` of the folded bias term) so that no fill kernel is launched per layer."""
    return torch.ones((), dtype=dtype, device=device)


def _rowwise_dot(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> None:
    """`out[i] = <x[i], y[i]>` for `[n, ...]` tensors: one batched matrix-vector product written into `out` `[n]`."""
    n = x.shape[0]
    torch.bmm(x.reshape(n, 1, -1), y.reshape(n, -1, 1), out=out.view(n, 1, 1))


def uses_gram_form(seq: int, d_in: int, d_out: int) -> bool:
    """Whether a Linear layer's weight term is cheaper in the Gram form (`T (p + d) <= p d`) than instantiated."""
    return seq * (d_in + d_out) <= d_in * d_out


def gram_fits_one_chunk(batch: int, seq: int) -> bool:
    """Whether the `[B, T, T]` Gram matrices of a whole batch fit the chunk memory bound (then they can be shared)."""
    return _chunk(batch, 2 * seq * seq * 4) >= batch


def linear_sq_norms_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *, weight: bool = True,
                         bias: bool = False, gram_a: torch.Tensor | None = None) -> torch.Tensor | None:
    """Per-example squared norms of a Linear layer's weight (and bias) gradient, written into `out` `[2, B]`.

    `a` `[B, T, d]` are the inputs, `b` `[B, T, p]` the output gradients (float32). With `weight`, `out[0]` gets
    `||B_i^T A_i||_F^2` by the Gram form `<A_i A_i^T, B_i B_i^T>` when `T (p + d) <= p d` (fewer FLOPs), else by
    instantiating `B_i^T A_i`, both in chunks of examples of bounded memory. With `bias`, the bias term
    `||sum_t b_it||^2` is folded into the Gram form (`A_i A_i^T + 1`, i.e. a column of ones appended to `A_i`) and
    otherwise written to `out[1]`.

    `gram_a` is an input Gram matrix `[B, T, T]` already computed for this `a` and `bias` by another layer that reads
    the same input (q/k/v projections, LoRA adapters); it is used as is. Returns the input Gram matrix when it was
    formed for the whole batch at once (so that such layers can reuse it), else None.
    """
    batch, seq, d = a.shape
    p = b.shape[-1]
    gram = uses_gram_form(seq, d, p)
    if bias and not (weight and gram):  # the bias term in its own slot unless the Gram form absorbs it
        summed = b.sum(1)
        _rowwise_dot(summed, summed, out[1])
    if not weight:
        return None
    if gram:
        step = batch if gram_a is not None else _chunk(batch, 2 * seq * seq * 4)
        one = _one(a.device, a.dtype) if bias else None
        for s in range(0, batch, step):
            aa, bb = a[s : s + step], b[s : s + step]
            if gram_a is None or step < batch:
                gram_a = torch.baddbmm(one, aa, aa.transpose(1, 2)) if bias else torch.bmm(aa, aa.transpose(1, 2))
            _rowwise_dot(gram_a, torch.bmm(bb, bb.transpose(1, 2)), out[0, s : s + step])
        return gram_a if step >= batch else None
    step = _chunk(batch, p * d * 4)
    for s in range(0, batch, step):
        grads = torch.bmm(b[s : s + step].transpose(1, 2), a[s : s + step])
        _rowwise_dot(grads, grads, out[0, s : s + step])
    return None


def linear_weight_sq_norms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`||B_i^T A_i||_F^2` per example for inputs `a` `[B, T, d]` and output gradients `b` `[B, T, p]` (float32)."""
    out = torch.zeros(2, a.shape[0], dtype=torch.float32, device=a.device)
    linear_sq_norms_into(a, b, out)
    return out.sum(0)


def embedding_sq_norms_into(
    ids: torch.Tensor, b: torch.Tensor, num_embeddings: int, padding_idx: int | None, out: torch.Tensor
) -> None:
    """`sum_v ||sum_{t: x_it = v} b_it||^2` per example into `out` `[B]`; `ids` `[B, T]`, `b` `[B, T, d]` float32.

    Up to `_EMBEDDING_GRAM_MAX_SEQ` tokens: the masked Gram form `sum_{t,s} [x_it = x_is] (b_it . b_is)` (batched
    products, no sort and no host sync); beyond: segment sums over unique (example, id) keys. Tokens equal to
    `padding_idx` are excluded (PyTorch gives their row no gradient).
    """
    batch, seq = ids.shape
    if seq <= _EMBEDDING_GRAM_MAX_SEQ:
        step = _chunk(batch, 2 * seq * seq * 4)
        for s in range(0, batch, step):
            chunk_ids, bb = ids[s : s + step], b[s : s + step]
            different = chunk_ids.unsqueeze(2) != chunk_ids.unsqueeze(1)
            if padding_idx is not None:
                different |= (chunk_ids == padding_idx).unsqueeze(2)
            gram = torch.bmm(bb, bb.transpose(1, 2)).masked_fill_(different, 0.0)
            torch.sum(gram, (1, 2), out=out[s : s + step])
        return
    keys = torch.arange(batch, device=ids.device).unsqueeze(1) * num_embeddings + ids.long()
    rows = b
    if padding_idx is not None:
        keep = ids != padding_idx
        keys, rows = keys[keep], rows[keep]
    else:
        keys, rows = keys.reshape(-1), rows.reshape(-1, b.shape[-1])
    unique, inverse = torch.unique(keys, return_inverse=True)
    sums = torch.zeros(unique.shape[0], b.shape[-1], dtype=b.dtype, device=b.device).index_add_(0, inverse, rows)
    out.zero_().index_add_(0, unique // num_embeddings, sums.square().sum(-1))


def embedding_sq_norms(
    ids: torch.Tensor, b: torch.Tensor, num_embeddings: int, padding_idx: int | None
) -> torch.Tensor:
    """`sum_v ||sum_{t: x_it = v} b_it||^2` per example (see `embedding_sq_norms_into`)."""
    out = torch.zeros(ids.shape[0], dtype=torch.float32, device=b.device)
    embedding_sq_norms_into(ids, b, num_embeddings, padding_idx, out)
    return out


def _normalized_input(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
    """`xhat` of a LayerNorm (`(x - mean) / sqrt(var + eps)`) or RMSNorm (`x / sqrt(mean(x^2) + eps)`), float32."""
    x = x.float()
    if layer.kind == "layernorm":
        return F.layer_norm(x, layer.module.normalized_shape, eps=layer.module.eps)
    return F.rms_norm(x, (x.shape[-1],), eps=_rms_eps(layer.module))


def layer_sq_norms_into(layer: _Layer, x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, *,
                        gram_a: torch.Tensor | None = None) -> torch.Tensor | None:
    """Per-example squared gradient norms of `layer`'s selected parameters into `out` `[2, B]` (summed later).

    For a Linear/Conv1D layer, `gram_a` and the return value are the shareable input Gram matrix of
    `linear_sq_norms_into`; other layers ignore `gram_a` and return None.
    """
    batch = grad.shape[0]
    if layer.kind in ("linear", "conv1d"):
        a = x.reshape(batch, -1, x.shape[-1]).float()
        b = grad.reshape(batch, -1, grad.shape[-1]).float()
        return linear_sq_norms_into(a, b, out, weight=layer.weight, bias=layer.bias, gram_a=gram_a)
    if layer.kind == "embedding":
        ids = x.reshape(batch, -1)
        b = grad.reshape(batch, ids.shape[1], -1).float()
        embedding_sq_norms_into(ids, b, layer.module.num_embeddings, layer.module.padding_idx, out[0])
        return None
    width = math.prod(layer.module.weight.shape)
    b = grad.reshape(batch, -1, width).float()
    if layer.weight:
        summed = (_normalized_input(layer, x.reshape(batch, -1, width)) * b).sum(1)
        _rowwise_dot(summed, summed, out[0])
    if layer.bias:
        summed = b.sum(1)
        _rowwise_dot(summed, summed, out[1])
    return None


def layer_sq_norms(layer: _Layer, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per-example squared gradient norm `[B]` of `layer`'s selected parameters from its input and output gradient."""
    out = torch.zeros(2, grad.shape[0], dtype=torch.float32, device=grad.device)
    layer_sq_norms_into(layer, x, grad, out)
    return out.sum(0)


def tied_cross_term(ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """`U[i, t] = sum_s c_is[x_it] h_is` (`[B, T_emb, d]`), so that `<g_emb, g_head>_i = sum_t b_it . U[i, t]`.

    Args:
        ids: embedding input ids `[B, T_emb]`; h: head inputs `[B, T_head, d]`; c: head output gradients
            `[B, T_head, V]` (float32).
    """
    gathered = c.gather(2, ids.long().unsqueeze(1).expand(-1, c.shape[1], -1))  # [B, T_head, T_emb]
    return torch.bmm(gathered.transpose(1, 2), h)


# ----------------------------------------------------------------------------------------------------------------
# Hook engine
# ----------------------------------------------------------------------------------------------------------------


class _HookEngine:
    """Forward hooks capture layer inputs; tensor hooks on the outputs consume the output gradients.

    Each hooked layer owns two rows ("slots") of a `[2 * num_layers, B]` float32 buffer allocated at the first hooked
    forward of a batch; the rules write their per-example terms there and `sq` sums them once.

    With `frozen=True` (norms-only), a layer output that does not require grad is made differentiable by adding a
    zero scalar leaf (`anchor`), so the backward (`torch.autograd.grad(total, engine.anchor)`) starts there and no
    parameter gradient is formed. With `frozen=False` (inside training) only outputs that already require grad are
    hooked and the training backward is left untouched.
    """

    def __init__(self, model: nn.Module, selected: Mapping[str, nn.Parameter], *, frozen: bool) -> None:
        self.model = model
        self.selection = frozenset(id(param) for param in selected.values())
        self.layers, self.fallback, self.fallback_types = build_plan(model, selected)
        self.frozen = frozen
        self._handles: list[Any] = []
        self.reset()

    @property
    def layers(self) -> list[_Layer]:
        return self._layers

    @layers.setter
    def layers(self, layers: list[_Layer]) -> None:
        self._layers = list(layers)
        self._slot = {id(layer.module): 2 * index for index, layer in enumerate(self._layers)}
        self._grad_hooks = {id(layer.module): functools.partial(self._grad_hook, layer) for layer in self._layers}

    def reset(self) -> None:
        self._buffer: torch.Tensor | None = None
        self._consumed = False
        self.batch_size: int | None = None
        self._pending: dict[int, torch.Tensor] = {}
        self._cross: dict[int, torch.Tensor] = {}
        self._gram_key: dict[int, tuple] = {}  # module id -> key of its input, for Gram-form Linear layers
        self._gram_readers: dict[tuple, int] = {}  # key -> layers still to read the input's Gram matrix
        self._grams: dict[tuple, torch.Tensor] = {}  # key -> the input Gram matrix, while readers remain
        self._in_backward = False
        self._root_batch: int | None = None
        self.anchor: torch.Tensor | None = None
        self.half_precision = False  # whether an output gradient arrived in float16/bfloat16 (autocast)

    @property
    def sq(self) -> torch.Tensor | None:
        """Per-example squared norms `[B]` summed over the hooked layers, or None before any output gradient."""
        return self._buffer.sum(0) if self._consumed else None

    def __enter__(self) -> _HookEngine:
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True))
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(functools.partial(self._forward_hook, layer),
                                                                    with_kwargs=True))
        return self

    def _root_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Record the batch size from the model's own input (to expand broadcast position embeddings)."""
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds", args[0] if args else None)
        self._root_batch = ids.shape[0] if isinstance(ids, torch.Tensor) and ids.dim() >= 1 else None

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, layer: _Layer, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"Layer {layer.name!r} ({type(module).__name__}) returned {type(output).__name__}, not a tensor; "
                "exclude its parameters with a params regex."
            )
        if not self.frozen and not output.requires_grad:
            return None  # a no-grad forward (evaluation) inside training: nothing to record
        if self._in_backward:  # a new forward after a backward: start a new batch
            for state in (self._pending, self._cross, self._gram_key, self._gram_readers, self._grams):
                state.clear()
            self._buffer, self._consumed, self.batch_size, self._in_backward = None, False, None, False
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
        if layer.kind == "embedding" and batch == 1 and output.shape[0] == 1 and (expected or 1) > 1:
            # ids shared by the batch (BERT/GPT-2 default position_ids of shape (1, T)): the output is broadcast
            # over examples downstream; give each example its own copy so its output gradient stays per example
            x = x.expand(expected, *x.shape[1:])
            output = output.expand(expected, *output.shape[1:]).clone()
            batch, replaced = expected, True
        if self.batch_size is None:
            self.batch_size = batch
            self._buffer = torch.zeros(2 * len(self._layers), batch, dtype=torch.float32, device=output.device)
        elif batch != self.batch_size or output.shape[0] != batch:
            raise ValueError(
                f"Layer {layer.name!r} sees a batch dimension of {batch} (output {tuple(output.shape)}) while the "
                f"batch has {self.batch_size} examples: its inputs are shared across examples, so per-example "
                "gradients are not separable. Pass per-example inputs or exclude it with a params regex."
            )
        self._pending[id(module)] = x.detach()
        if layer.kind in ("linear", "conv1d") and layer.weight:
            self._note_gram_reader(layer, x, output)
        if self.frozen and not output.requires_grad:
            if self.anchor is None:
                self.anchor = torch.zeros((), device=output.device, requires_grad=True)
            output, replaced = output + self.anchor.to(output.dtype), True
        output.register_hook(self._grad_hooks[id(module)])
        return output if replaced else None

    def _note_gram_reader(self, layer: _Layer, x: torch.Tensor, output: torch.Tensor) -> None:
        """Count the Gram-form Linear layers that read the very same input tensor (q/k/v projections, the LoRA
        adapters of one block), so that its Gram matrix `A_i A_i^T` is formed once and shared by all of them."""
        batch, d_in, d_out = x.shape[0], x.shape[-1], output.shape[-1]
        seq = x.numel() // max(1, batch * d_in)
        if not (uses_gram_form(seq, d_in, d_out) and gram_fits_one_chunk(batch, seq)):
            return
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, layer.bias)
        self._gram_key[id(layer.module)] = key
        self._gram_readers[key] = self._gram_readers.get(key, 0) + 1

    def _grad_hook(self, layer: _Layer, grad: torch.Tensor) -> None:
        x = self._pending.pop(id(layer.module), None)
        if x is None:
            return
        self._in_backward = True
        self.consume(layer, x, grad.detach())

    def consume(self, layer: _Layer, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Turn one layer's input and output gradient into per-example squared norms (written to its slots)."""
        slot = self._slot[id(layer.module)]
        out = self._buffer[slot : slot + 2]
        self._consumed = True
        self.half_precision |= grad.dtype in (torch.float16, torch.bfloat16)
        key = self._gram_key.pop(id(layer.module), None)
        gram_a = layer_sq_norms_into(layer, x, grad, out, gram_a=self._grams.get(key))
        if key is not None:
            self._gram_readers[key] -= 1
            if self._gram_readers[key] > 0 and gram_a is not None:
                self._grams[key] = gram_a
            else:
                self._grams.pop(key, None)
        if layer.tied is None:
            return
        partner = id(layer.tied.module)
        if layer.kind == "linear":  # the output head runs backward first: prepare the cross term
            ids = self._pending.get(partner)
            if ids is not None:
                h = x.reshape(grad.shape[0], -1, x.shape[-1]).float()
                self._cross[partner] = tied_cross_term(ids.reshape(grad.shape[0], -1), h, grad.float())
            return
        cross = self._cross.pop(id(layer.module), None)
        if cross is not None:  # 2 <g_emb, g_head>, in the embedding's free second slot
            ids = x.reshape(grad.shape[0], -1)
            b = grad.reshape(grad.shape[0], ids.shape[1], -1).float()
            if layer.module.padding_idx is not None:
                b = b.masked_fill((ids == layer.module.padding_idx).unsqueeze(-1), 0.0)
            _rowwise_dot(b, cross, out[1])
            out[1].mul_(2.0)


# ----------------------------------------------------------------------------------------------------------------
# torch.func fallback for modules without a rule
# ----------------------------------------------------------------------------------------------------------------


def _attention_mask_2d(inputs: Mapping[str, Any]) -> torch.Tensor:
    """The batch's 2-D `attention_mask`, or all ones shaped like its `input_ids` / `inputs_embeds`."""
    mask2d = inputs.get("attention_mask")
    if mask2d is None:
        ids = inputs.get("input_ids", inputs.get("inputs_embeds"))
        mask2d = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
    return mask2d


def _likely_causal(model: nn.Module, task: str) -> bool:
    """The 4-D mask to try first: causal for causal LMs and decoder configs (the other one is tried next)."""
    return task == "causal_lm" or bool(getattr(getattr(model, "config", None), "is_decoder", False))


def _four_d_mask(mask2d: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """Additive `[B, 1, T, T]` mask (0 = attend, dtype minimum = masked) from a 2-D padding mask; float32 for a
    non-floating `dtype`."""
    dtype = dtype if dtype.is_floating_point else torch.float32
    keep = mask2d.bool()[:, None, None, :].expand(-1, 1, mask2d.shape[1], -1)
    if causal:
        keep = keep & torch.ones(mask2d.shape[1], mask2d.shape[1], dtype=torch.bool, device=mask2d.device).tril()
    return torch.zeros(keep.shape, dtype=dtype, device=mask2d.device).masked_fill(~keep, torch.finfo(dtype).min)


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
    mask2d = _attention_mask_2d(mapped)
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
    first_causal = _likely_causal(model, task)
    tried = []
    for causal in (first_causal, not first_causal):
        grads, losses = per_example(detached, mapped, labels, _four_d_mask(mask2d, causal, dtype))
        tried.append(float((losses - reference_losses).abs().max()))
        if torch.allclose(losses, reference_losses, rtol=1e-4, atol=1e-5):
            return sum(g.float().reshape(batch_size, -1).square().sum(-1) for g in grads.values())
    raise RuntimeError(
        f"The torch.func fallback could not reproduce the model's per-example losses (max abs difference {tried}) "
        "with either a bidirectional or a causal 4-D attention mask. Exclude the parameters of "
        f"{sorted({type(m).__name__ for m in model.modules() if any(p is q for p in m._parameters.values() for q in params.values())})}"  # noqa: E501
        " with a params regex."
    )


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


class PerExampleGradNorms:
    """Exact per-example gradient norms for one model, reusable across batches (the plan is built once).

    Building the hook plan (which rule each selected parameter gets) and the eval/frozen-mode switch walks the whole
    model; this object does it once, so calling it per batch costs one forward, the activation backward and the
    per-layer norm terms. `per_example_grad_norms` is the one-call form. Build it after the model's structure is final
    (adapters added); the model's weights may change between calls.

    On a GPU at small or medium batch sizes that step is bound by Python and kernel launches rather than by the GPU;
    `cuda_graph=True` captures it once per batch signature and replays it (see `hf_influence.grads.graphs` for what
    that requires: static shapes, no `torch.func` fallback modules, a model whose losses a 4-D attention mask
    reproduces).

    Args:
        model (`nn.Module`): a transformers model (or PEFT model) returning `logits`.
        params (`None`, `str` or iterable, *optional*): see `per_example_grad_norms`.
        task (`str`, defaults to `"auto"`): `"sequence_classification"`, `"causal_lm"` or `"auto"`.
        fallback_chunk_size (`int`, defaults to 8): examples per `vmap` chunk for modules without a hand-written rule.
        cuda_graph (`bool`, defaults to `False`): capture and replay the step as CUDA graphs (CUDA models only).
        max_graphs (`int`, defaults to 8): batch signatures kept captured with `cuda_graph` (least recently used out).
        check_hooks (`bool`, defaults to `True`): on the first batch, compare every hooked layer's norm for one
            example with autograd's (`check_hooks_against_autograd`; once per model and parameter selection, about
            the cost of two single-example steps) and raise if a weight is used outside its layer's forward.
        train_mode (`bool`, defaults to `False`): run the model in train mode (dropout active, e.g. LoRA dropout:
            the DEALRec authors' effort score) instead of eval mode; each call then draws fresh dropout masks from
            torch's random generator (seed it for reproducible norms). Not with `cuda_graph`.

    Example:
        ```python
        >>> from hf_influence.grads import PerExampleGradNorms
        >>> grad_norms = PerExampleGradNorms(model)
        >>> norms = torch.cat([grad_norms(batch) for batch in loader])
        ```
    """

    def __init__(
        self,
        model: nn.Module,
        params: ParamSpec = None,
        *,
        task: str = "auto",
        fallback_chunk_size: int = 8,
        cuda_graph: bool = False,
        max_graphs: int = 8,
        check_hooks: bool = True,
        train_mode: bool = False,
    ) -> None:
        if train_mode and cuda_graph:
            raise ValueError("train_mode=True draws dropout masks at every call, which a captured CUDA graph would "
                             "replay unchanged; use cuda_graph=False.")
        self.model = model
        self.task = task
        self.train_mode = train_mode
        self.fallback_chunk_size = fallback_chunk_size
        self._engine = _HookEngine(model, select_parameters(model, params), frozen=True)
        self._check_pending = check_hooks
        self._mode = ScoringMode(model)
        if train_mode and self._engine.fallback:
            raise ValueError(
                f"train_mode=True cannot use the torch.func fallback of module type(s) "
                f"{', '.join(self._engine.fallback_types)} (its per-example replays would draw other dropout masks). "
                "Exclude their parameters with a params regex, or use train_mode=False."
            )
        _log_fallback(self._engine.fallback_types)
        self._graphs = None
        if cuda_graph:
            from .graphs import NormsGraphCache

            self._graphs = NormsGraphCache(self, max_graphs)

    @property
    def cuda_graph(self) -> bool:
        return self._graphs is not None

    def _eager(
        self, batch: Mapping[str, Any], **backward_kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any], torch.Tensor]:
        """`(squared norms, losses, valid, inputs, labels)` of one batch without graphs (`backward_kwargs` go to
        `run_frozen_backward`; the CUDA-graph step runs this very code on its static buffers)."""
        engine = self._engine
        engine.reset()
        with self._mode(freeze=True, train=self.train_mode):
            inputs, labels, losses, valid, resolved = run_frozen_backward(self.model, batch, engine, self.task,
                                                                          **backward_kwargs)
            sq = engine.sq
            if sq is None:
                sq = torch.zeros(labels.shape[0], dtype=torch.float32, device=losses.device)
            if engine.fallback:
                sq = sq + fallback_sq_norms(self.model, engine.fallback, inputs, labels, resolved, losses,
                                            chunk_size=self.fallback_chunk_size)
        return sq, losses, valid, inputs, labels

    def __call__(self, batch: Mapping[str, Any], *, squared: bool = False) -> torch.Tensor:
        """Float32 `[batch_size]` norms (squared with `squared=True`; NaN for a causal-LM example without labels)."""
        if self._check_pending:
            self._check_pending = not _check_hooks_once(self.model, self._engine, self._mode, batch, self.task)
        if self._graphs is not None:
            sq, valid = self._graphs(batch)
        else:
            sq, _, valid, _, _ = self._eager(batch)
        sq = sq.masked_fill(~valid, float("nan"))
        return sq if squared else sq.sqrt()


def per_example_grad_norms(
    model: nn.Module,
    batch: Mapping[str, Any],
    params: ParamSpec = None,
    *,
    task: str = "auto",
    squared: bool = False,
    fallback_chunk_size: int = 8,
    check_hooks: bool = True,
) -> torch.Tensor:
    """Exact L2 norm of each example's loss gradient over the selected parameters, in one batched backward.

    The loss is the one the Trainer optimises per example: cross-entropy for sequence classification; for causal LM
    the mean token cross-entropy over the example's own shifted label tokens (labels -100 ignored). The model runs in
    eval mode (dropout off) with every parameter frozen during the call (restored after): no `.grad` is written and no
    weight-gradient products are computed. For many batches, build a `PerExampleGradNorms` once and call it per batch.

    Args:
        model (`nn.Module`): a transformers model (or PEFT model) returning `logits`.
        batch (`dict`): a collated batch: `input_ids`, optionally `attention_mask`/`token_type_ids`/`position_ids`,
            and `labels` (or `label`); an `example_id` entry is ignored.
        params (`None`, `str` or iterable, *optional*): `None` = every parameter with `requires_grad` (a PEFT model's
            adapters); a regex searched in parameter names; or names / `nn.Parameter` objects.
        task (`str`, defaults to `"auto"`): `"sequence_classification"`, `"causal_lm"` or `"auto"`.
        squared (`bool`, defaults to `False`): return squared norms.
        fallback_chunk_size (`int`, defaults to 8): examples per `vmap` chunk for modules without a hand-written rule.
        check_hooks (`bool`, defaults to `True`): compare the hooks with autograd on one example, the first time a
            model and parameter selection are seen (see `PerExampleGradNorms`).

    Returns:
        `torch.Tensor`: float32 `[batch_size]` (NaN for a causal-LM example without label tokens).

    Raises:
        ValueError: no parameter selected, a regex matching nothing, missing labels, or an unsupported parameter
            sharing.

    Example:
        ```python
        >>> from hf_influence.grads import per_example_grad_norms
        >>> norms = per_example_grad_norms(model, {"input_ids": ids, "attention_mask": mask, "labels": y})
        >>> norms.shape  # (batch_size,)
        ```
    """
    return PerExampleGradNorms(model, params, task=task, fallback_chunk_size=fallback_chunk_size,
                               check_hooks=check_hooks)(
        batch, squared=squared
    )


def run_frozen_backward(
    model: nn.Module,
    batch: Mapping[str, Any],
    engine: _HookEngine,
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
        feed = {**inputs, "attention_mask": _four_d_mask(_attention_mask_2d(inputs), causal_mask, dtype)}
    with engine:
        outputs = model(**feed)
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
        resolved = infer_task(model, logits, task)
        losses, valid = per_example_losses(logits, labels, resolved, check=check_labels)
        del outputs, logits  # the loss graph keeps what it needs; the logits themselves can go before the backward
        total = torch.where(valid, losses, torch.zeros_like(losses)).sum()
        if engine.anchor is not None and total.requires_grad:
            torch.autograd.grad(total, engine.anchor, allow_unused=True)
    return inputs, labels, losses.detach(), valid, resolved


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


def _check_hooks_once(
    model: nn.Module, engine: _HookEngine, mode: ScoringMode, batch: Mapping[str, Any], task: str
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


def _layer_params(layer: _Layer) -> list[nn.Parameter]:
    """The selected parameters a hooked layer computes norms for (its weight and/or bias)."""
    return [getattr(layer.module, attr) for attr, used in (("weight", layer.weight), ("bias", layer.bias)) if used]


def check_hooks_against_autograd(
    model: nn.Module, engine: _HookEngine, mode: ScoringMode, batch: Mapping[str, Any], task: str = "auto"
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
    buffer = engine._buffer
    hooked = (buffer.reshape(len(layers), 2).sum(1) if buffer is not None
              else torch.zeros(len(layers), device=labels.device)).double().tolist()
    half = engine.half_precision
    engine.reset()

    index = {id(layer): i for i, layer in enumerate(layers)}
    groups: list[list[int]] = []
    for i, layer in enumerate(layers):
        partner = index.get(id(layer.tied)) if layer.tied is not None else None
        if partner is None or partner > i:
            groups.append([i] if partner is None else [i, partner])
    params = {id(param): param for layer in layers for param in _layer_params(layer)}
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
    expected = [sum(sq[pid] for pid in {id(param) for i in group for param in _layer_params(layers[i])})
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


def _log_fallback(types: list[str]) -> None:
    new = [t for t in types if t not in _LOGGED_FALLBACK_TYPES]
    if new:
        _LOGGED_FALLBACK_TYPES.update(new)
        logger.warning(
            f"No ghost-norm rule for module type(s) {', '.join(new)}: their parameters' per-example gradients are "
            "computed with torch.func (vmap over examples; slower, more memory)."
        )


class GhostNormCollector:
    """Per-example gradient norms from the training backward itself (for in-training GraNd).

    Inside `with`, forward hooks capture layer inputs and tensor hooks read the output gradients of the training
    backward. After ONE `loss.backward()` of a scalar that is a sum of per-example terms (e.g. a mean or a weighted
    sum of per-example losses), `squared_norms()` returns the squared norm of each example's contribution over the
    selected parameters (rescale by the loss weighting to get per-example loss-gradient norms). The parameter
    gradients are exactly those of a plain backward.

    Args:
        model (`nn.Module`): the model being trained.
        params (`None`, `str` or iterable, *optional*): as in `per_example_grad_norms` (default: trainable params).

    Raises:
        ValueError: if a selected parameter has no hand-written rule (the `torch.func` fallback needs extra passes);
            exclude it with a params regex.

    Example:
        ```python
        >>> with GhostNormCollector(model) as collector:
        ...     loss = model(**batch).loss  # mean over the batch
        ...     loss.backward()
        >>> grad_norms = collector.squared_norms().sqrt() * batch_size  # per-example loss-gradient norms
        ```
    """

    def __init__(self, model: nn.Module, params: ParamSpec = None) -> None:
        self.model = model
        self._selected = select_parameters(model, params)
        self._engine = _HookEngine(model, self._selected, frozen=False)
        self._check_engine: _HookEngine | None = None
        if self._engine.fallback:
            raise ValueError(
                f"GhostNormCollector has no rule for module type(s) {', '.join(self._engine.fallback_types)} "
                f"(parameters {', '.join(self._engine.fallback)}). Exclude them with a params regex, or compute "
                "norms after the step with per_example_grad_norms (which falls back to torch.func)."
            )

    def check_hooks(self, batch: Mapping[str, Any], task: str = "auto") -> bool:
        """Compare the hooks with autograd on one example of `batch` (see `check_hooks_against_autograd`), once per
        model and parameter selection; call it outside the `with` block, e.g. before the first training step.

        Returns:
            `bool`: True when checked now or before, False when `batch` has no labelled example.

        Raises:
            ValueError: naming the layers whose weights are used outside their own forward.
        """
        if self._check_engine is None:  # a norms-only plan of the same selection, built on first use
            self._check_engine = _HookEngine(self.model, self._selected, frozen=True)
        return _check_hooks_once(self.model, self._check_engine, ScoringMode(self.model), batch, task)

    def __enter__(self) -> GhostNormCollector:
        self._engine.reset()
        self._engine.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._engine.__exit__()

    def squared_norms(self) -> torch.Tensor:
        """Float32 `[batch_size]` squared norms of each example's contribution to the last backward's gradient."""
        if self._engine.sq is None:
            raise RuntimeError(
                "No per-example norms recorded: run a forward and loss.backward() inside the `with` block first (the "
                "forward must track gradients)."
            )
        return self._engine.sq.detach().clone()

    def reset(self) -> None:
        """Forget the recorded norms."""
        self._engine.reset()
