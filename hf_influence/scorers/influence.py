"""Influence of removing a training sample on the empirical risk, with one inverse-HVP (DEALRec, Lin et al. 2024).

For a model with parameters theta (restricted to a *scope*), the influence of removing sample s on the empirical risk
``R = (1/n) sum_i L(s_i)`` is, up to the positive factor ``1/n^2`` (DEALRec Eq. 11, Alg. 2; Koh & Liang 2017)::

    score(s) = grad L(s) . u,      u = H^{-1} ( (1/n) sum_j grad L(s_j) )

By the symmetry of ``H^{-1}``, ``u`` is computed **once** (one iHVP of the mean gradient) and every sample costs one
directional derivative. ``H`` is the Hessian of the mean training loss over the scope, damped for stability
(`hf_influence.grads.hvp`).

How the per-sample term is computed: ``grad L(s) . u`` for all samples of a batch is the Jacobian-vector product
``J u`` of the per-sample loss vector, obtained with two extra backward passes (the "double-vjp" trick:
``J u = d/dw [ (J^T w) . u ]``), so per-sample gradients are never materialised and any scope size works at about
3x the cost of a plain forward+backward per batch. ``per_sample="loop"`` instead runs one backward per sample over the
scope only (cost ``B`` backwards per batch; a reference for tests).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from transformers.utils import logging

from ..distributed import World, broadcast_object
from ..fingerprints import dataset_fingerprint, model_fingerprint
from ..grads.hvp import (
    InverseHVPInfo,
    conjugate_gradient_inverse_hvp,
    exact_inverse_hvp,
    lissa_inverse_hvp,
    mean_gradient,
    unflatten_vector,
)
from .base import Scorer
from .registry import register_scorer
from .sharding import scorer_world, use_rank_device

logger = logging.get_logger(__name__)

SOLVERS: tuple[str, ...] = ("lissa", "cg", "exact")
PER_SAMPLE_MODES: tuple[str, ...] = ("jvp", "loop")

#: Names of attention output projections in common architectures; the default scope is the LAST match's weight.
ATTENTION_OUTPUT_PATTERN = (
    r"(attn|attention)[^.]*\.(dense|out_proj|o_proj|c_proj|output\.dense|out_lin|proj)\.weight$"
)

PerSampleLoss = Callable[[torch.nn.Module, Any], torch.Tensor]


def resolve_parameter_scope(model: torch.nn.Module, scope: str | Sequence[str] | None = None) -> list[str]:
    """Names of the parameters a scope selects.

    Args:
        model (`torch.nn.Module`): the model.
        scope (`str`, `Sequence[str]` or `None`): ``None`` = the weight of the model's **last attention output
            projection** (DEALRec's code uses SASRec's ``item_encoder.layer.1.attention.dense.weight``); a string =
            a regular expression searched in each parameter name (``re.search``); a sequence = exact names.

    Returns:
        `list[str]`: parameter names, in the model's order.

    Raises:
        ValueError: if nothing matches (listing some parameter names) or a name does not exist.
    """
    names = [name for name, _ in model.named_parameters()]
    if scope is None:
        matches = [n for n in names if re.search(ATTENTION_OUTPUT_PATTERN, n)]
        if not matches:
            raise ValueError(
                "Could not find an attention output projection for the default influence scope (pattern "
                f"{ATTENTION_OUTPUT_PATTERN!r}). Pass scope=<regex> or a list of names; parameters include "
                f"{names[:8]}{' ...' if len(names) > 8 else ''}."
            )
        return [matches[-1]]
    if isinstance(scope, str):
        try:
            pattern = re.compile(scope)
        except re.error as err:
            raise ValueError(f"scope {scope!r} is not a valid regular expression: {err}.") from err
        selected = [n for n in names if pattern.search(n)]
        if not selected:
            raise ValueError(
                f"The scope regex {scope!r} matches no parameter. Parameters include {names[:8]}"
                f"{' ...' if len(names) > 8 else ''}."
            )
        return selected
    missing = [n for n in scope if n not in names]
    if missing:
        raise ValueError(f"Unknown parameter names in scope: {missing}. Parameters include {names[:8]} ...")
    return list(scope)


@contextmanager
def only_scope_requires_grad(model: torch.nn.Module, names: Sequence[str]) -> Iterator[list[torch.nn.Parameter]]:
    """Within the block, only the named parameters require grad (others are frozen); the model is in eval mode.

    The previous ``requires_grad`` flags and train/eval mode are restored on exit.
    """
    wanted = set(names)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    params = []
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(name in wanted)
            if name in wanted:
                params.append(p)
        model.eval()
        yield params
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if hasattr(batch, "to") and hasattr(batch, "keys"):  # transformers BatchEncoding
        return batch.to(device)
    return batch


def _rows(batch: dict[str, list]) -> list[dict[str, Any]]:
    keys = list(batch)
    return [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]


def per_sample_directional_derivatives(
    per_sample_losses: torch.Tensor, params: Sequence[torch.Tensor], direction: torch.Tensor, mode: str = "jvp"
) -> torch.Tensor:
    """``grad L(s_b) . direction`` for every entry b of a vector of per-sample losses.

    Args:
        per_sample_losses (`torch.Tensor`): shape ``[B]``, each entry depending only on its own sample.
        params (`Sequence[torch.Tensor]`): the scope (requiring grad).
        direction (`torch.Tensor`): flat vector of length ``sum(p.numel())``.
        mode (`str`): ``"jvp"`` (two extra backwards for the whole batch) or ``"loop"`` (one backward per sample).

    Returns:
        `torch.Tensor`: shape ``[B]``, float64 on the losses' device.
    """
    if per_sample_losses.dim() != 1:
        raise ValueError(
            f"The per-sample loss function must return one loss per sample (shape [B]), got "
            f"{tuple(per_sample_losses.shape)}."
        )
    params = list(params)
    us = unflatten_vector(direction, params)
    if mode == "loop":
        out = []
        for b in range(per_sample_losses.shape[0]):
            grads = torch.autograd.grad(per_sample_losses[b], params, retain_graph=True, allow_unused=True)
            out.append(sum(float((g.double() * u.double()).sum()) for g, u in zip(grads, us) if g is not None))
        return torch.tensor(out, dtype=torch.float64, device=per_sample_losses.device)
    if mode != "jvp":
        raise ValueError(f"Unknown per_sample mode {mode!r}; valid modes are {', '.join(PER_SAMPLE_MODES)}.")
    w = torch.zeros_like(per_sample_losses, requires_grad=True)
    grads = torch.autograd.grad(per_sample_losses, params, grad_outputs=w, create_graph=True, allow_unused=True)
    dot = sum((g * u.to(g.dtype)).sum() for g, u in zip(grads, us) if g is not None)
    if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
        return torch.zeros_like(per_sample_losses, dtype=torch.float64).detach()
    (ju,) = torch.autograd.grad(dot, w, allow_unused=True)
    if ju is None:
        return torch.zeros_like(per_sample_losses, dtype=torch.float64).detach()
    return ju.detach().double()


@register_scorer
class InfluenceScorer(Scorer):
    """DEALRec influence score: ``grad L(s) . H^{-1} (mean gradient)`` over a parameter scope.

    Paper: Lin et al., "Data-efficient Fine-tuning for LLM-based Recommendation" (SIGIR 2024), Eq. 11 and Alg. 1-2
    (the influence-function approximation of Koh & Liang, ICML 2017). Polarity: **higher = removing the sample raises
    the empirical risk more** (more influential); DEALRec combines it with the effort score and its code cuts the top
    of the combined score like a hardest-first cut, hence ``"higher_is_harder"``.

    ``u = H^{-1} v`` (``v`` the exact mean gradient over the training set given to `fit`, batches weighted by size) is
    computed once, on the first call or by `fit`. All three solvers estimate the *same* vector so scores are
    comparable across solvers: LiSSA returns ``scale * (H + damping*scale*I)^{-1} v`` (DEALRec code, no final
    ``/scale``), and CG/exact solve with ``lambda = damping * scale`` and multiply by ``scale``
    (``divide_by_scale=True`` drops the factor everywhere, the Koh & Liang convention).

    Args:
        model (`torch.nn.Module`): the (surrogate) model. Scored in eval mode (dropout off), as the authors do.
        per_sample_loss (`Callable[[model, batch], torch.Tensor]`): returns the loss of every sample of a collated
            batch, shape ``[B]`` (for SASRec: `hf_influence.rec.sasrec.sasrec_per_sample_loss`).
        collate_fn (`Callable[[list[dict]], Any]`): turns a list of dataset rows into the batch ``per_sample_loss``
            takes (tensors are moved to the scorer's device). For SASRec: the rec collator (its seeded negatives make
            the stochastic BCE reproducible).
        train_dataset (`datasets.Dataset`, *optional*): data that defines ``v`` and ``H``; defaults to the dataset
            first scored.
        scope (`str`, `list[str]` or `None`): parameters of ``theta``; see `resolve_parameter_scope` (default: last
            attention output projection weight).
        solver (`str`, defaults to `"lissa"`): ``"lissa"``, ``"cg"`` or ``"exact"``.
        damping (`float`, defaults to 0.01) / scale (`float`, defaults to 25.0): LiSSA's ``d`` and ``c``
            (effective damping ``d * c = 0.25`` for all solvers).
        depth (`int`, defaults to 5000) / repeats (`int`, defaults to 1) / lissa_batch_size (`int`, defaults to 1):
            LiSSA recursion length, number of averaged recursions, samples per HVP step.
        seed (`int`, defaults to 0): seeds LiSSA's sample draws.
        divide_by_scale (`bool`, defaults to `False`): Koh & Liang's final ``/ scale``.
        cg_tol (`float`, defaults to 1e-6) / cg_max_iterations (`int`, *optional*): CG stopping rule.
        hvp_batch_size (`int`, defaults to 64): samples per batch for the mean gradient and full-data HVPs.
        per_sample (`str`, defaults to `"jvp"`): ``"jvp"`` or ``"loop"`` (see the module docstring).
        progress (`bool`, defaults to `True`): progress bars for the iHVP.
        **kwargs: `column`, `batch_size`, `device` (see `Scorer`).

    Example:
        ```python
        >>> scorer = InfluenceScorer(sasrec, per_sample_loss=sasrec_per_sample_loss, collate_fn=collator,
        ...                          solver="lissa")  # doctest: +SKIP
        >>> users = scorer(users)  # adds the float32 column "influence"  # doctest: +SKIP
        ```
    """

    name: ClassVar[str] = "influence"
    polarity: ClassVar[str] = "higher_is_harder"
    definition: ClassVar[str] = "grad L(s) . H^-1 (1/n sum_j grad L(s_j)) over a parameter scope (damped Hessian)"
    paper: ClassVar[str] = "Lin et al., SIGIR 2024 (DEALRec), Eq. 11, Alg. 1-2; Koh & Liang, ICML 2017"
    fingerprint_exclude: ClassVar[tuple[str, ...]] = ("batch_size", "device", "hvp_batch_size", "progress",
                                                      "per_sample")

    def __init__(
        self,
        model: torch.nn.Module,
        per_sample_loss: PerSampleLoss,
        collate_fn: Callable[[list[dict[str, Any]]], Any],
        *,
        train_dataset: Any = None,
        scope: str | Sequence[str] | None = None,
        solver: str = "lissa",
        damping: float = 0.01,
        scale: float = 25.0,
        depth: int = 5000,
        repeats: int = 1,
        lissa_batch_size: int = 1,
        seed: int = 0,
        divide_by_scale: bool = False,
        cg_tol: float = 1e-6,
        cg_max_iterations: int | None = None,
        hvp_batch_size: int = 64,
        per_sample: str = "jvp",
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"InfluenceScorer needs a torch.nn.Module, got {type(model).__name__}.")
        if not callable(per_sample_loss) or not callable(collate_fn):
            raise TypeError("per_sample_loss and collate_fn must be callables (see the InfluenceScorer docstring).")
        if solver not in SOLVERS:
            raise ValueError(f"Unknown solver {solver!r}; valid solvers are {', '.join(SOLVERS)}.")
        if per_sample not in PER_SAMPLE_MODES:
            raise ValueError(f"Unknown per_sample mode {per_sample!r}; valid modes are {', '.join(PER_SAMPLE_MODES)}.")
        self.model = model
        self.per_sample_loss = per_sample_loss
        self.collate_fn = collate_fn
        self.train_dataset = train_dataset
        self.scope = scope
        self.scope_names = resolve_parameter_scope(model, scope)
        self.solver = solver
        self.damping = damping
        self.scale = scale
        self.depth = depth
        self.repeats = repeats
        self.lissa_batch_size = lissa_batch_size
        self.seed = seed
        self.divide_by_scale = divide_by_scale
        self.cg_tol = cg_tol
        self.cg_max_iterations = cg_max_iterations
        self.hvp_batch_size = hvp_batch_size
        self.per_sample = per_sample
        self.progress = progress
        self.inverse_hvp: torch.Tensor | None = None
        self.mean_gradient: torch.Tensor | None = None
        self.solver_info: InverseHVPInfo | None = None
        self._train_fingerprint: str | None = None

    # ---- configuration -------------------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config.update(
            scope=self.scope_names,
            solver=self.solver,
            damping=self.damping,
            scale=self.scale,
            depth=self.depth,
            repeats=self.repeats,
            lissa_batch_size=self.lissa_batch_size,
            seed=self.seed,
            divide_by_scale=self.divide_by_scale,
            cg_tol=self.cg_tol,
            cg_max_iterations=self.cg_max_iterations,
            hvp_batch_size=self.hvp_batch_size,
            per_sample=self.per_sample,
            per_sample_loss=getattr(self.per_sample_loss, "__qualname__", repr(self.per_sample_loss)),
            train_dataset_fingerprint=self._train_fingerprint,
        )
        if self.solver_info is not None:
            config["solver_info"] = self.solver_info.to_dict()
        return config

    def fingerprint(self, dataset: Any) -> str:
        saved, self.solver_info = self.solver_info, None  # run statistics must not change the cache key
        try:
            return super().fingerprint(dataset)
        finally:
            self.solver_info = saved

    def checkpoint_fingerprint(self) -> str:
        # re-hashed on every call, as ModelOutputScorer does for in-memory models: a model trained further between
        # two calls must not be served stale scores from the datasets cache
        return model_fingerprint(self.model)

    @property
    def num_scope_parameters(self) -> int:
        params = dict(self.model.named_parameters())
        return sum(params[n].numel() for n in self.scope_names)

    # ---- fitting u = H^-1 v ------------------------------------------------------------------------------------

    def _loss_on(self, dataset: Any) -> Callable[[Sequence[int]], torch.Tensor]:
        def loss_fn(indices: Sequence[int]) -> torch.Tensor:
            rows = _rows(dataset[list(indices)])
            batch = _to_device(self.collate_fn(rows), self.device)
            return self.per_sample_loss(self.model, batch).mean()

        return loss_fn

    def fit(self, train_dataset: Any = None) -> InfluenceScorer:
        """Compute ``v`` (mean gradient) and ``u = H^{-1} v`` on the training set (once).

        In a multi-process job (see `Scorer`'s `shard`) this is a collective call: each rank sums its shard's
        ``len(batch)/n``-weighted gradients (and, for CG and the exact solver, Hessian products / Hessian rows) and
        the partial sums are all-reduced; LiSSA's sequential recursion runs on rank 0 and ``u`` is broadcast, so
        every rank holds the same ``v`` and ``u``.

        Args:
            train_dataset (`datasets.Dataset`, *optional*): defaults to the one given at construction.

        Returns:
            `InfluenceScorer`: self, with `inverse_hvp`, `mean_gradient` and `solver_info` set.
        """
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if dataset is None:
            raise ValueError("InfluenceScorer.fit needs the training dataset (pass train_dataset=...).")
        if len(dataset) == 0:
            raise ValueError("The training dataset is empty: the mean gradient and Hessian are undefined.")
        self.train_dataset = dataset
        world = scorer_world(self)
        use_rank_device(self, world)
        self.model.to(self.device)
        reduce_over = world if world.is_distributed else None
        n = len(dataset)
        loss_fn = self._loss_on(dataset)
        with only_scope_requires_grad(self.model, self.scope_names) as params:
            logger.info("Influence: scope %s (%d parameters), solver %s, n=%d", self.scope_names,
                        sum(p.numel() for p in params), self.solver, n)
            v = mean_gradient(loss_fn, params, n, batch_size=self.hvp_batch_size, progress=self.progress,
                              world=reduce_over)
            effective = self.damping * self.scale
            factor = 1.0 if self.divide_by_scale else self.scale
            if self.solver == "lissa":
                u, info = self._lissa(loss_fn, params, v, n, world)
            elif self.solver == "cg":
                u, info = conjugate_gradient_inverse_hvp(
                    loss_fn, params, v, n, damping=effective, batch_size=self.hvp_batch_size,
                    max_iterations=self.cg_max_iterations, tol=self.cg_tol, progress=self.progress,
                    return_info=True, world=reduce_over,
                )
                u, info.output_factor = u * factor, factor
            else:
                u, info = exact_inverse_hvp(loss_fn, params, v, n, damping=effective,
                                            batch_size=self.hvp_batch_size, progress=self.progress, return_info=True,
                                            world=reduce_over)
                u, info.output_factor = u * factor, factor
        self.mean_gradient, self.inverse_hvp, self.solver_info = v, u, info
        self._train_fingerprint = dataset_fingerprint(dataset) if hasattr(dataset, "_fingerprint") else None
        return self

    def _lissa(self, loss_fn: Any, params: list[torch.Tensor], v: torch.Tensor, n: int, world: World
               ) -> tuple[torch.Tensor, InverseHVPInfo]:
        """LiSSA (a sequential recursion over sampled mini-batches): on rank 0, broadcast to the other ranks."""
        result = None
        if world.is_main:
            u, info = lissa_inverse_hvp(
                loss_fn, params, v, n, damping=self.damping, scale=self.scale, depth=self.depth,
                repeats=self.repeats, batch_size=self.lissa_batch_size, seed=self.seed,
                divide_by_scale=self.divide_by_scale, progress=self.progress, return_info=True,
            )
            result = (u.cpu(), info)
        u, info = broadcast_object(result, world)
        return u.to(v.device), info

    # ---- scoring -----------------------------------------------------------------------------------------------

    def score_batch(self, batch: dict[str, list]) -> np.ndarray:
        if self.inverse_hvp is None:
            raise RuntimeError("Call InfluenceScorer.fit(train_dataset) (or call the scorer on a dataset) first.")
        self.model.to(self.device)
        collated = _to_device(self.collate_fn(_rows(batch)), self.device)
        with only_scope_requires_grad(self.model, self.scope_names) as params:
            losses = self.per_sample_loss(self.model, collated)
            scores = per_sample_directional_derivatives(losses, params, self.inverse_hvp.to(self.device),
                                                        mode=self.per_sample)
        return scores.cpu().numpy()

    def __call__(self, dataset: Any, **map_kwargs: Any) -> Any:
        if self.inverse_hvp is None:
            self.fit(self.train_dataset if self.train_dataset is not None else dataset)
        return super().__call__(dataset, **map_kwargs)
