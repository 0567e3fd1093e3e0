"""Hessian-vector products and inverse-Hessian-vector products (iHVPs) for a small parameter scope.

Influence functions (Koh & Liang, ICML 2017; DEALRec, Lin et al., SIGIR 2024, Alg. 1) need ``H^{-1} v`` where ``H``
is the Hessian of the mean training loss over a chosen set of parameters. Three solvers are provided, from cheap and
stochastic to exact:

| solver | cost | accuracy |
|---|---|---|
| `lissa_inverse_hvp` | ``depth x repeats`` HVPs on ``batch_size`` samples | stochastic, converges in expectation |
| `conjugate_gradient_inverse_hvp` | one full-data pass of HVPs per iteration | to ``tol``; needs H + lambda I > 0 |
| `exact_inverse_hvp` | ``P`` batched backwards per data batch + ``O(P^3)`` | exact (float64), P <= ~10^4 |

All solvers take the same loss description: ``loss_fn(indices) -> scalar``, the **mean** loss over the training samples
at ``indices`` (a list of ints in ``[0, num_samples)``), computed with the parameters in ``params`` (which must require
grad). The full-data Hessian is ``H = (1/n) sum_i d^2 L(s_i)``; full-data quantities are accumulated over batches of
``batch_size`` samples, each weighted by its size, so the result does not depend on the batching.

Vectors are flat 1-D tensors of length ``P = sum(p.numel() for p in params)`` (use `flatten_tensors` /
`unflatten_vector` to convert); `hvp` also accepts a list shaped like ``params`` and answers in the same form.

Distributed: the full-data passes (`mean_gradient`, `full_data_hvp` and so CG, `damped_hessian` and so the exact
solver) take ``world=`` (`hf_influence.distributed.World`). Each rank then runs only the batches of its contiguous
shard of the ``n`` samples, each still weighted by ``len(batch) / n`` (``n`` the whole training set), and the partial
sums are all-reduced: every rank gets the full-data result. These calls are then collective (every rank calls them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ..distributed import World, all_reduce_sum, shard_range

logger = logging.get_logger(__name__)

LossFn = Callable[[Sequence[int]], torch.Tensor]

__all__ = [
    "InverseHVPInfo",
    "conjugate_gradient_inverse_hvp",
    "damped_hessian",
    "exact_inverse_hvp",
    "flatten_tensors",
    "full_data_hvp",
    "hvp",
    "lissa_inverse_hvp",
    "mean_gradient",
    "unflatten_vector",
]


@dataclass
class InverseHVPInfo:
    """What an iHVP solver did, for logs, cards and convergence checks.

    Attributes:
        solver (`str`): ``"lissa"``, ``"cg"`` or ``"exact"``.
        damping (`float`): the damping passed to the solver.
        effective_damping (`float`): the lambda in the solved system ``(H + lambda I) x = v`` (LiSSA: damping * scale).
        output_factor (`float`): the solution returned is ``output_factor * (H + effective_damping I)^{-1} v``
            (LiSSA without ``divide_by_scale``: ``scale``; otherwise 1).
        iterations (`int`): LiSSA steps per repeat / CG iterations / 1 for exact.
        converged (`bool`): CG reached ``tol``; LiSSA's last relative update is below 1e-3; exact: always True.
        residual_norms (`list[float]`): CG relative residual per iteration; LiSSA relative update
            ``||h_t - h_{t-1}|| / ||h_t||`` every ``log_every`` steps (first repeat).
        extra (`dict`): solver-specific values (e.g. Hessian eigenvalue range for exact).
    """

    solver: str
    damping: float
    effective_damping: float
    output_factor: float = 1.0
    iterations: int = 0
    converged: bool = False
    residual_norms: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "solver": self.solver,
            "damping": self.damping,
            "effective_damping": self.effective_damping,
            "output_factor": self.output_factor,
            "iterations": self.iterations,
            "converged": self.converged,
            "final_residual": self.residual_norms[-1] if self.residual_norms else None,
            **self.extra,
        }


# ----------------------------------------------------------------------------------------------------------------
# flat-vector helpers
# ----------------------------------------------------------------------------------------------------------------


def flatten_tensors(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat 1-D vector (in the order given)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_vector(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped like ``like`` (the inverse of `flatten_tensors`)."""
    total = sum(t.numel() for t in like)
    if vector.numel() != total:
        raise ValueError(f"The vector has {vector.numel()} entries but the parameters have {total}.")
    out, offset = [], 0
    for t in like:
        out.append(vector[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def _check_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    params = list(params)
    if not params:
        raise ValueError("No parameters given: pass the tensors whose Hessian you want (e.g. [layer.weight]).")
    frozen = [i for i, p in enumerate(params) if not p.requires_grad]
    if frozen:
        raise ValueError(
            f"Parameters at positions {frozen} do not require grad; call p.requires_grad_(True) on every tensor of "
            "the scope before computing Hessian-vector products."
        )
    return params


def _grads(loss: torch.Tensor, params: list[torch.Tensor], create_graph: bool) -> list[torch.Tensor]:
    if loss.dim() != 0:
        raise ValueError(f"The loss must be a scalar (the mean over the batch), got shape {tuple(loss.shape)}.")
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    unused = [i for i, g in enumerate(grads) if g is None]
    if len(unused) == len(params):
        raise ValueError("The loss does not depend on any of the given parameters; check the parameter scope.")
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


# ----------------------------------------------------------------------------------------------------------------
# gradients and Hessian-vector products
# ----------------------------------------------------------------------------------------------------------------


def hvp(
    loss_fn: Callable[[], torch.Tensor] | torch.Tensor,
    params: Sequence[torch.Tensor],
    v: torch.Tensor | Sequence[torch.Tensor],
) -> torch.Tensor | list[torch.Tensor]:
    """Exact Hessian-vector product ``(d^2 loss / d params^2) v`` by double backpropagation (Pearlmutter, 1994).

    Args:
        loss_fn (`Callable[[], torch.Tensor]` or `torch.Tensor`): a zero-argument callable returning the scalar loss,
            or the scalar loss itself (its graph must still be alive).
        params (`Sequence[torch.Tensor]`): the tensors (requiring grad) that span the Hessian.
        v (`torch.Tensor` or `Sequence[torch.Tensor]`): a flat vector of length ``sum(p.numel())`` or a list shaped
            like ``params``.

    Returns:
        `torch.Tensor` or `list[torch.Tensor]`: ``H v`` in the same form as ``v``. Parameters the gradient does not
        depend on contribute zero rows.

    Example:
        ```python
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> hvp(lambda: (w**3).sum(), [w], torch.tensor([1.0, 1.0]))  # H = diag(6w)
        tensor([ 6., 12.])
        ```
    """
    params = _check_params(params)
    flat = isinstance(v, torch.Tensor)
    vs = unflatten_vector(v, params) if flat else list(v)
    if len(vs) != len(params) or any(a.shape != p.shape for a, p in zip(vs, params)):
        raise ValueError("v must be flat or a list of tensors with the same shapes as params.")
    loss = loss_fn() if callable(loss_fn) else loss_fn
    grads = _grads(loss, params, create_graph=True)
    dot = sum((g * vi.to(g.dtype)).sum() for g, vi in zip(grads, vs) if g.requires_grad)
    if not isinstance(dot, torch.Tensor):  # the gradient is constant in params: the Hessian is zero
        out = [torch.zeros_like(p) for p in params]
    else:
        hv = torch.autograd.grad(dot, params, allow_unused=True)
        out = [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, hv)]
    return flatten_tensors(out) if flat else out


def _batches(num_samples: int, batch_size: int, world: World | None = None) -> list[list[int]]:
    """Batches of sample indices: all of them, or with a `world` of several processes this rank's shard only."""
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}.")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    rows = shard_range(num_samples, world) if world is not None else range(num_samples)
    return [list(range(s, min(s + batch_size, rows.stop))) for s in range(rows.start, rows.stop, batch_size)]


def _reduced(total: torch.Tensor, world: World | None) -> torch.Tensor:
    """The sum over ranks of each rank's partial (already ``1/n``-weighted) full-data sum."""
    return total if world is None else all_reduce_sum(total, world)


def mean_gradient(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    num_samples: int,
    batch_size: int = 64,
    progress: bool = False,
    world: World | None = None,
) -> torch.Tensor:
    """The gradient of the mean loss over all ``num_samples`` samples, ``(1/n) sum_i dL(s_i)``, as a flat vector.

    Batches are weighted by their size, so the last partial batch counts exactly as much as its samples. (DEALRec's
    code averages batch means, which over-weights the last partial batch; the difference is a small constant-free
    change of v that we do not replicate.)
    """
    params = _check_params(params)
    total = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    for idx in tqdm(_batches(num_samples, batch_size, world), desc="mean gradient", disable=not progress):
        grads = _grads(loss_fn(idx), params, create_graph=False)
        total += flatten_tensors(grads).detach() * (len(idx) / num_samples)
    return _reduced(total, world)


def full_data_hvp(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    v: torch.Tensor,
    num_samples: int,
    batch_size: int = 64,
    world: World | None = None,
) -> torch.Tensor:
    """``H v`` for the Hessian of the mean loss over all samples (one pass over the data, batches weighted by size)."""
    out = torch.zeros_like(v)
    for idx in _batches(num_samples, batch_size, world):
        out += hvp(lambda idx=idx: loss_fn(idx), params, v) * (len(idx) / num_samples)
    return _reduced(out, world)


# ----------------------------------------------------------------------------------------------------------------
# solvers
# ----------------------------------------------------------------------------------------------------------------


def lissa_inverse_hvp(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    v: torch.Tensor,
    num_samples: int,
    *,
    damping: float = 0.01,
    scale: float = 25.0,
    depth: int = 5000,
    repeats: int = 1,
    batch_size: int = 1,
    seed: int = 0,
    divide_by_scale: bool = False,
    log_every: int = 100,
    progress: bool = True,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, InverseHVPInfo]:
    """Stochastic inverse-HVP by the LiSSA recursion (Agarwal et al., 2016), as in DEALRec's Alg. 1 and code.

    Recursion, with ``d = damping``, ``c = scale`` and ``s_t`` a fresh random mini-batch of ``batch_size`` samples::

        h_0 = v,    h_t = v + (1 - d) h_{t-1} - H_{s_t} h_{t-1} / c

    Its fixed point solves ``(d I + H / c) h = v``, i.e. ``h* = c (H + c d I)^{-1} v``: with the paper's defaults
    (d = 0.01, c = 25) that is ``25 (H + 0.25 I)^{-1} v``, a damped inverse with effective damping 0.25 times 25.
    DEALRec's code returns ``h`` as is (**no final division by the scale**, the default here); Koh & Liang divide by
    ``c`` at the end (``divide_by_scale=True``), which returns ``(H + c d I)^{-1} v``. Either way the constant factor
    does not change any ranking.

    The recursion contracts when every eigenvalue ``mu`` of ``H_{s_t}`` satisfies ``-c d < mu < c (2 - d)``; raise
    ``scale`` if it diverges (this function raises an error on a non-finite iterate). Samples are drawn without
    replacement within an epoch (a freshly seeded permutation, as a shuffled ``DataLoader`` does); each repeat uses
    seed ``seed + r`` and the repeats are averaged.

    Args:
        loss_fn (`Callable[[Sequence[int]], torch.Tensor]`): mean loss over the samples at the given indices.
        params (`Sequence[torch.Tensor]`): the parameter scope (requires grad).
        v (`torch.Tensor`): flat vector of length ``P``.
        num_samples (`int`): number of training samples ``n``.
        damping (`float`, defaults to 0.01): ``d``.
        scale (`float`, defaults to 25.0): ``c``.
        depth (`int`, defaults to 5000): recursion steps ``T`` per repeat.
        repeats (`int`, defaults to 1): independent recursions averaged.
        batch_size (`int`, defaults to 1): samples per HVP step.
        seed (`int`, defaults to 0): seeds the sample draws.
        divide_by_scale (`bool`, defaults to `False`): Koh & Liang's final ``/ scale``.
        log_every (`int`, defaults to 100): record the relative update every this many steps.
        progress (`bool`, defaults to `True`): show a progress bar.
        return_info (`bool`, defaults to `False`): also return an `InverseHVPInfo`.

    Returns:
        `torch.Tensor` (flat, length ``P``), or ``(tensor, InverseHVPInfo)`` with ``return_info=True``.
    """
    params = _check_params(params)
    if scale <= 0 or not 0 <= damping < 1:
        raise ValueError(f"Need scale > 0 and 0 <= damping < 1, got scale={scale}, damping={damping}.")
    if depth < 1 or repeats < 1:
        raise ValueError(f"depth and repeats must be >= 1, got depth={depth}, repeats={repeats}.")
    batch_size = min(batch_size, num_samples)
    v = v.detach()
    estimates = []
    history: list[float] = []
    last_rel = math.inf
    bar = tqdm(total=depth * repeats, desc="LiSSA iHVP", disable=not progress)
    for r in range(repeats):
        generator = torch.Generator().manual_seed(seed + r)
        order = torch.randperm(num_samples, generator=generator).tolist()
        cursor = 0
        h = v.clone()
        for t in range(depth):
            if cursor + batch_size > len(order):
                order = torch.randperm(num_samples, generator=generator).tolist()
                cursor = 0
            idx = order[cursor : cursor + batch_size]
            cursor += batch_size
            hv = hvp(lambda idx=idx: loss_fn(idx), params, h)
            new_h = v + (1.0 - damping) * h - hv / scale
            if (t + 1) % log_every == 0 or t == depth - 1:
                norm = float(new_h.norm())
                if not math.isfinite(norm):
                    bar.close()
                    raise FloatingPointError(
                        f"LiSSA diverged at step {t + 1} (repeat {r}): the iterate is not finite. The scale ({scale}) "
                        "must exceed the largest Hessian eigenvalue; increase `scale` (or the damping)."
                    )
                last_rel = float((new_h - h).norm()) / max(norm, 1e-30)
                if r == 0:
                    history.append(last_rel)
                bar.set_postfix(rel_update=f"{last_rel:.2e}", refresh=False)
            h = new_h
            bar.update(1)
        estimates.append(h)
    bar.close()
    result = torch.stack(estimates).mean(0)
    if divide_by_scale:
        result = result / scale
    info = InverseHVPInfo(
        solver="lissa",
        damping=damping,
        effective_damping=damping * scale,
        output_factor=1.0 if divide_by_scale else scale,
        iterations=depth,
        converged=last_rel < 1e-3,
        residual_norms=history,
        extra={"scale": scale, "repeats": repeats, "batch_size": batch_size, "seed": seed,
               "divide_by_scale": divide_by_scale},
    )
    logger.info("LiSSA finished %d steps x %d repeats; last relative update %.3e", depth, repeats, last_rel)
    return (result, info) if return_info else result


def conjugate_gradient_inverse_hvp(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    v: torch.Tensor,
    num_samples: int,
    *,
    damping: float = 0.01,
    batch_size: int = 64,
    max_iterations: int | None = None,
    tol: float = 1e-6,
    progress: bool = True,
    return_info: bool = False,
    world: World | None = None,
) -> torch.Tensor | tuple[torch.Tensor, InverseHVPInfo]:
    """Solve ``(H + damping I) x = v`` by conjugate gradient with full-data Hessian-vector products.

    Each iteration costs one pass over the data (``ceil(n / batch_size)`` double-backward HVPs). CG needs
    ``H + damping I`` positive definite; if a search direction has non-positive curvature (a non-convex loss with
    too little damping) the iteration stops and logs a warning (``info.converged`` is then False).

    Args:
        loss_fn (`Callable[[Sequence[int]], torch.Tensor]`): mean loss over the samples at the given indices.
        params (`Sequence[torch.Tensor]`): the parameter scope (requires grad).
        v (`torch.Tensor`): flat right-hand side.
        num_samples (`int`): number of training samples.
        damping (`float`, defaults to 0.01): ``lambda``.
        batch_size (`int`, defaults to 64): samples per HVP batch (does not change the result).
        max_iterations (`int`, *optional*): defaults to ``P`` (CG is exact after ``P`` steps in exact arithmetic).
        tol (`float`, defaults to 1e-6): stop when ``||r|| / ||v|| < tol``.
        progress (`bool`, defaults to `True`): show a progress bar.
        return_info (`bool`, defaults to `False`): also return an `InverseHVPInfo`.
        world (`World`, *optional*): shard each full-data pass over the ranks and all-reduce it (collective).

    Returns:
        `torch.Tensor` (flat), or ``(tensor, InverseHVPInfo)`` with ``return_info=True``.
    """
    params = _check_params(params)
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}.")
    v = v.detach()
    max_iterations = max_iterations or v.numel()

    def apply(x: torch.Tensor) -> torch.Tensor:
        return full_data_hvp(loss_fn, params, x, num_samples, batch_size, world) + damping * x

    x = torch.zeros_like(v)
    r = v.clone()
    p = r.clone()
    rs = float(r @ r)
    v_norm = max(math.sqrt(rs), 1e-30)
    history: list[float] = []
    converged = math.sqrt(rs) / v_norm < tol
    iterations = 0
    bar = tqdm(total=max_iterations, desc="CG iHVP", disable=not progress)
    while not converged and iterations < max_iterations:
        ap = apply(p)
        curvature = float(p @ ap)
        if curvature <= 0:
            logger.warning(
                "CG met non-positive curvature (%.3e) at iteration %d: H + %g I is not positive definite. Increase "
                "the damping.", curvature, iterations, damping,
            )
            break
        alpha = rs / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = float(r @ r)
        iterations += 1
        rel = math.sqrt(rs_new) / v_norm
        history.append(rel)
        bar.update(1)
        bar.set_postfix(rel_residual=f"{rel:.2e}", refresh=False)
        converged = rel < tol
        p = r + (rs_new / rs) * p
        rs = rs_new
    bar.close()
    if not converged:
        logger.warning("CG stopped after %d iterations without reaching tol=%g (last %.3e).", iterations, tol,
                       history[-1] if history else float("nan"))
    info = InverseHVPInfo(solver="cg", damping=damping, effective_damping=damping, iterations=iterations,
                          converged=converged, residual_norms=history, extra={"tol": tol})
    return (x, info) if return_info else x


def damped_hessian(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    num_samples: int,
    *,
    damping: float = 0.0,
    batch_size: int = 64,
    max_params: int = 10_000,
    progress: bool = True,
    world: World | None = None,
) -> torch.Tensor:
    """The full-data Hessian ``H + damping I`` over ``params`` as a dense float64 ``P x P`` matrix (symmetrised).

    Rows are computed by batched double backpropagation (``P`` vector-Jacobian products of the gradient per data
    batch, vectorised with ``is_grads_batched`` where the model allows it). Cost: ``O(n P)`` backward work and
    ``O(P^2)`` memory, hence ``max_params``.
    """
    params = _check_params(params)
    size = sum(p.numel() for p in params)
    if size > max_params:
        raise ValueError(
            f"The parameter scope has {size} entries; an explicit Hessian is limited to max_params={max_params} "
            "(O(P^2) memory, O(P^3) solve). Use solver 'cg' or 'lissa', or narrow the scope."
        )
    hessian = torch.zeros(size, size, dtype=torch.float64, device=params[0].device)
    chunk = min(size, 256)
    for idx in tqdm(_batches(num_samples, batch_size, world), desc="exact Hessian", disable=not progress):
        flat_grad = flatten_tensors(_grads(loss_fn(idx), params, create_graph=True))
        weight = len(idx) / num_samples
        if not flat_grad.requires_grad:  # gradient constant in params: zero Hessian contribution
            continue
        for start in range(0, size, chunk):
            stop = min(start + chunk, size)
            eye = torch.zeros(stop - start, size, dtype=flat_grad.dtype, device=flat_grad.device)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            try:
                rows = torch.autograd.grad(flat_grad, params, grad_outputs=eye, retain_graph=True,
                                           is_grads_batched=True, allow_unused=True)
                rows = [torch.zeros(stop - start, *p.shape, dtype=p.dtype, device=p.device) if r is None else r
                        for p, r in zip(params, rows)]
                block = torch.cat([r.reshape(stop - start, -1) for r in rows], dim=1)
            except RuntimeError:  # some ops cannot be vmapped: fall back to one backward per row
                block = torch.stack([
                    flatten_tensors([torch.zeros_like(p) if g is None else g for p, g in zip(
                        params, torch.autograd.grad(flat_grad, params, grad_outputs=e, retain_graph=True,
                                                    allow_unused=True))])
                    for e in eye
                ])
            hessian[start:stop] += block.double() * weight
    hessian = _reduced(hessian, world)
    hessian = 0.5 * (hessian + hessian.T)
    if damping:
        hessian += damping * torch.eye(size, dtype=hessian.dtype, device=hessian.device)
    return hessian


def exact_inverse_hvp(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    v: torch.Tensor,
    num_samples: int,
    *,
    damping: float = 0.01,
    batch_size: int = 64,
    max_params: int = 10_000,
    progress: bool = True,
    return_info: bool = False,
    world: World | None = None,
) -> torch.Tensor | tuple[torch.Tensor, InverseHVPInfo]:
    """Solve ``(H + damping I) x = v`` exactly: build the damped full-data Hessian, solve in float64.

    Meant for small scopes (``P <= max_params``, default 10^4: a 10^4 x 10^4 float64 matrix is 800 MB) and as the
    reference the iterative solvers are tested against. The info records the Hessian's eigenvalue range, which tells
    whether ``H + damping I`` is positive definite and which LiSSA ``scale`` converges (it must exceed the largest).

    Returns:
        `torch.Tensor` (flat, in ``v``'s dtype), or ``(tensor, InverseHVPInfo)`` with ``return_info=True``.
    """
    matrix = damped_hessian(loss_fn, params, num_samples, damping=damping, batch_size=batch_size,
                            max_params=max_params, progress=progress, world=world)
    eigenvalues = torch.linalg.eigvalsh(matrix) - damping
    try:
        solution = torch.linalg.solve(matrix, v.detach().to(torch.float64))
    except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError(
            f"The damped Hessian is singular (eigenvalues of H in [{float(eigenvalues.min()):.3e}, "
            f"{float(eigenvalues.max()):.3e}], damping {damping}). Increase the damping."
        ) from err
    info = InverseHVPInfo(solver="exact", damping=damping, effective_damping=damping, iterations=1, converged=True,
                          extra={"hessian_min_eigenvalue": float(eigenvalues.min()),
                                 "hessian_max_eigenvalue": float(eigenvalues.max())})
    result = solution.to(v.dtype)
    return (result, info) if return_info else result
