"""`GhostNormCollector`: per-example gradient norms from the training backward itself (for in-training GraNd)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .core import ParamSpec, ScoringMode, select_parameters
from .hook_check import check_hooks_once
from .norm_engine import NormsEngine


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
        self._engine = NormsEngine(model, self._selected, frozen=False)
        self._check_engine: NormsEngine | None = None
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
            self._check_engine = NormsEngine(self.model, self._selected, frozen=True)
        return check_hooks_once(self.model, self._check_engine, ScoringMode(self.model), batch, task)

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
