"""Diagnostics of a scored split: where injected label noise lands, and whether GraNd at initialisation is merely the
input norm (Kirsch 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Share of the hardest examples whose corruption is measured (the paper compares the top 5% with the mislabeled set).
NOISE_TOP_FRACTION = 0.05


def noise_in_hardest(scored, scores: Sequence[str], fraction: float = NOISE_TOP_FRACTION) -> dict[str, float]:
    """With --label_noise: the share of corrupted pairs among each score's ``fraction`` hardest training pairs
    (``"hardest"`` selection by the column's polarity, so ties break as the pruning does), and the dataset's own share
    (``"dataset"``, what a random set has on average). Anand et al. report ~0.11 for VoG/TracIn/PVI, chance level."""
    from ..polarity import get_polarity
    from ..selection import select_by_score

    if "is_noisy" not in scored.column_names:
        return {}
    shares = {"dataset": float(np.mean(scored["is_noisy"]))}
    for score in scores:
        if score not in scored.column_names or get_polarity(scored, score) is None:  # no hard/easy reading
            continue
        hardest = select_by_score(scored, score, fraction, "hardest")
        shares[score] = float(np.mean(hardest["is_noisy"]))
    return shares


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
