"""CUDA-graph replay of the norms-only per-example gradient step (`PerExampleGradNorms(..., cuda_graph=True)`).

At the batch sizes scoring uses (e.g. 32 x 128 tokens on a 6-layer encoder) a large GPU finishes each kernel faster
than Python can launch the next: the step is bound by the CPU (module calls, autograd, the hooks and their small
per-layer products), not by the GPU. Capturing the whole step (forward with the capture hooks, per-example losses,
the frozen backward and the per-layer norm terms) once per batch signature and replaying it removes that cost; what
remains is the GPU time of the kernels, which is below that of a training step (no weight-gradient products).

What capture needs, and how it is met:

- No host sync inside the step: HF's own attention-mask creation reads the mask's values, so the model gets the 4-D
  additive mask built on the device from the 2-D `attention_mask` (bidirectional or causal, chosen on the first batch
  by reproducing the model's own per-example losses); labels are range-checked before the copy into the static
  buffers, on the host when they come from a collator; embeddings use the masked-Gram rule (sequence length up to
  `layers.EMBEDDING_GRAM_MAX_SEQ`); modules needing the `torch.func` fallback are refused (both checked by the
  step's owner through `check_batch`).
- Static shapes: one graph per signature (names, shapes and dtypes of the batch tensors), least recently used first
  out beyond `max_graphs`; all graphs share one memory pool, and results are copied out right after each replay. Pad
  batches to a fixed length (`padding="max_length"` or `pad_to_multiple_of`) to keep the number of graphs small.
- The same weights: a graph reads parameters and buffers at the addresses it was captured with. In-place updates
  (`optimizer.step()`, `load_state_dict`) are seen by the next replay; tensors replaced by new ones (`model.to(...)`,
  `load_state_dict(assign=True)`) are detected by their addresses and the graphs are captured again.
- Dropout off and no random numbers in the step (the model is in eval mode during the call).

The cache is written against a step callable (`NormsStepFn`, e.g. `PerExampleGradNorms.eager_step`): the function of
one batch that it captures and replays.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from ..batching import LABEL_KEYS
from ..signals import check_class_ids, check_token_ids
from ..tasks import unwrap_model
from .core import prepare_batch
from .masks import likely_causal

#: The norms-only step of one batch: called as `step(batch, check_labels=..., causal_mask=...)`, it returns
#: `(squared norms, losses, valid, inputs, labels)` (the last two as `core.prepare_batch` gives them).
NormsStepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any], torch.Tensor]]

logger = logging.get_logger(__name__)

#: Eager runs of a new step on a side stream before its capture (lazy initialisations, allocator warm-up).
WARMUP_RUNS = 2


class StaticNormsStep:
    """The norms-only step of one batch signature on static input buffers, captured as a CUDA graph or run eagerly.

    Args:
        step_fn (`NormsStepFn`): the step to capture.
        inputs (`dict`): the first batch's model inputs (on the model's device); copied into the static buffers.
        labels (`torch.Tensor`): its labels.
        causal (`bool`): whether the 4-D attention mask is causal.
        capture (`bool`): capture a CUDA graph (else every `run` executes the step eagerly on the static buffers,
            which is how the step is tested without a GPU).
        pool: the CUDA graph memory pool shared by the cache's graphs.
    """

    def __init__(self, step_fn: NormsStepFn, inputs: Mapping[str, Any], labels: torch.Tensor, causal: bool,
                 *, capture: bool, pool: Any = None) -> None:
        self.step_fn = step_fn
        self.causal = causal
        self.static = {k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        self.fixed = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
        self.static["labels"] = labels.clone()
        self.graph: Any = None
        self.outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if capture:
            self._capture(pool)

    def step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One norms-only step on the static buffers: `(squared norms, losses, valid)`; no host sync."""
        sq, losses, valid, _, _ = self.step_fn({**self.static, **self.fixed}, check_labels=False,
                                               causal_mask=self.causal)
        return sq, losses, valid

    def _capture(self, pool: Any) -> None:
        device = self.static["labels"].device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # capture on the warm-up stream: BLAS handles and workspaces are cached per stream, and creating one in the
        # middle of a capture is not allowed
        with torch.cuda.graph(self.graph, pool=pool, stream=side):
            self.outputs = self.step()

    def run(self, inputs: Mapping[str, Any], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Copy a batch of this signature into the static buffers, replay, and return copies of the results."""
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor):
                self.static[key].copy_(value, non_blocking=True)
        self.static["labels"].copy_(labels, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.outputs = self.step()
        return tuple(t.clone() for t in self.outputs)  # the next replay overwrites the static outputs


class NormsGraphCache:
    """The captured steps of one norms-only step function, keyed by batch signature (least recently used evicted).

    Args:
        step_fn (`NormsStepFn`): the eager step of one batch (e.g. `PerExampleGradNorms.eager_step`).
        model (`nn.Module`): the model `step_fn` runs (its parameter and buffer addresses are watched, its class and
            config pick the 4-D mask to try first).
        task (`str`, defaults to `"auto"`): the task `step_fn` computes losses for.
        max_graphs (`int`, defaults to 8): batch signatures kept captured.
        capture (`bool`, defaults to `True`): capture CUDA graphs; `False` runs each static step eagerly on its static
            buffers (everything but the capture itself, e.g. to test it without a GPU).
        check_batch (callable, *optional*): called with `(inputs, labels)` of every batch before its step is used;
            raises for what `step_fn` cannot run without host syncs.
    """

    def __init__(self, step_fn: NormsStepFn, model: nn.Module, *, task: str = "auto", max_graphs: int = 8,
                 capture: bool = True,
                 check_batch: Callable[[Mapping[str, Any], torch.Tensor], None] | None = None) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}.")
        self.step_fn = step_fn
        self.model = model
        self.task = task
        self.max_graphs = max_graphs
        self.capture = capture
        self.check_batch = check_batch
        self.steps: OrderedDict[tuple, StaticNormsStep] = OrderedDict()
        self.causal: bool | None = None
        self.num_outputs: int | None = None
        self._pool: Any = None
        self._addresses: tuple[int, ...] | None = None

    def clear(self) -> None:
        """Drop every captured graph (and with the last reference, its memory pool)."""
        self.steps.clear()
        self._pool = None

    def _check_supported(self, inputs: Mapping[str, Any], labels: torch.Tensor) -> None:
        if self.check_batch is not None:
            self.check_batch(inputs, labels)
        if self.capture and labels.device.type != "cuda":
            raise ValueError(
                f"cuda_graph=True needs the model on a CUDA device (it is on {labels.device}). Move it with "
                "model.to('cuda') or use cuda_graph=False."
            )

    def _check_labels(self, raw: Any, labels: torch.Tensor) -> None:
        """Range-check the labels before they reach the graph (on the host copy when the collator made one)."""
        if self.num_outputs is None:
            return
        host = torch.as_tensor(raw) if raw is not None and not (isinstance(raw, torch.Tensor) and raw.is_cuda) \
            else labels
        if host.dim() != 1:
            check_token_ids(host, self.num_outputs)
        elif not host.is_floating_point():
            check_class_ids(host, self.num_outputs)

    def _current_addresses(self) -> tuple[int, ...]:
        model = self.model
        return tuple(t.data_ptr() for t in itertools.chain(model.parameters(), model.buffers()))

    def _first_batch(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Eager reference on the first batch: fixes the output width and the 4-D mask's causality."""
        widths: list[int] = []

        def record_width(module: Any, args: Any, output: Any) -> None:
            logits = output.logits if hasattr(output, "logits") else output[0]
            widths.append(int(logits.shape[-1]))

        handle = self.model.register_forward_hook(record_width)
        try:
            sq, losses, valid, inputs, labels = self.step_fn(batch)
        finally:
            handle.remove()
        self.num_outputs = widths[0] if widths else None
        # token labels ([B, T]) mean a causal LM even when the task was left to "auto"
        first = likely_causal(unwrap_model(self.model), "causal_lm" if labels.dim() == 2 else self.task)
        errors = []
        for causal in (first, not first):
            probe = StaticNormsStep(self.step_fn, inputs, labels, causal, capture=False)
            _, probe_losses, _ = probe.step()
            errors.append(float((probe_losses - losses).abs().max()) if losses.numel() else 0.0)
            if torch.allclose(probe_losses[valid], losses[valid], rtol=1e-4, atol=1e-5):
                self.causal = causal
                return sq, valid
        raise ValueError(
            "cuda_graph=True: a 4-D attention mask (bidirectional or causal) does not reproduce this model's "
            f"per-example losses (max abs difference {errors}), so the step cannot be captured without HF's "
            "host-side mask creation. Use cuda_graph=False."
        )

    def __call__(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(squared norms, valid)` of one batch, by replaying (and on a new signature first capturing) its graph."""
        inputs, labels = prepare_batch(self.model, batch)
        self._check_supported(inputs, labels)
        if self.causal is None:
            result = self._first_batch(batch)
            self._addresses = self._current_addresses()
            return result
        raw = next((batch[k] for k in LABEL_KEYS if k in batch and batch[k] is not None), None)
        self._check_labels(raw, labels)
        addresses = self._current_addresses()
        if addresses != self._addresses:
            if self.steps:
                logger.info("Parameters or buffers were replaced since the CUDA graphs were captured: capturing "
                            "again.")
            self.clear()
            self._addresses = addresses
        signature = tuple(sorted((k, tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (k, repr(v))
                                 for k, v in inputs.items())) + (("labels", tuple(labels.shape), labels.dtype),)
        step = self.steps.get(signature)
        if step is None:
            if self.capture and self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            step = StaticNormsStep(self.step_fn, inputs, labels, self.causal, capture=self.capture, pool=self._pool)
            self.steps[signature] = step
            while len(self.steps) > self.max_graphs:
                self.steps.popitem(last=False)
        else:
            self.steps.move_to_end(signature)
        sq, _, valid = step.run(inputs, labels)
        return sq, valid
