"""Select a subset of a dataset from a score column: top-k, offset window, coverage strata, weighted sampling.

Polarity: every score column knows which way it points (`hf_influence.polarity`: scorers record
`"higher_is_harder"` or `"higher_is_easier"` on the column they add, and it survives save/load). Strategies with a
hard/easy reading use it: `"hardest"` keeps the hardest examples (the lowest AUM, the highest EL2N), `"easiest"` the
easiest, `"window"` skips the `offset` hardest, CCS/coverage cut the hardest first and stratify on hardness, and
`"weighted"` prefers hard ones (`prefer="hard"`). Scores with no hard/easy reading (gradient similarity to a target
set) use `"highest"`/`"lowest"`, which keep the highest/lowest raw values and never look at polarity. A hard/easy
strategy on a column with no known polarity is an error naming the fix (`polarity=` or `set_polarity`). New strategies
are added with `register_strategy`.

Strategies (see `list_strategies()`), with their sources (METHODS.md A.3, B.4, C.4, D):

Below, "score" means the hardness (the column, negated when higher = easier).

- `"hardest"`: keep the `keep` highest scores (Data Diet `keep_max_scores`; ties keep the later rows);
  `absolute=True` ranks by `|score|` (the code's `keep_max_abs_scores`).
- `"easiest"`: keep the `keep` lowest scores (ties keep the earlier rows); `absolute=True`: `keep_min_abs_scores`.
- `"highest"` / `"lowest"`: keep the `keep` highest / lowest raw values, whatever the polarity.
- `"random"`: a uniform random subset (the score column is not needed; pass `column=None`).
- `"window"`: Data Diet's offset window: sort ascending, skip the `offset` highest scores and keep the next `keep`
  (ranks `[N - offset - keep, N - offset)`). `offset` is an int count or a fraction of the candidates. Or give
  `start_rank` instead, Data Diet code's own parameter: keep ascending ranks `[start_rank, start_rank + keep)`
  (`start_rank = N - keep - offset`).
- `"ccs"`: Coverage-centric coreset selection (Zheng et al., ICLR 2023): drop the `floor(beta * N)` highest scores,
  split the rest into `k` (default 50) equal-width strata over `[min, 1.0001 * max)` (left-closed; for `max <= 0`
  the upper end is `max + 0.0001 * |max|`, or the next float when `max == 0`), then visit strata from the smallest
  up, taking `min(|S_j|, floor(remaining budget / remaining strata))` uniformly at random from each. The official
  code always makes the hard cut by the lowest AUM whatever the stratification score: pass `cut_column="aum"` to
  cut the hardest by another column than the one stratified (also accepted by `"coverage"`).
- `"coverage"`: DEALRec's variant (Lin et al., SIGIR 2024, Alg. 2 and code `prune.py`): optionally drop the
  `floor(hard_prune * N)` highest scores (paper: none, the default `hard_prune=0.0`; official code: `0.1`), split the
  rest into `k` (default 50) equal-width groups over `[min, max]` where a score goes to the first group whose upper
  edge is >= the score (right-closed, the minimum in group 0), drop empty groups, then fill from the smallest group
  up with `min(|G|, floor(remaining budget / remaining non-empty groups))`, uniformly at random within a group. The
  paper's Alg. 2 (budget `floor(m/K)` recomputed after each group) gives the same counts, since empty groups are
  visited first and take nothing.
- `"dealrec"`: DEALRec's selection (registered by `hf_influence.rec.dealrec`): the column is the influence score,
  `effort_column` the effort, combined as `influence + lam * effort` and then selected by `"coverage"`.
- `"weighted"`: weighted sampling without replacement (Anand et al., EMNLP 2023, App. C.3): `mapping="linear"` maps
  the scores linearly to `[eps, 1]` and normalises them to probabilities; `mapping="softmax"` uses
  `softmax(score / temperature)`. Draws are successive (numpy `Generator.choice(..., replace=False, p=p)`).
  `prefer="hard"` (default) makes high scores likelier to be kept, `prefer="easy"` flips the score first.

`keep` is a fraction in (0, 1] of the rows that have a score (`floor(keep * N)`, at least one row) or an int count.
`class_balanced=True` applies the strategy within each class, with per-class quotas proportional to the class's
share (largest-remainder rounding, ties to the smaller label). Infinite scores (e.g. forgetting = inf for examples
never learned) keep their order for `"hardest"`/`"easiest"`/`"window"`, and are clipped to the finite range for
stratification and weighting.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from transformers.utils import logging

from .polarity import HIGHER_IS_HARDER, check_polarity, flip_polarity, get_polarity

logger = logging.get_logger(__name__)

NAN_POLICIES: tuple[str, ...] = ("drop", "raise")


@dataclass
class SelectionReport:
    """What a selection did: counts per class and per stratum before and after.

    Attributes:
        strategy (`str`), column (`str` or None), keep (the requested `keep`), seed (`int`),
        params (`dict`): the strategy keyword arguments used (defaults filled in).
        num_rows (`int`): rows in the input dataset. num_nan (`int`): rows without a score (excluded).
        num_candidates (`int`): rows that could be selected. num_kept (`int`): rows selected.
        num_hard_pruned (`int`): rows removed by a hard cut (CCS `beta`, coverage `hard_prune`) before sampling.
        class_balanced (`bool`), label_column (`str` or None).
        polarity (`str` or None): the polarity that oriented the scores (None for strategies on raw values).
        per_class_before / per_class_after (`dict[str, int]`): counts per label (candidates / kept), when the label
            column exists.
        strata (`list[dict]`): for `"ccs"`/`"coverage"`: one entry per stratum with `low`, `high`, `before`
            (candidates after the hard cut), `after` (kept) and `label` (the class, when class-balanced).
        indices (`list[int]`): kept row positions in the input dataset (not part of `to_dict`).
    """

    strategy: str
    column: str | None
    keep: float | int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    num_rows: int = 0
    num_nan: int = 0
    num_candidates: int = 0
    num_kept: int = 0
    num_hard_pruned: int = 0
    class_balanced: bool = False
    label_column: str | None = None
    polarity: str | None = None
    per_class_before: dict[str, int] = field(default_factory=dict)
    per_class_after: dict[str, int] = field(default_factory=dict)
    strata: list[dict[str, Any]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for dataset cards), without the kept indices."""
        out = asdict(self)
        out.pop("indices")
        return out

    def summary(self) -> str:
        """One line for logs."""
        text = (
            f"select_by_score: strategy={self.strategy!r} column={self.column!r} kept {self.num_kept}/{self.num_rows}"
            f" (candidates {self.num_candidates}, NaN {self.num_nan}, hard-pruned {self.num_hard_pruned})"
        )
        if self.per_class_after:
            text += " per class " + ", ".join(
                f"{k}: {self.per_class_before[k]}->{self.per_class_after.get(k, 0)}" for k in self.per_class_before
            )
        return text


# ----------------------------------------------------------------------------------------------------------------
# Strategies: each takes candidate scores and returns selected positions (into the candidate array)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class StrategyResult:
    """What a strategy function returns: the chosen positions into its `scores`, the rows a hard cut removed, and
    one dict per stratum (`low`, `high`, `before`, `after`) for stratified strategies."""

    chosen: np.ndarray
    hard_pruned: int = 0
    strata: list[dict[str, Any]] = field(default_factory=list)


def _hardest(
    scores: np.ndarray, m: int, rng: np.random.Generator, *, absolute: bool = False, **_: Any
) -> StrategyResult:
    order = np.argsort(np.abs(scores) if absolute else scores, kind="stable")
    return StrategyResult(order[len(scores) - m :])


def _easiest(
    scores: np.ndarray, m: int, rng: np.random.Generator, *, absolute: bool = False, **_: Any
) -> StrategyResult:
    return StrategyResult(np.argsort(np.abs(scores) if absolute else scores, kind="stable")[:m])


def _random(scores: np.ndarray, m: int, rng: np.random.Generator, **_: Any) -> StrategyResult:
    return StrategyResult(rng.choice(len(scores), size=m, replace=False))


def _window(scores: np.ndarray, m: int, rng: np.random.Generator, *, offset: int = 0, **_: Any) -> StrategyResult:
    n = len(scores)
    if offset + m > n:
        raise ValueError(
            f"window: offset ({offset}) + keep ({m}) exceeds the {n} candidate rows. Lower the offset or keep."
        )
    order = np.argsort(scores, kind="stable")
    return StrategyResult(order[n - offset - m : n - offset])


def _clip_infinite(scores: np.ndarray) -> np.ndarray:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        raise ValueError("Every candidate score is infinite; stratified and weighted strategies need finite scores.")
    return np.clip(scores, finite.min(), finite.max())


def _drop_highest(scores: np.ndarray, fraction: float, name: str) -> tuple[np.ndarray, int]:
    """Positions that remain after removing floor(fraction * N) highest scores (stable: later rows go first)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {fraction!r}.")
    cut = int(math.floor(fraction * len(scores) + 1e-9))
    order = np.argsort(scores, kind="stable")
    return np.sort(order[: len(scores) - cut]), cut


def _fill_strata(groups: list[np.ndarray], m: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Visit groups in ascending size (ties: lower stratum first); each takes min(|G|, floor(remaining/left))."""
    sizes = np.array([len(g) for g in groups])
    taken: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(groups)
    remaining = m
    order = np.argsort(sizes, kind="stable")
    for visited, j in enumerate(order):
        left = len(groups) - visited
        take = min(int(sizes[j]), remaining // left)
        taken[j] = rng.choice(groups[j], size=take, replace=False) if take else np.empty(0, dtype=np.int64)
        remaining -= take
    return taken


def _strata_result(
    groups: list[np.ndarray], edges: np.ndarray, m: int, rng: np.random.Generator, cut: int
) -> StrategyResult:
    available = sum(len(g) for g in groups)
    if m > available:
        raise ValueError(
            f"Only {available} rows remain after the hard cut of {cut} rows, fewer than keep={m}. Lower the cut "
            "fraction (beta / hard_prune) or keep."
        )
    taken = _fill_strata(groups, m, rng)
    strata = [
        {"low": float(edges[j]), "high": float(edges[j + 1]), "before": len(groups[j]), "after": len(taken[j])}
        for j in range(len(groups))
    ]
    chosen = np.concatenate(taken) if taken else np.empty(0, dtype=np.int64)
    return StrategyResult(chosen, hard_pruned=cut, strata=strata)


def _check_k(k: Any) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (number of strata) must be a positive integer, got {k!r}.")
    return int(k)


def _ccs(
    scores: np.ndarray,
    m: int,
    rng: np.random.Generator,
    *,
    beta: float = 0.0,
    k: int = 50,
    cut_scores: np.ndarray | None = None,
    **_: Any,
) -> StrategyResult:
    k = _check_k(k)
    keep_pos, cut = _drop_highest(scores if cut_scores is None else cut_scores, beta, "beta")
    values = _clip_infinite(scores[keep_pos])
    low, high = float(values.min()), float(values.max())
    upper = high * 1.0001 if high > 0 else high + 0.0001 * abs(high)
    if upper <= high:
        upper = float(np.nextafter(high, np.inf))
    edges = np.linspace(low, upper, k + 1)
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, k - 1)  # [edge_j, edge_j+1)
    groups = [keep_pos[bins == j] for j in range(k)]
    return _strata_result(groups, edges, m, rng, cut)


def coverage_selection(
    scores: np.ndarray,
    m: int,
    rng: np.random.Generator,
    *,
    k: int = 50,
    hard_prune: float = 0.0,
    cut_scores: np.ndarray | None = None,
    **_: Any,
) -> StrategyResult:
    """DEALRec's coverage sampling (the `"coverage"` strategy; see the module docstring) on hardness `scores`."""
    k = _check_k(k)
    keep_pos, cut = _drop_highest(scores if cut_scores is None else cut_scores, hard_prune, "hard_prune")
    values = _clip_infinite(scores[keep_pos])
    edges = np.linspace(values.min(), values.max(), k + 1)
    bins = np.clip(np.searchsorted(edges[1:], values, side="left"), 0, k - 1)  # first upper edge >= score
    groups = [keep_pos[bins == j] for j in range(k)]
    nonempty = [j for j in range(k) if len(groups[j])]
    result = _strata_result([groups[j] for j in nonempty], edges, m, rng, cut)
    # report every group (empty ones included) with its own edges
    by_group = dict(zip(nonempty, result.strata))
    result.strata = [
        {
            "low": float(edges[j]),
            "high": float(edges[j + 1]),
            "before": len(groups[j]),
            "after": by_group[j]["after"] if j in by_group else 0,
        }
        for j in range(k)
    ]
    return result


MAPPINGS: tuple[str, ...] = ("linear", "softmax")
PREFERENCES: tuple[str, ...] = ("hard", "easy")


def _weighted(
    scores: np.ndarray,
    m: int,
    rng: np.random.Generator,
    *,
    mapping: str = "linear",
    eps: float = 1e-3,
    temperature: float = 1.0,
    prefer: str = "hard",
    **_: Any,
) -> StrategyResult:
    probs = sampling_probabilities(scores, mapping=mapping, eps=eps, temperature=temperature, prefer=prefer)
    positive = int((probs > 0).sum())
    if positive < m:
        raise ValueError(
            f"weighted: only {positive} rows have a non-zero sampling probability, fewer than keep={m}. Use a higher "
            "temperature, mapping='linear', or a smaller keep."
        )
    return StrategyResult(rng.choice(len(scores), size=m, replace=False, p=probs))


def sampling_probabilities(
    scores: np.ndarray,
    *,
    mapping: str = "linear",
    eps: float = 1e-3,
    temperature: float = 1.0,
    prefer: str = "hard",
) -> np.ndarray:
    """Probabilities used by the `"weighted"` strategy (they sum to 1).

    Args:
        scores (`np.ndarray`): finite scores (infinities are clipped to the finite range).
        mapping (`str`): `"linear"`: `w = eps + (1 - eps) * (s - min) / (max - min)` (all ones when constant), then
            `w / sum(w)` (Anand et al. 2023, App. C.3); `"softmax"`: `softmax(s / temperature)`.
        eps (`float`): the floor of the linear map, in (0, 1].
        temperature (`float`): softmax temperature, > 0.
        prefer (`str`): `"hard"` keeps high scores preferentially, `"easy"` negates the scores first.
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"Unknown mapping {mapping!r}; valid mappings are {', '.join(MAPPINGS)}.")
    if prefer not in PREFERENCES:
        raise ValueError(f"Unknown prefer {prefer!r}; valid values are {', '.join(PREFERENCES)}.")
    values = _clip_infinite(np.asarray(scores, dtype=np.float64))
    if prefer == "easy":
        values = -values
    if mapping == "linear":
        if not 0.0 < eps <= 1.0:
            raise ValueError(f"eps must lie in (0, 1], got {eps!r}.")
        span = values.max() - values.min()
        weights = np.ones_like(values) if span == 0 else eps + (1.0 - eps) * (values - values.min()) / span
    else:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        logits = values / temperature
        weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def _highest(scores: np.ndarray, m: int, rng: np.random.Generator, **_: Any) -> StrategyResult:
    return _hardest(scores, m, rng)


def _lowest(scores: np.ndarray, m: int, rng: np.random.Generator, **_: Any) -> StrategyResult:
    return _easiest(scores, m, rng)


@dataclass(frozen=True)
class SelectionStrategy:
    """A registered selection strategy.

    Attributes:
        name (`str`): the name `select_by_score` takes.
        function (`Callable`): `function(scores, m, rng, **options) -> StrategyResult`, where `scores` are the
            candidates' values (float64, NaN rows removed; oriented as hardness, higher = harder, when
            `uses_polarity`), `m` the number to keep and `rng` a seeded numpy `Generator`. It returns the chosen
            positions into `scores` (`StrategyResult.chosen`), and optionally how many rows a hard cut removed and a
            description of strata.
        defaults (`dict`): every option the strategy accepts, with its default.
        needs_column (`bool`): False when the strategy ignores the scores (`"random"`).
        uses_polarity (`bool`): True for strategies with a hard/easy reading (the column's polarity orients the
            scores); False for strategies on raw values (`"highest"`, `"lowest"`), which never look at polarity.
        column_options (`tuple[str, ...]`): options that name another column (e.g. `cut_column`); their values are
            read for the same candidates and passed as `<option without _column>_scores` arrays (oriented by their
            own polarity when `uses_polarity`).
    """

    name: str
    function: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    needs_column: bool = True
    uses_polarity: bool = True
    column_options: tuple[str, ...] = ()


_STRATEGIES: dict[str, SelectionStrategy] = {}


def register_strategy(
    name: str,
    function: Callable[..., Any] | None = None,
    *,
    defaults: dict[str, Any] | None = None,
    needs_column: bool = True,
    uses_polarity: bool = True,
    column_options: tuple[str, ...] = (),
    overwrite: bool = False,
) -> Any:
    """Register a selection strategy under `name` (usable as a decorator).

    Args:
        name (`str`): the strategy name.
        function (`Callable`, *optional*): see `SelectionStrategy.function`; omit to use as a decorator.
        defaults (`dict`, *optional*): the options the strategy accepts, with defaults.
        needs_column (`bool`, defaults to True), uses_polarity (`bool`, defaults to True),
            column_options (`tuple[str, ...]`): see `SelectionStrategy`.
        overwrite (`bool`, defaults to False): replace an existing strategy of that name.

    Example:
        ```python
        >>> import numpy as np
        >>> @register_strategy("middle", defaults={})
        ... def middle(scores, m, rng):
        ...     order = np.argsort(scores, kind="stable")
        ...     start = (len(scores) - m) // 2
        ...     return StrategyResult(order[start:start + m])
        ```
    """

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        if not name or not isinstance(name, str):
            raise ValueError(f"A strategy name must be a non-empty string, got {name!r}.")
        if name in _STRATEGIES and not overwrite:
            raise ValueError(f"A selection strategy named {name!r} is already registered; choose another name or "
                             "pass overwrite=True.")
        unknown = [option for option in column_options if option not in (defaults or {})]
        if unknown:
            raise ValueError(f"column_options {unknown} must also appear in defaults (with None as default).")
        _STRATEGIES[name] = SelectionStrategy(name, func, dict(defaults or {}), needs_column, uses_polarity,
                                              tuple(column_options))
        return func

    return decorator if function is None else decorator(function)


#: Strategies registered by modules outside this one, imported on first use.
_STRATEGY_MODULES: dict[str, str] = {"dealrec": "hf_influence.rec.dealrec"}


def get_strategy(name: str) -> SelectionStrategy:
    """The registered strategy `name`, with an error that lists the valid names."""
    if name not in _STRATEGIES and name in _STRATEGY_MODULES:
        importlib.import_module(_STRATEGY_MODULES[name])
    if name not in _STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}. Valid strategies: {', '.join(_STRATEGIES)}.")
    return _STRATEGIES[name]


register_strategy("hardest", _hardest, defaults={"absolute": False})
register_strategy("easiest", _easiest, defaults={"absolute": False})
register_strategy("highest", _highest, uses_polarity=False)
register_strategy("lowest", _lowest, uses_polarity=False)
register_strategy("random", _random, needs_column=False, uses_polarity=False)
register_strategy("window", _window, defaults={"offset": 0, "start_rank": None})
register_strategy("ccs", _ccs, defaults={"beta": 0.0, "k": 50, "cut_column": None}, column_options=("cut_column",))
register_strategy("coverage", coverage_selection, defaults={"k": 50, "hard_prune": 0.0, "cut_column": None},
                  column_options=("cut_column",))
register_strategy("weighted", _weighted,
                  defaults={"mapping": "linear", "eps": 1e-3, "temperature": 1.0, "prefer": "hard"})


def list_strategies() -> list[str]:
    """Names of the selection strategies accepted by `select_by_score` (built-in and registered)."""
    for module in _STRATEGY_MODULES.values():
        importlib.import_module(module)
    return list(_STRATEGIES)


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------


def _resolve_count(keep: Any, n: int, what: str = "keep") -> int:
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a fraction in (0, 1] or an int count, got {keep!r}.")
    if isinstance(keep, (int, np.integer)):
        if not 1 <= keep <= n:
            raise ValueError(f"{what}={keep} is outside [1, {n}] (the number of rows with a score).")
        return int(keep)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"{what}={keep} must be a fraction in (0, 1] (or an int count between 1 and {n}).")
    count = int(math.floor(keep * n + 1e-9))
    if count < 1:
        raise ValueError(f"{what}={keep} of {n} rows keeps no row; use a larger fraction or an int count.")
    return count


def _largest_remainder(total: int, sizes: np.ndarray) -> np.ndarray:
    """Split `total` proportionally to `sizes` (Hamilton's method; ties go to the earlier entry)."""
    exact = total * sizes / sizes.sum()
    quotas = np.floor(exact + 1e-9).astype(np.int64)
    short = total - int(quotas.sum())
    if short > 0:
        order = np.argsort(-(exact - quotas), kind="stable")
        quotas[order[:short]] += 1
    return np.minimum(quotas, sizes)


def _resolve_offset(offset: Any, n: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, (int, float, np.integer, np.floating)):
        raise TypeError(f"offset must be an int count or a fraction in [0, 1), got {offset!r}.")
    if isinstance(offset, (int, np.integer)):
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}.")
        return int(offset)
    if not 0.0 <= offset < 1.0:
        raise ValueError(f"A fractional offset must lie in [0, 1), got {offset}.")
    return int(math.floor(offset * n + 1e-9))


def _read_scores(dataset: Any, column: str) -> tuple[np.ndarray, str | None]:
    """The float64 values of `column` and their polarity (a `-name` that is not itself a column is negated, and its
    polarity flipped)."""
    name, sign = column, 1.0
    if column not in dataset.column_names and column.startswith("-"):
        name, sign = column[1:], -1.0
    if name not in dataset.column_names:
        raise ValueError(f"Column {column!r} is not in the dataset; columns are {dataset.column_names}.")
    try:
        scores = sign * np.asarray(dataset[name], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Column {name!r} must hold one number per row ({err}).") from err
    if scores.ndim != 1:
        raise ValueError(f"Column {name!r} must hold one number per row, got shape {scores.shape}.")
    polarity = get_polarity(dataset, name)
    return scores, polarity if sign > 0 else flip_polarity(polarity)


def _as_hardness(scores: np.ndarray, polarity: str | None, column: str, strategy: str) -> np.ndarray:
    """Scores oriented so that higher = harder, from the column's polarity; a clear error when it has none."""
    if polarity is None:
        raise ValueError(
            f"Strategy {strategy!r} keeps hard or easy examples, but column {column!r} has no known polarity (which "
            "way is harder). Pass polarity='higher_is_harder' or 'higher_is_easier' to select_by_score, mark the "
            f"column once with hf_influence.set_polarity(dataset, {column!r}, ...), or select on raw values with "
            "'highest' / 'lowest' (scores with no hard/easy reading, such as gradient similarity)."
        )
    return scores if polarity == HIGHER_IS_HARDER else -scores


def _label_key(label: Any) -> str:
    return str(label.item() if hasattr(label, "item") else label)


def select_by_score(
    dataset: Any,
    column: str | None,
    keep: float | int,
    strategy: str,
    *,
    class_balanced: bool = False,
    label_column: str | None = "label",
    seed: int = 0,
    return_report: bool = False,
    nan_policy: str = "drop",
    polarity: str | None = None,
    **strategy_kwargs: Any,
) -> Any:
    """Keep a subset of `dataset` chosen from the score `column` (see the module docstring for the strategies).

    Args:
        dataset (`datasets.Dataset`): the scored dataset (left untouched).
        column (`str` or None): the score column. May be None for `"random"`.
        keep (`float` or `int`): a fraction in (0, 1] of the rows with a score, or an int count.
        strategy (`str`): one of `list_strategies()`.
        class_balanced (`bool`, defaults to False): select within each class, keeping each class's share.
        label_column (`str`, defaults to `"label"`): the class column (for `class_balanced` and the report).
        seed (`int`, defaults to 0): seed of the numpy `Generator` used by the random strategies.
        return_report (`bool`, defaults to False): also return a `SelectionReport`.
        nan_policy (`str`, defaults to `"drop"`): `"drop"` excludes rows without a score (with a warning saying
            how many); `"raise"` refuses them.
        polarity (`str`, *optional*): `"higher_is_harder"` or `"higher_is_easier"`, overriding the polarity
            recorded on the column (scorers record it; `hf_influence.set_polarity` for your own columns). Needed only
            by hard/easy strategies on a column without one; `"highest"`/`"lowest"`/`"random"` ignore it.
        **strategy_kwargs: the strategy's options: `absolute` (hardest, easiest), `offset` or `start_rank` (window),
            `beta`, `k`, `cut_column` (ccs), `k`, `hard_prune`, `cut_column` (coverage), `mapping`, `eps`,
            `temperature`, `prefer` (weighted), `effort_column`, `lam`, `k`, `hard_prune`, `normalize` (dealrec).

    Returns:
        `datasets.Dataset` (kept rows in their original order, every column kept), or `(Dataset, SelectionReport)`.

    Raises:
        ValueError: unknown strategy or option, `keep` out of range, missing or all-NaN column, NaN scores with
            `nan_policy="raise"`, `class_balanced` without a label column, a hard/easy strategy on a column with no
            known polarity.

    Example:
        ```python
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"aum": [0.1, 0.9, 0.5, 0.7], "label": [0, 1, 0, 1]})
        >>> ds = set_polarity(ds, "aum", "higher_is_easier")  # scorers do this for you
        >>> list(select_by_score(ds, "aum", 2, "hardest")["aum"])  # the lowest AUM, original order kept
        [0.1, 0.5]
        >>> list(select_by_score(ds, "aum", 2, "highest")["aum"])  # raw values, polarity ignored
        [0.9, 0.7]
        ```
    """
    spec = get_strategy(strategy)
    accepted = tuple(spec.defaults)
    unknown = sorted(set(strategy_kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"Strategy {strategy!r} does not take {unknown}; it accepts {list(accepted) or 'no options'}."
        )
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"Unknown nan_policy {nan_policy!r}; valid values are {', '.join(NAN_POLICIES)}.")
    check_polarity(polarity)
    params = {**spec.defaults, **strategy_kwargs}
    if strategy == "window" and params["start_rank"] is not None and params["offset"]:
        raise ValueError("window takes either offset (how many of the highest scores to skip) or start_rank (the "
                         "ascending rank the window starts at, Data Diet's own offset), not both.")
    num_rows = len(dataset)
    if num_rows == 0:
        raise ValueError("Cannot select from an empty dataset.")

    # scores, oriented as hardness for strategies with a hard/easy reading
    if column is None:
        if spec.needs_column:
            raise ValueError(f"Strategy {strategy!r} needs a score column; pass column=<name>.")
        scores = np.zeros(num_rows)
    else:
        scores, column_polarity = _read_scores(dataset, column)
        if spec.uses_polarity and spec.needs_column:
            polarity = polarity or column_polarity
            scores = _as_hardness(scores, polarity, column, strategy)
    used_polarity = polarity if (spec.uses_polarity and spec.needs_column) else None
    extra_scores: dict[str, np.ndarray] = {}
    for option in spec.column_options:
        if params.get(option) is None:
            continue
        values, option_polarity = _read_scores(dataset, params[option])
        if spec.uses_polarity:
            values = _as_hardness(values, option_polarity, params[option], strategy)
        extra_scores[option.removesuffix("_column") + "_scores"] = values
    nan = np.isnan(scores) if spec.needs_column else np.zeros(num_rows, dtype=bool)  # "random" ignores the scores
    for values in extra_scores.values():
        nan |= np.isnan(values)
    num_nan = int(nan.sum())
    if num_nan == num_rows:
        raise ValueError(f"Column {column!r} is all NaN: nothing to select from. Check that the scorer ran.")
    if num_nan:
        if nan_policy == "raise":
            raise ValueError(
                f"Column {column!r} has {num_nan} NaN scores out of {num_rows}. Use nan_policy='drop' to exclude them."
            )
        others = [params[o] for o in spec.column_options if params.get(o) is not None]
        what = " or ".join(repr(c) for c in [column, *others])
        logger.warning(f"select_by_score: {num_nan} of {num_rows} rows have a NaN {what} and are excluded.")
    candidates = np.flatnonzero(~nan)

    # labels
    labels = None
    if label_column is not None and label_column in dataset.column_names:
        labels = np.asarray(dataset[label_column])
    elif class_balanced:
        raise ValueError(
            f"class_balanced=True needs a label column, but {label_column!r} is not in the dataset "
            f"(columns: {dataset.column_names}). Pass label_column=<name>."
        )

    m = _resolve_count(keep, len(candidates))
    rng = np.random.default_rng(seed)
    report = SelectionReport(
        strategy=strategy,
        column=column,
        keep=keep,
        seed=seed,
        params=dict(params),
        num_rows=num_rows,
        num_nan=num_nan,
        num_candidates=len(candidates),
        class_balanced=class_balanced,
        label_column=label_column if labels is not None else None,
        polarity=used_polarity,
    )

    if class_balanced:
        classes, inverse = np.unique(labels[candidates], return_inverse=True)
        groups = [candidates[inverse == c] for c in range(len(classes))]
        quotas = _largest_remainder(m, np.array([len(g) for g in groups]))
    else:
        classes, groups, quotas = np.array([None]), [candidates], np.array([m])

    chosen_parts = []
    for label, group, quota in zip(classes, groups, quotas):
        if quota == 0:
            continue
        kwargs = {k: v for k, v in params.items() if k not in spec.column_options}
        kwargs.update({name: values[group] for name, values in extra_scores.items()})
        if strategy == "window":
            kwargs.pop("start_rank")
            given = params["offset"] if params["start_rank"] is None else params["start_rank"]
            shift = _resolve_offset(given, len(group))
            if class_balanced and isinstance(given, (int, np.integer)):
                share = _largest_remainder(int(given), np.array([len(g) for g in groups]))
                shift = int(share[list(classes).index(label)])
            if params["start_rank"] is not None:  # ascending ranks [start, start + keep) = skip the rest at the top
                if shift + quota > len(group):
                    raise ValueError(f"window: start_rank ({shift}) + keep ({quota}) exceeds the {len(group)} "
                                     "candidate rows. Lower start_rank or keep.")
                shift = len(group) - shift - int(quota)
            kwargs["offset"] = shift
        result = spec.function(scores[group], int(quota), rng, **kwargs)
        chosen_parts.append(group[np.asarray(result.chosen, dtype=np.int64)])
        report.num_hard_pruned += result.hard_pruned
        for stratum in result.strata:
            if class_balanced:
                stratum["label"] = _label_key(label)
            report.strata.append(stratum)

    kept = np.sort(np.concatenate(chosen_parts)) if chosen_parts else np.empty(0, dtype=np.int64)
    report.indices = kept.tolist()
    report.num_kept = len(kept)
    if labels is not None:
        for value, count in zip(*np.unique(labels[candidates], return_counts=True)):
            report.per_class_before[_label_key(value)] = int(count)
        report.per_class_after = dict.fromkeys(report.per_class_before, 0)
        for value, count in zip(*np.unique(labels[kept], return_counts=True)):
            report.per_class_after[_label_key(value)] = int(count)
    logger.info(report.summary())
    selected = dataset.select(report.indices)
    return (selected, report) if return_report else selected
