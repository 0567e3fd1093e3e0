"""Diagnostics of a scored split: where injected label noise lands, and whether GraNd at initialisation is merely the
input norm (Kirsch 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Share of the hardest examples whose corruption is measured (the paper compares the top 5% with the mislabeled set).
NOISE_TOP_FRACTION = 0.05


def noise_detection(scored, scores: Sequence[str], fraction: float = NOISE_TOP_FRACTION,
                    confidence: float = 0.95):
    """How well each score finds injected label noise: the corrupted pairs among its `fraction` hardest training
    pairs, with an interval and a test against chance.

    The hardest pairs are those `select_by_score(..., "hardest")` keeps (by the column's polarity, ties broken as the
    pruning does). With `M` scored rows of which `K` are corrupted and `N` flagged as hardest, of which `k` corrupted:

    - `share = k / N` with its exact Clopper-Pearson interval (`hf_influence.statistics.proportion_interval`);
    - `chance = K / M`, the share a random set of `N` rows has on average, and `enrichment = share / chance`;
    - `p_value = P(X >= k)`, `X ~ Hypergeometric(M, K, N)`: the one-sided probability that `N` rows drawn at random
      without replacement hold at least `k` corrupted ones (a score that finds noise has a small p).

    Args:
        scored (`datasets.Dataset`): the scored training split with an `is_noisy` column (the recipe's
            `--label_noise`, or `hf_influence.inject_label_noise`).
        scores (`Sequence[str]`): score columns to check; those absent or without a polarity are skipped.
        fraction (`float`, defaults to 0.05): share of the scored rows flagged as hardest (Anand et al. use 5%).
        confidence (`float`, defaults to 0.95): level of the interval.

    Returns:
        `pandas.DataFrame`: one row per score with `score, flagged, noisy, share, ci_low, ci_high, chance,
        enrichment, p_value`; empty without an `is_noisy` column.
    """
    import pandas as pd
    from scipy import stats

    from ..polarity import get_polarity
    from ..selection import select_by_score
    from ..statistics import proportion_interval

    columns = ["score", "flagged", "noisy", "share", "ci_low", "ci_high", "chance", "enrichment", "p_value"]
    if "is_noisy" not in scored.column_names:
        return pd.DataFrame(columns=columns)
    noisy = np.asarray(scored["is_noisy"], dtype=bool)
    rows = []
    for score in scores:
        if score not in scored.column_names or get_polarity(scored, score) is None:  # no hard/easy reading
            continue
        valid = ~np.isnan(np.asarray(scored[score], dtype=np.float64))
        scored_rows, corrupted = int(valid.sum()), int(noisy[valid].sum())
        hardest = np.asarray(select_by_score(scored, score, fraction, "hardest")["is_noisy"], dtype=bool)
        flagged, found = int(hardest.size), int(hardest.sum())
        interval = proportion_interval(found, flagged, confidence)
        chance = corrupted / scored_rows
        rows.append({"score": score, "flagged": flagged, "noisy": found, "share": interval.mean,
                     "ci_low": interval.low, "ci_high": interval.high, "chance": chance,
                     "enrichment": interval.mean / chance if chance > 0 else float("nan"),
                     "p_value": float(stats.hypergeom.sf(found - 1, scored_rows, corrupted, flagged))})
    return pd.DataFrame(rows, columns=columns)


def input_norm_correlations(scored) -> dict[str, float]:
    """With --grand_at_initialization: Spearman correlations of GraNd at init with the input-norm baseline
    (``input_norm``, Kirsch 2023) and with the length in tokens. Close to 1 means the GraNd ranking is mostly input
    norm / length, the reason Kirsch could not reproduce GraNd at initialisation (METHODS.md E.2)."""
    if "grand" not in scored.column_names or "input_norm" not in scored.column_names:
        return {}
    import pandas as pd

    frame = pd.DataFrame({"grand": scored["grand"], "input_norm": scored["input_norm"],
                          "num_tokens": [len(ids) for ids in scored["input_ids"]]})
    return {column: float(frame["grand"].corr(frame[column], method="spearman"))
            for column in ("input_norm", "num_tokens")}
