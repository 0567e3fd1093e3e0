"""Intervals and paired tests for pruning experiments: is a selection better than random at the same size?

Every cell of a pruning experiment (one selection at one kept fraction) is fine-tuned with the same seeds as random
selection at that fraction, so the two can be compared seed by seed. With `n` seeds:

- mean and 95% confidence interval of a metric: `mean ± t_{0.975, n-1} * s / sqrt(n)` (Student t, `s` the sample
  standard deviation, `ddof=1`);
- the paired difference `d_s = metric(selection, seed s) - metric(random, seed s)`: its mean, the same t interval
  over the `d_s`, and the two-sided p-value of the paired t-test (`scipy.stats.ttest_rel`, H0: mean difference 0);
- when seeds are few and the metric is an average over evaluation examples (Recall@K over test users), a paired
  bootstrap over the examples: resample the example indices with replacement (the same indices for both arms), take
  the mean over seeds of the per-seed difference of means, and read the percentile interval; its two-sided p-value is
  `2 * min(P*(d <= 0), P*(d >= 0))` over the bootstrap draws (Efron & Tibshirani 1993, ch. 13 and 16);
- a share counted on a finite set (the corrupted pairs among a score's hardest 5%): the exact Clopper-Pearson interval
  of the binomial proportion (`proportion_interval`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PAIRED_T_TEST = "paired t-test (two-sided, scipy.stats.ttest_rel)"
PAIRED_BOOTSTRAP = "paired bootstrap over evaluation examples (percentile interval, two-sided)"


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval (NaN bounds when there are too few values)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.low) and (self.low > 0 or self.high < 0))


@dataclass(frozen=True)
class PairedComparison:
    """The paired difference `a - b` with its interval, p-value and the test that produced them."""

    difference: Interval
    p_value: float
    test: str


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r} (e.g. 0.95).")


def mean_interval(values: Any, confidence: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of `values` (NaNs dropped; NaN bounds for fewer than 2 values).

    Example:
        ```python
        >>> iv = mean_interval([0.80, 0.82, 0.84])
        >>> round(iv.mean, 2), round(iv.high - iv.mean, 4)  # t_{0.975,2} * 0.02 / sqrt(3)
        (0.82, 0.0497)
        ```
    """
    from scipy import stats

    _check_confidence(confidence)
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    array = array[~np.isnan(array)]
    n = int(array.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(array.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * array.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def paired_t(a: Any, b: Any, confidence: float = 0.95) -> PairedComparison:
    """Paired difference `a - b` over matched pairs (seeds): t interval of the mean difference and the two-sided
    paired t-test p-value (NaN with fewer than 2 pairs; p = 1 when every difference is exactly 0, NaN when they
    are all equal and non-zero, where the t statistic is undefined)."""
    from scipy import stats

    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired_t needs matched pairs, got {a.size} and {b.size} values.")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    difference = mean_interval(a - b, confidence)
    if a.size < 2:
        p = math.nan
    elif np.all(a - b == 0):
        p = 1.0
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return PairedComparison(difference, p, PAIRED_T_TEST)


def paired_bootstrap(
    a: Any, b: Any, confidence: float = 0.95, num_resamples: int = 10_000, seed: int = 0
) -> PairedComparison:
    """Paired bootstrap of the mean difference over evaluation examples.

    Args:
        a, b (`array-like` of shape `[seeds, examples]` or `[examples]`): per-example metric values of the two arms,
            row `s` of both from the same seed and column `i` from the same evaluation example.
        confidence (`float`, defaults to 0.95): the interval's level.
        num_resamples (`int`, defaults to 10000): bootstrap draws.
        seed (`int`, defaults to 0): seed of the resampling.

    Returns:
        `PairedComparison`: the observed mean difference (mean over seeds of the difference of per-seed means), the
        percentile interval, and `p = min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`.
    """
    _check_confidence(confidence)
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap needs the same seeds x examples for both arms, got {a.shape} and "
                         f"{b.shape}.")
    if a.shape[1] < 2:
        raise ValueError("paired_bootstrap needs at least 2 evaluation examples.")
    diff = np.nanmean(a - b, axis=0)  # per example, averaged over seeds: resampling examples keeps the seeds paired
    diff = diff[~np.isnan(diff)]
    observed = float(diff.mean())
    rng = np.random.default_rng(seed)
    draws = np.empty(num_resamples)
    for start in range(0, num_resamples, 1000):
        stop = min(num_resamples, start + 1000)
        index = rng.integers(0, diff.size, size=(stop - start, diff.size))
        draws[start:stop] = diff[index].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = (float(x) for x in np.quantile(draws, [tail, 1.0 - tail]))
    p = float(min(1.0, 2.0 * min((draws <= 0).mean(), (draws >= 0).mean())))
    return PairedComparison(Interval(observed, low, high, int(a.shape[0])), p, PAIRED_BOOTSTRAP)


def proportion_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Share `successes / trials` with its exact (Clopper-Pearson) binomial confidence interval.

    The bounds are the `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles of Beta distributions
    (`Beta(k, n - k + 1)` below, `Beta(k + 1, n - k)` above; 0 and 1 at the ends), so the interval never leaves [0, 1]
    and holds its level even for 0 or `n` successes (Clopper & Pearson 1934).

    Example:
        ```python
        >>> iv = proportion_interval(0, 10)
        >>> iv.low, round(iv.high, 4)  # 1 - 0.025 ** (1 / 10)
        (0.0, 0.3085)
        ```
    """
    from scipy import stats

    _check_confidence(confidence)
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"proportion_interval needs 0 <= successes <= trials and trials >= 1, got {successes} of "
                         f"{trials}.")
    tail = (1.0 - confidence) / 2
    low = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1.0 - tail, successes + 1, trials - successes))
    return Interval(successes / trials, low, high, int(trials))
