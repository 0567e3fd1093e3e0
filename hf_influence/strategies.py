"""Selection strategies: how `select_by_score` picks rows from scores, and the registry of strategies.

A strategy receives the candidates' scores (oriented as hardness, higher = harder, for strategies with a hard/easy
reading; raw values otherwise), the number to keep and a seeded numpy `Generator`, and returns the chosen positions
(`StrategyResult`). `register_strategy` adds one; `select_by_score` (`hf_influence.selection`) handles columns,
polarity, NaN rows, class balance and the report.

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

Infinite scores (e.g. forgetting = inf for examples never learned) keep their order for `"hardest"`/`"easiest"`/
`"window"`, and are clipped to the finite range for stratification and weighting.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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

    def check_options(self, options: Any) -> None:
        """Refuse options this strategy does not take, naming the ones it does."""
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"Strategy {self.name!r} does not take {unknown}; it accepts {list(self.defaults) or 'no options'}."
            )


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
