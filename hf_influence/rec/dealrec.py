"""DEALRec pruning: combine the surrogate's influence score with the LLM's effort score and pick a few-shot subset.

DEALRec (Lin et al., SIGIR 2024, Alg. 2, Eq. 13) scores every user ``s`` as ``I_s = influence(s) + lambda * effort(s)``
and draws the few-shot set with coverage-enhanced (CCS-style) stratified sampling. Paper vs code (METHODS.md C.4):

- the paper sums the raw scores; the authors' code first **min-max normalises** each score to [0, 1]
  (``normalize="minmax"``, the default here; ``normalize="none"`` is the paper's raw sum);
- the code first discards the ``hard_prune`` = 10% highest combined scores (not in the paper; ``hard_prune=0.0``
  follows the paper), then splits the rest into ``K = 50`` equal-width score bins and fills the budget from the
  smallest bin upwards (`hf_influence.selection.select_by_score` with ``strategy="coverage"``).

The tuned ``lambda`` of the authors' ``hyper-parameters.txt`` is in `DEALREC_LAMBDA` (their argparse default is 0.5).

This module also defines the surrogate baselines the paper compares against on the same SASRec model
(`surrogate_el2n`, `surrogate_grand`): EL2N is defined for a softmax classifier, so for SASRec's binary
cross-entropy (one positive and one sampled negative per position) we use the closest honest analogue, the mean over
the user's positions of the L2 norm of the sigmoid error vector ``(1 - sigma(s_pos), sigma(s_neg))``; GraNd is the
L2 norm of the gradient of the user's loss over all surrogate parameters (eval mode). Both: higher = harder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ..normalization import minmax_scale
from ..polarity import HIGHER_IS_HARDER, score_feature
from ..selection import select_by_score
from ..strategies import StrategyResult, coverage_selection, register_strategy

logger = logging.get_logger(__name__)

NORMALIZATIONS: tuple[str, ...] = ("minmax", "none")

#: lambda per dataset from the authors' ``hyper-parameters.txt`` (all with K = 50 groups).
DEALREC_LAMBDA: dict[str, float] = {"games": 0.3, "book": 1.0, "microlens-50k": 1.0}

def _as_finite_array(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(
            f"The {name} scores hold {int(bad.sum())} non-finite values (NaN/inf), e.g. at positions "
            f"{np.flatnonzero(bad)[:5].tolist()}. Score every user (drop users without history/target first)."
        )
    return array


def combine_dealrec_scores(influence: Any, effort: Any, lam: float, normalize: str = "none") -> np.ndarray:
    """DEALRec's overall score ``I_s = influence + lambda * effort`` (Eq. 13), optionally after min-max normalisation.

    Args:
        influence (array-like): influence scores, one per user.
        effort (array-like): effort scores, one per user (same order).
        lam (`float`): lambda >= 0 (the paper searches {0.1, 0.3, 0.5, 1.0, 2.0}; see `DEALREC_LAMBDA`).
        normalize (`str`, defaults to `"none"`): ``"none"`` (the paper: the raw sum, so the score with the larger
            spread dominates) or ``"minmax"`` (the authors' code: each score to [0, 1] first; the DEALRec recipe's
            default).

    Returns:
        `np.ndarray`: float64 overall scores. Polarity as in the paper's selection: higher = harder (the code's
        ``hard_prune`` cuts the top).

    Example:
        ```python
        >>> combine_dealrec_scores([0.0, 2.0, 4.0], [10.0, 30.0, 20.0], lam=0.5).tolist()
        [5.0, 17.0, 14.0]
        >>> combine_dealrec_scores([0.0, 2.0, 4.0], [10.0, 30.0, 20.0], lam=0.5, normalize="minmax").tolist()
        [0.0, 1.0, 1.25]
        ```
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"Unknown normalize={normalize!r}; valid options are {', '.join(NORMALIZATIONS)}.")
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}.")
    influence = _as_finite_array(influence, "influence")
    effort = _as_finite_array(effort, "effort")
    if influence.shape != effort.shape:
        raise ValueError(f"influence has {influence.size} scores but effort has {effort.size}; score the same users.")
    if influence.size == 0:
        raise ValueError("No scores to combine: the user set is empty.")
    if normalize == "minmax":
        influence, effort = minmax_scale(influence), minmax_scale(effort)
    return influence + lam * effort


def check_budget(budget: int, num_users: int) -> None:
    """Raise a clear error when the few-shot budget is not in ``[1, num_users]``."""
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"The few-shot budget must be a positive integer, got {budget!r}.")
    if budget > num_users:
        raise ValueError(
            f"The few-shot budget ({budget}) is larger than the number of users ({num_users}). Lower the budget "
            f"(e.g. --budget {num_users}) or load more users."
        )


def select_dealrec(
    dataset: Any,
    *,
    budget: int = 1024,
    lam: float = 0.5,
    k: int = 50,
    hard_prune: float = 0.0,
    normalize: str = "none",
    seed: int = 42,
    influence_column: str = "influence",
    effort_column: str = "effort",
    column: str = "dealrec",
    return_report: bool = False,
) -> Any:
    """Combine the two score columns and keep ``budget`` users by coverage-enhanced sampling (DEALRec Alg. 2).

    Args:
        dataset (`datasets.Dataset`): one row per user, with the influence and effort columns.
        budget (`int`, defaults to 1024): the few-shot size ``r |D|``.
        lam (`float`, defaults to 0.5): lambda (see `DEALREC_LAMBDA` for the tuned values).
        k (`int`, defaults to 50): number of equal-width score groups.
        hard_prune (`float`, defaults to 0.0): fraction of the highest combined scores removed first (0.0 = the
            paper; the authors' code, and the DEALRec recipe's default, use 0.1).
        normalize (`str`, defaults to `"none"`): see `combine_dealrec_scores` (the paper's raw sum; `"minmax"` =
            the authors' code).
        seed (`int`, defaults to 42): seeds the random draws within groups.
        influence_column, effort_column (`str`): the score columns.
        column (`str`, defaults to `"dealrec"`): name of the combined-score column added to the output.
        return_report (`bool`, defaults to `False`): also return the `SelectionReport`.

    Returns:
        `datasets.Dataset` with the ``budget`` selected rows (and the ``column`` score), or ``(dataset, report)``.

    Raises:
        ValueError: for missing columns, non-finite scores, or a budget outside ``[1, len(dataset)]``.
    """
    missing = [c for c in (influence_column, effort_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Columns {missing} are missing (dataset has {dataset.column_names}). Score the users with "
            "InfluenceScorer and EffortScorer first."
        )
    check_budget(budget, len(dataset))
    kept_after_cut = len(dataset) - int(hard_prune * len(dataset))
    if budget > kept_after_cut:
        raise ValueError(
            f"The budget ({budget}) exceeds the {kept_after_cut} users left after the hard_prune={hard_prune} cut of "
            f"{len(dataset)} users. Lower the budget or hard_prune."
        )
    overall = combine_dealrec_scores(dataset[influence_column], dataset[effort_column], lam=lam, normalize=normalize)
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    scored = dataset.add_column(column, overall.astype(np.float32), feature=score_feature(HIGHER_IS_HARDER))
    return select_by_score(scored, influence_column, budget, "dealrec", seed=seed, return_report=return_report,
                           effort_column=effort_column, lam=lam, k=k,
                           hard_prune=hard_prune, normalize=normalize)


def dealrec_strategy(
    scores: np.ndarray,
    m: int,
    rng: np.random.Generator,
    *,
    effort_scores: np.ndarray | None = None,
    lam: float = 0.5,
    k: int = 50,
    hard_prune: float = 0.0,
    normalize: str = "none",
) -> StrategyResult:
    """The `"dealrec"` selection strategy: `combine_dealrec_scores(influence, effort)` then coverage sampling.

    It works on the raw influence and effort values, as the paper defines the combination (no polarity is read).

    `select_by_score(users, "influence", 1024, "dealrec", effort_column="effort", lam=0.3, hard_prune=0.1)` keeps
    1024 users exactly as `select_dealrec` does (Lin et al., SIGIR 2024, Alg. 2).
    """
    if effort_scores is None:
        raise ValueError("The 'dealrec' strategy combines the influence column with the effort: pass "
                         "effort_column=<the EffortScorer column>.")
    combined = combine_dealrec_scores(scores, effort_scores, lam=lam, normalize=normalize)
    return coverage_selection(combined, m, rng, k=k, hard_prune=hard_prune)


register_strategy("dealrec", dealrec_strategy,
                  defaults={"effort_column": None, "lam": 0.5, "k": 50, "hard_prune": 0.0, "normalize": "none"},
                  column_options=("effort_column",), uses_polarity=False)


def _rows(dataset: Any, start: int, stop: int) -> list[dict[str, Any]]:
    batch = dataset[start:stop]
    keys = list(batch)
    return [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]


class _LossModule(torch.nn.Module):
    """Wraps ``per_sample_loss(model, batch)`` as a module so `torch.func.functional_call` can swap its parameters."""

    def __init__(self, model: torch.nn.Module, per_sample_loss: Callable[[torch.nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model = model
        self.per_sample_loss = per_sample_loss

    def forward(self, batch: Any) -> torch.Tensor:
        return self.per_sample_loss(self.model, batch)


def surrogate_grand(
    model: torch.nn.Module,
    dataset: Any,
    per_sample_loss: Callable[[torch.nn.Module, Any], torch.Tensor],
    collate_fn: Callable[[list[dict[str, Any]]], Any],
    *,
    params: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> np.ndarray:
    """GraNd on the surrogate (Paul et al., NeurIPS 2021, Eq. 2): ``|| grad_theta L(s) ||_2`` per user, eval mode.

    Per-sample gradients over the selected parameters (all trainable ones by default) with ``torch.func.vmap`` of
    ``torch.func.grad`` (memory: ``batch_size x P`` floats; SASRec's loss supports vmap). A model whose loss cannot be
    vmapped falls back to one forward+backward per user. Higher = harder.

    Returns:
        `np.ndarray`: float64, one value per row of ``dataset``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    named = dict(model.named_parameters())
    names = list(params) if params is not None else [n for n, p in named.items() if p.requires_grad]
    if not names:
        raise ValueError("No parameters selected for GraNd: pass params=[names] or unfreeze the surrogate.")
    was_training = model.training
    model.eval().to(device)
    wrapper = _LossModule(model, per_sample_loss)
    scope = {f"model.{n}": named[n].detach() for n in names}
    frozen = {f"model.{n}": p.detach() for n, p in named.items() if n not in set(names)}

    def loss_one(trainable: dict[str, torch.Tensor], sample: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.unsqueeze(0) for k, v in sample.items()}
        return torch.func.functional_call(wrapper, {**frozen, **trainable}, (batch,))[0]

    per_sample_grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0))
    out: list[float] = []
    use_vmap = True
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc="GraNd (surrogate)", disable=not progress):
            batch = collate_fn(_rows(dataset, start, min(start + batch_size, len(dataset))))
            batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            size = next(iter(batch.values())).shape[0]
            if use_vmap:
                try:
                    grads = per_sample_grads(scope, batch)
                    sq = sum((g.reshape(size, -1).double() ** 2).sum(1) for g in grads.values())
                    out.extend(torch.sqrt(sq).tolist())
                    continue
                except RuntimeError as err:  # data-dependent control flow etc.: loop instead
                    logger.warning(f"GraNd: vmap failed ({err}); falling back to one backward per sample.")
                    use_vmap = False
            for b in range(size):
                sample = {k: v[b] for k, v in batch.items()}
                trainable = {k: v.clone().requires_grad_(True) for k, v in scope.items()}
                grads = torch.autograd.grad(loss_one(trainable, sample), list(trainable.values()), allow_unused=True)
                out.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))))
    finally:
        model.train(was_training)
    return np.asarray(out, dtype=np.float64)


def sasrec_position_errors(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Per-position sigmoid error norms ``[B, T]`` of a SASRec batch, NaN at positions without a target.

    With ``p`` and ``n`` the positive and negative logits of a position, the prediction vector is
    ``(sigma(p), sigma(n))`` and the target ``(1, 0)``, so the error norm is ``sqrt((1 - sigma(p))^2 + sigma(n)^2)``.
    """
    device = next(model.parameters()).device
    labels = batch["labels"].to(device)
    out = model(input_ids=batch["input_ids"].to(device), labels=labels, neg_ids=batch["neg_ids"].to(device),
                return_item_scores=False, return_dict=True)
    errors = torch.sqrt((1 - torch.sigmoid(out.pos_logits)) ** 2 + torch.sigmoid(out.neg_logits) ** 2)
    return errors.masked_fill(labels == 0, float("nan"))


def surrogate_el2n(
    model: torch.nn.Module,
    dataset: Any,
    collate_fn: Callable[[list[dict[str, Any]]], Any],
    *,
    position_errors: Callable[[torch.nn.Module, Any], torch.Tensor] = sasrec_position_errors,
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """EL2N analogue for a BCE surrogate: mean over a user's positions of ``||(1 - sigma(s_pos), sigma(s_neg))||_2``.

    Paul et al.'s EL2N (NeurIPS 2021, Eq. 3) is ``||softmax(f(x)) - onehot(y)||_2`` for a classifier; SASRec instead
    makes one binary prediction for the next item and one for a sampled negative at every position, so the error
    vector per position is ``(sigma(p) - 1, sigma(n) - 0)``. Averaging over positions keeps the score independent of
    the history length. Eval mode, no gradients. Higher = harder.

    Args:
        model (`torch.nn.Module`): the trained surrogate.
        dataset (`datasets.Dataset`): SASRec training features (``input_ids``, ``labels``, ...).
        collate_fn (`Callable`): the surrogate collator (use fixed negatives, ``SASRecCollator(resample=False)``).
        position_errors (`Callable[[model, batch], torch.Tensor]`): per-position error norms ``[B, T]`` with NaN at
            padding (default: `sasrec_position_errors`).
        batch_size (`int`, defaults to 256), progress (`bool`): as usual.

    Returns:
        `np.ndarray`: float64, one value per row.
    """
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(dataset), batch_size), desc="EL2N (surrogate)", disable=not progress):
                batch = collate_fn(_rows(dataset, start, min(start + batch_size, len(dataset))))
                errors = position_errors(model, batch).double()
                out.append(torch.nanmean(errors, dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()
