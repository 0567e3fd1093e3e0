"""Select a subset of a dataset from a score column: top-k, offset window, coverage strata, weighted sampling.

Polarity: every score column knows which way it points (`hf_influence.polarity`: scorers record
`"higher_is_harder"` or `"higher_is_easier"` on the column they add, and it survives save/load). Strategies with a
hard/easy reading use it: `"hardest"` keeps the hardest examples (the lowest AUM, the highest EL2N), `"easiest"` the
easiest, `"window"` skips the `offset` hardest, CCS/coverage cut the hardest first and stratify on hardness, and
`"weighted"` prefers hard ones (`prefer="hard"`). Scores with no hard/easy reading (gradient similarity to a target
set) use `"highest"`/`"lowest"`, which keep the highest/lowest raw values and never look at polarity. A hard/easy
strategy on a column with no known polarity is an error naming the fix (`polarity=` or `set_polarity`). New strategies
are added with `register_strategy`.

The strategies, their sources (METHODS.md A.3, B.4, C.4, D) and their registry live in `hf_influence.strategies`
(`list_strategies()`, `register_strategy`). `keep` is a fraction in (0, 1] of the rows that have a score
(`floor(keep * N)`, at least one row) or an int count. `class_balanced=True` applies the strategy within each class,
with per-class quotas proportional to the class's share (largest-remainder rounding, ties to the smaller label).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from transformers.utils import logging

from .polarity import HIGHER_IS_HARDER, check_polarity, flip_polarity, get_polarity
from .strategies import (  # noqa: F401  (re-exported: the selection API in one import)
    MAPPINGS,
    PREFERENCES,
    SelectionStrategy,
    StrategyResult,
    get_strategy,
    list_strategies,
    register_strategy,
    sampling_probabilities,
)

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
    spec.check_options(strategy_kwargs)
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
