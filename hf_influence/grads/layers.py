"""Ghost-norm rules per layer kind, and the plan that assigns each selected parameter to one.

For a layer with inputs ``A_i`` (``T x d``) and output gradients ``B_i = dL_i/d(output)`` (``T x p``), the
per-example weight gradient is ``G_i = B_i^T A_i``. Its squared Frobenius norm is computed without materialising
``G_i`` for the whole model at once (Li, Tramer, Liang, Hashimoto 2022, arXiv:2110.05679, Eq. 3; Bu et al. 2023,
arXiv:2210.00038). One small rule class per layer kind (as kronfluence keeps one tracked module per layer type):

- `LinearRule` (``nn.Linear``) and `Conv1DRule` (HF ``Conv1D``, weight stored as ``[in, out]``): the Gram form
  ``<A_i A_i^T, B_i B_i^T>_F`` when ``T (p + d) <= p d`` (fewer FLOPs), else ``G_i`` instantiated by ``bmm`` in bounded
  chunks of examples and discarded; bias ``||sum_t b_it||^2``.
- `EmbeddingRule` (``nn.Embedding``): ``sum_v ||sum_{t: x_it = v} b_it||^2``, by a masked Gram form up to
  `EMBEDDING_GRAM_MAX_SEQ` tokens and by segment sums over unique (example, id) keys beyond; ``padding_idx`` tokens
  excluded (PyTorch gives them no gradient).
- `LayerNormRule` / `RMSNormRule`: ``sum_t xhat_it * b_it`` instantiated (``xhat`` recomputed from the saved input);
  bias ``sum_t b_it``.
- Tied input/output embeddings (GPT-2 ``lm_head = wte``): ``||g_emb||^2 + ||g_head||^2 + 2 <g_emb, g_head>`` with the
  exact cross term ``<g_emb, g_head> = sum_{t,s} c_s[x_t] (h_s . b_t)`` (``c`` = logit gradients, ``h`` = final hidden
  states): `tied_cross_term` and `embedding_cross_term_into`.

Every term is written straight into a row of a caller's ``[2, B]`` float32 buffer (``out=``), summed once at the end:
on a GPU the step is launch-bound at typical batch sizes, so each rule is a handful of kernels with no host sync.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

try:  # transformers' GPT-2 style "Conv1D" (weight stored as [in, out])
    from transformers.pytorch_utils import Conv1D as HFConv1D
except ImportError:  # pragma: no cover - very old transformers
    HFConv1D = None

#: Bound on the transient memory of an instantiated per-example weight gradient chunk (or a Gram chunk).
_CHUNK_BYTES = 256 * 2**20
#: Embedding layers use the masked Gram form (no sort, no device sync) up to this sequence length, segment sums above.
EMBEDDING_GRAM_MAX_SEQ = 1024


# ----------------------------------------------------------------------------------------------------------------
# The per-layer math
# ----------------------------------------------------------------------------------------------------------------


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

    Up to `EMBEDDING_GRAM_MAX_SEQ` tokens: the masked Gram form `sum_{t,s} [x_it = x_is] (b_it . b_is)` (batched
    products, no sort and no host sync); beyond: segment sums over unique (example, id) keys. Tokens equal to
    `padding_idx` are excluded (PyTorch gives their row no gradient).
    """
    batch, seq = ids.shape
    if seq <= EMBEDDING_GRAM_MAX_SEQ:
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


def tied_cross_term(ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """`U[i, t] = sum_s c_is[x_it] h_is` (`[B, T_emb, d]`), so that `<g_emb, g_head>_i = sum_t b_it . U[i, t]`.

    Args:
        ids: embedding input ids `[B, T_emb]`; h: head inputs `[B, T_head, d]`; c: head output gradients
            `[B, T_head, V]` (float32).
    """
    gathered = c.gather(2, ids.long().unsqueeze(1).expand(-1, c.shape[1], -1))  # [B, T_head, T_emb]
    return torch.bmm(gathered.transpose(1, 2), h)


def embedding_cross_term_into(ids: torch.Tensor, grad: torch.Tensor, padding_idx: int | None, cross: torch.Tensor,
                              out: torch.Tensor) -> None:
    """`2 <g_emb, g_head>` per example into `out` `[B]`, from the embedding's ids `[B, T]`, its output gradients and
    the head's `tied_cross_term` `cross` (`padding_idx` tokens give the embedding no gradient)."""
    b = grad.reshape(ids.shape[0], ids.shape[1], -1).float()
    if padding_idx is not None:
        b = b.masked_fill((ids == padding_idx).unsqueeze(-1), 0.0)
    _rowwise_dot(b, cross, out)
    out.mul_(2.0)



# ----------------------------------------------------------------------------------------------------------------
# One rule per layer kind
# ----------------------------------------------------------------------------------------------------------------


class LayerRule:
    """How one kind of layer turns its input and output gradient into per-example squared gradient norms.

    Class attributes:
        parameters (`frozenset[str]`): the parameter attributes the rule covers (others go to the `torch.func`
            fallback).
        shares_input_gram (`bool`): the weight term may use an input Gram matrix shared with other layers reading the
            same input (see `linear_sq_norms_into`).
        ties_with_embedding (`bool`): the layer may be an output head tied to an input embedding.
    """

    parameters: ClassVar[frozenset[str]] = frozenset()
    shares_input_gram: ClassVar[bool] = False
    ties_with_embedding: ClassVar[bool] = False

    def matches(self, module: nn.Module) -> bool:
        """Whether this rule applies to `module` (exact types: a subclass may use its weights differently)."""
        raise NotImplementedError

    def sq_norms_into(self, layer: HookedLayer, x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, *,
                      gram_a: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-example squared gradient norms of `layer`'s selected parameters into `out` `[2, B]` (summed later)
        from the layer's input `x` and output gradient `grad`. Returns a shareable input Gram matrix or None."""
        raise NotImplementedError


class LinearRule(LayerRule):
    """`nn.Linear`: Gram form or instantiated weight gradients (`linear_sq_norms_into`), bias folded in or apart."""

    parameters = frozenset({"weight", "bias"})
    shares_input_gram = True
    ties_with_embedding = True

    def matches(self, module: nn.Module) -> bool:
        return type(module) is nn.Linear

    def in_out_features(self, module: nn.Module) -> tuple[int, int]:
        """`(d_in, d_out)` of the layer's weight (stored `[out, in]`)."""
        return module.weight.shape[1], module.weight.shape[0]

    def sq_norms_into(self, layer: HookedLayer, x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, *,
                      gram_a: torch.Tensor | None = None) -> torch.Tensor | None:
        batch = grad.shape[0]
        a = x.reshape(batch, -1, x.shape[-1]).float()
        b = grad.reshape(batch, -1, grad.shape[-1]).float()
        return linear_sq_norms_into(a, b, out, weight=layer.weight, bias=layer.bias, gram_a=gram_a)


class Conv1DRule(LinearRule):
    """transformers' GPT-2 style `Conv1D` (a Linear layer whose weight is stored `[in, out]`)."""

    ties_with_embedding = False

    def matches(self, module: nn.Module) -> bool:
        return HFConv1D is not None and type(module) is HFConv1D

    def in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return tuple(module.weight.shape)


class EmbeddingRule(LayerRule):
    """`nn.Embedding`: `sum_v ||sum_{t: x_it = v} b_it||^2` (`embedding_sq_norms_into`)."""

    parameters = frozenset({"weight"})

    def matches(self, module: nn.Module) -> bool:
        return type(module) is nn.Embedding

    def sq_norms_into(self, layer: HookedLayer, x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, *,
                      gram_a: torch.Tensor | None = None) -> torch.Tensor | None:
        batch = grad.shape[0]
        ids = x.reshape(batch, -1)
        b = grad.reshape(batch, ids.shape[1], -1).float()
        embedding_sq_norms_into(ids, b, layer.module.num_embeddings, layer.module.padding_idx, out[0])
        return None


class _NormalizationRule(LayerRule):
    """A normalisation layer `y = xhat * weight (+ bias)`: weight term `||sum_t xhat_it * b_it||^2`, bias
    `||sum_t b_it||^2`."""

    def normalized_input(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`xhat` in float32."""
        raise NotImplementedError

    def sq_norms_into(self, layer: HookedLayer, x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, *,
                      gram_a: torch.Tensor | None = None) -> torch.Tensor | None:
        batch = grad.shape[0]
        width = math.prod(layer.module.weight.shape)
        b = grad.reshape(batch, -1, width).float()
        if layer.weight:
            summed = (self.normalized_input(layer.module, x.reshape(batch, -1, width)) * b).sum(1)
            _rowwise_dot(summed, summed, out[0])
        if layer.bias:
            summed = b.sum(1)
            _rowwise_dot(summed, summed, out[1])
        return None


class LayerNormRule(_NormalizationRule):
    """`nn.LayerNorm`: `xhat = (x - mean) / sqrt(var + eps)`."""

    parameters = frozenset({"weight", "bias"})

    def matches(self, module: nn.Module) -> bool:
        return type(module) is nn.LayerNorm

    def normalized_input(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), module.normalized_shape, eps=module.eps)


def _rms_eps(module: nn.Module) -> float | None:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, (float, int)) and not isinstance(value, bool):
            return float(value)
    return None


class RMSNormRule(_NormalizationRule):
    """RMSNorm (`xhat = x / sqrt(mean(x^2) + eps)`), recognised by a class name ending in "RMSNorm" with a single
    `weight` and an epsilon attribute (Llama, Mistral, Qwen2, ...; the Gemma `1 + weight` form has the same weight
    gradient)."""

    parameters = frozenset({"weight"})

    def matches(self, module: nn.Module) -> bool:
        params = {k for k, v in module._parameters.items() if v is not None}
        return type(module).__name__.endswith("RMSNorm") and params == {"weight"} and _rms_eps(module) is not None

    def normalized_input(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return F.rms_norm(x, (x.shape[-1],), eps=_rms_eps(module))


#: The hand-written rules, tried in order.
LAYER_RULES: tuple[LayerRule, ...] = (LinearRule(), Conv1DRule(), EmbeddingRule(), LayerNormRule(), RMSNormRule())


def rule_for(module: nn.Module) -> LayerRule | None:
    """The hand-written rule for `module`, or None (its parameters then use the `torch.func` fallback)."""
    return next((rule for rule in LAYER_RULES if rule.matches(module)), None)


# ----------------------------------------------------------------------------------------------------------------
# The plan: which rule each selected parameter gets
# ----------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class HookedLayer:
    """A module whose selected parameters get a hand-written rule: which of its `weight` / `bias` are selected, and
    the other user of a tied embedding / output weight."""

    name: str
    module: nn.Module
    rule: LayerRule
    weight: bool = False
    bias: bool = False
    tied: HookedLayer | None = field(default=None, repr=False)

    def selected_parameters(self) -> list[nn.Parameter]:
        """The selected parameters this layer computes norms for (its weight and/or bias)."""
        return [getattr(self.module, attr) for attr, used in (("weight", self.weight), ("bias", self.bias)) if used]

    def sq_norms_into(self, x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, *,
                      gram_a: torch.Tensor | None = None) -> torch.Tensor | None:
        """`self.rule.sq_norms_into` for this layer."""
        return self.rule.sq_norms_into(self, x, grad, out, gram_a=gram_a)


def build_plan(
    model: nn.Module, selected: Mapping[str, nn.Parameter]
) -> tuple[list[HookedLayer], dict[str, nn.Parameter], list[str]]:
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
    layers: dict[int, HookedLayer] = {}
    fallback: dict[str, nn.Parameter] = {}
    fallback_types: list[str] = []

    def layer_for(module_name: str, module: nn.Module) -> HookedLayer | None:
        if id(module) not in layers:
            rule = rule_for(module)
            if rule is None:
                return None
            layers[id(module)] = HookedLayer(module_name, module, rule)
        return layers[id(module)]

    for pid, users in owners.items():
        param_name, param = by_id[pid]
        users = list(users.values())
        if len(users) == 2:
            (n1, m1, a1), (n2, m2, a2) = users
            if isinstance(rule_for(m2), EmbeddingRule):
                (n1, m1, a1), (n2, m2, a2) = (n2, m2, a2), (n1, m1, a1)
            head_rule = rule_for(m2)
            if (isinstance(rule_for(m1), EmbeddingRule) and head_rule is not None and head_rule.ties_with_embedding
                    and a1 == a2 == "weight"):
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
        if layer is None or attr not in layer.rule.parameters:
            fallback[param_name] = param
            type_name = type(module).__name__
            if type_name not in fallback_types:
                fallback_types.append(type_name)
            continue
        setattr(layer, attr, True)
    return [layer for layer in layers.values() if layer.weight or layer.bias], fallback, fallback_types
