"""Exact per-example gradient norms at about the cost of one training step ("ghost norms").

`PerExampleGradNorms` (reusable across batches) and `per_example_grad_norms` (one call) compute the L2 norm of each
example's loss gradient over a parameter selection without materialising per-example gradients for the whole model:

- parameters of layers with a hand-written rule (Linear, HF Conv1D, Embedding, LayerNorm, RMSNorm, tied input/output
  embeddings; see `hf_influence.grads.layers`) from the layer inputs and output gradients captured by hooks in ONE
  batched forward and activation backward (`hooks.HookEngine`, `norm_engine.NormsEngine`);
- any other module owning selected parameters with `torch.func` (`fallback.fallback_sq_norms`), logged once per module
  type.

Limitations: a parameter used outside its owning module's forward (e.g. `F.linear(h, self.embed.weight)` in a parent
module, DeBERTa's `rel_embeddings.weight`) is invisible to the hooks; such models need that weight excluded (params
regex). `PerExampleGradNorms` detects it: on its first batch it compares every hooked layer's norm for one example
with autograd's gradient of that example's loss (`hook_check.check_hooks_against_autograd`, once per model and
parameter selection) and names the layers that disagree. A module with selected parameters that is called twice in
one forward (parameter reuse, gradient checkpointing) is refused.

In norms-only mode every parameter is frozen for the duration of the call and the graph starts at the first hooked
layer's output, so no weight-gradient products are computed and no ``.grad`` is touched; the cost is a forward, the
activation backward and the norm terms. Per-example norms from the training backward itself are
`collector.GhostNormCollector`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import layers as layer_rules
from .core import ParamSpec, ScoringMode, select_parameters
from .fallback import fallback_sq_norms, log_fallback
from .graphs import NormsGraphCache
from .hook_check import check_hooks_once
from .hooks import run_frozen_backward
from .layers import EmbeddingRule
from .norm_engine import NormsEngine


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
        self._engine = NormsEngine(model, select_parameters(model, params), frozen=True)
        self._check_pending = check_hooks
        self._mode = ScoringMode(model)
        if train_mode and self._engine.fallback:
            raise ValueError(
                f"train_mode=True cannot use the torch.func fallback of module type(s) "
                f"{', '.join(self._engine.fallback_types)} (its per-example replays would draw other dropout masks). "
                "Exclude their parameters with a params regex, or use train_mode=False."
            )
        log_fallback(self._engine.fallback_types)
        self._graphs = None
        if cuda_graph:
            self._graphs = NormsGraphCache(self.eager_step, model, task=task, max_graphs=max_graphs,
                                           check_batch=self._check_capturable)

    @property
    def cuda_graph(self) -> bool:
        """Whether the step is captured and replayed as CUDA graphs."""
        return self._graphs is not None

    def eager_step(
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

    def _check_capturable(self, inputs: Mapping[str, Any], labels: torch.Tensor) -> None:
        """Refuse, before a capture, what the step cannot do without host syncs (`cuda_graph=True`)."""
        engine = self._engine
        if engine.fallback:
            raise ValueError(
                f"cuda_graph=True cannot capture the torch.func fallback used for module type(s) "
                f"{', '.join(engine.fallback_types)}. Exclude their parameters with a params regex, or use "
                "cuda_graph=False."
            )
        ids = inputs.get("input_ids", inputs.get("inputs_embeds"))
        seq = ids.shape[1] if ids.dim() > 1 else 1
        limit = layer_rules.EMBEDDING_GRAM_MAX_SEQ
        if seq > limit and any(isinstance(layer.rule, EmbeddingRule) for layer in engine.layers):
            raise ValueError(
                f"cuda_graph=True supports embedding parameters up to {limit} tokens (this batch has {seq}): longer "
                "sequences use segment sums, which sync with the host. Exclude the embeddings with a params regex "
                "or use cuda_graph=False."
            )

    def __call__(self, batch: Mapping[str, Any], *, squared: bool = False) -> torch.Tensor:
        """Float32 `[batch_size]` norms (squared with `squared=True`; NaN for a causal-LM example without labels)."""
        if self._check_pending:
            self._check_pending = not check_hooks_once(self.model, self._engine, self._mode, batch, self.task)
        if self._graphs is not None:
            sq, valid = self._graphs(batch)
        else:
            sq, _, valid, _, _ = self.eager_step(batch)
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
