"""Training-dynamics summaries from stored signals: forgetting events (Toneva et al., ICLR 2019), AUM (Pleiss et al.,
NeurIPS 2020), dataset-cartography confidence/variability/correctness (Swayamdipta et al., EMNLP 2020), and the
streaming `ForgettingCounter` that counts forgetting one chunk of dense evaluations at a time. `SignalStore`
(`hf_influence.store`) holds the signals and calls these."""

from __future__ import annotations

import numpy as np
import pandas as pd

KEY_COLUMNS: tuple[str, ...] = ("example_id", "epoch", "step")


class ForgettingCounter:
    """Toneva et al. (ICLR 2019) forgetting events per example, counted one frame of evaluations at a time.

    Keeps four values per example (events so far, whether it was ever correct, its last `correct` and the step of
    that evaluation), so counting over any number of evaluations needs memory proportional to the number of
    examples only. Feeding the frames of a table in order gives exactly `forgetting_events` of the concatenated
    table, provided that no example has an evaluation at an earlier step than one already fed (`in_order` turns False
    otherwise, and the caller must count on the whole table instead).
    """

    def __init__(self) -> None:
        self.ids = np.empty(0, dtype=np.int64)
        self.events = np.empty(0, dtype=np.float64)
        self.learned = np.empty(0, dtype=bool)
        self.last_correct = np.empty(0, dtype=np.float64)
        self.last_step = np.empty(0, dtype=np.int64)
        self.in_order = True

    def _grow(self, ids: np.ndarray) -> None:
        """Add the (sorted, unique) `ids` not seen yet."""
        new = np.setdiff1d(ids, self.ids, assume_unique=True)
        if not len(new):
            return
        merged = np.union1d(self.ids, new)
        where = np.searchsorted(merged, self.ids)
        for name, fill in (("events", 0.0), ("learned", False), ("last_correct", np.nan),
                           ("last_step", np.iinfo(np.int64).min)):
            old = getattr(self, name)
            grown = np.full(len(merged), fill, dtype=old.dtype)
            grown[where] = old
            setattr(self, name, grown)
        self.ids = merged

    def update(self, frame: pd.DataFrame) -> None:
        """Count the evaluations of `frame` (columns `example_id`, `step`, `correct`), later than those fed before."""
        if not len(frame):
            return
        example_id = frame["example_id"].to_numpy(dtype=np.int64)
        step = frame["step"].to_numpy(dtype=np.int64)
        correct = frame["correct"].to_numpy(dtype=np.float64)
        # by example, then step, stable for ties (as the table sort); one evaluation in id order needs no sort
        if not (step[0] == step.min() == step.max() and (np.diff(example_id) > 0).all()):
            order = np.lexsort((step, example_id))
            example_id, step, correct = example_id[order], step[order], correct[order]
        first = np.r_[True, example_id[1:] != example_id[:-1]]
        last = np.r_[first[1:], True]
        known = len(self.ids) == int(first.sum()) and np.array_equal(self.ids, example_id[first])
        if not known:
            self._grow(example_id[first])
        pos = np.searchsorted(self.ids, example_id)
        if (step[first] < self.last_step[pos[first]]).any():
            self.in_order = False
        previous = np.empty_like(correct)
        previous[1:] = correct[:-1]
        previous[first] = self.last_correct[pos[first]]
        with np.errstate(invalid="ignore"):
            forgotten = previous > correct  # NaN on either side is no event, as in the table computation
        self.events += np.bincount(pos, weights=forgotten, minlength=len(self.ids))
        self.learned |= np.bincount(pos, weights=correct > 0, minlength=len(self.ids)) > 0
        self.last_correct[pos[last]] = correct[last]
        self.last_step[pos[last]] = step[last]

    def result(self) -> pd.Series:
        """Events per example (`inf` for an example never correct), indexed by `example_id`, named `forgetting`."""
        values = np.where(self.learned, self.events, np.inf)
        return pd.Series(values, index=pd.Index(self.ids, name="example_id"), name="forgetting")


def nanmean_keep_inf(stacked: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; an inf in any run makes the mean inf (e.g. never-learned forgetting)."""
    finite_or_inf = ~np.isnan(stacked)
    counts = finite_or_inf.sum(axis=0)
    total = np.where(finite_or_inf, stacked, 0.0).sum(axis=0)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 2 or np.unique(a[keep]).size < 2 or np.unique(b[keep]).size < 2:
        return float("nan")
    return float(spearmanr(a[keep], b[keep]).statistic)


def forgetting_events(frame: pd.DataFrame) -> pd.Series:
    """Toneva et al. (2019) forgetting events per example from rows `example_id, step, correct`.

    Counts transitions `correct_t > correct_{t+1}` between consecutive rows of an example ordered by step; an
    example whose `correct` is never above 0 is never learned and gets `inf`.
    """
    ordered = frame.sort_values(["example_id", "step"], kind="stable")
    correct = ordered["correct"].astype("float64")
    previous = correct.groupby(ordered["example_id"]).shift(1)
    events = (previous > correct).groupby(ordered["example_id"]).sum().astype("float64")
    learned = (correct > 0).groupby(ordered["example_id"]).any()
    return events.where(learned, float("inf")).rename("forgetting")


def summarize_records(records: pd.DataFrame, forgetting_frame: pd.DataFrame | None = None, *,
                      burn_out: int | None = None, variability_ddof: int = 0,
                      accumulated_el2n_epochs: int | None = None,
                      accumulated_margin_epochs: int | None = None,
                      forgetting: pd.Series | None = None) -> pd.DataFrame:
    """The per-example summary of [`SignalStore.summary`] from a records frame (see there for the columns and the
    options `burn_out`, `variability_ddof`, `accumulated_el2n_epochs` and `accumulated_margin_epochs`).

    Args:
        records (`pandas.DataFrame`): one row per presentation (`example_id, epoch, step` and the signals).
        forgetting_frame (`pandas.DataFrame` or `None`): rows to count forgetting events on (defaults to `records`).
        forgetting (`pandas.Series`, *optional*): forgetting events already counted (e.g.
            `SignalStore.dense_forgetting()`), indexed by `example_id`; replaces `forgetting_frame`.
    """
    for name, value in (("burn_out", burn_out), ("accumulated_el2n_epochs", accumulated_el2n_epochs),
                        ("accumulated_margin_epochs", accumulated_margin_epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive number of epochs, got {value!r}.")
    if variability_ddof not in (0, 1):
        raise ValueError(f"variability_ddof must be 0 (population std, the paper) or 1 (bias-corrected), got "
                         f"{variability_ddof!r}.")
    records = records.copy()
    for name in records.columns:
        if name not in KEY_COLUMNS:
            records[name] = records[name].astype("float64")
    by_example = records.groupby("example_id")
    per_epoch = records.groupby(["example_id", "epoch"])[["prob_gold", "correct", "el2n"]].mean()
    cartography = per_epoch
    if burn_out is not None:
        cartography = per_epoch[per_epoch.index.get_level_values("epoch") < burn_out]
        if cartography.empty:
            raise ValueError(f"burn_out={burn_out} keeps no epoch: the records start at epoch "
                             f"{int(per_epoch.index.get_level_values('epoch').min())}.")
    epoch_groups = cartography.groupby(level="example_id")
    summary = pd.DataFrame({
        "forgetting": forgetting if forgetting is not None else forgetting_events(
            records if forgetting_frame is None else forgetting_frame),
        "aum": by_example["margin"].mean(),
        "confidence": epoch_groups["prob_gold"].mean(),
        "variability": epoch_groups["prob_gold"].std(ddof=variability_ddof),
        "correctness": epoch_groups["correct"].mean(),
        "mean_loss": by_example["loss"].mean(),
    })
    summary = summary.reindex(by_example.size().index)
    el2n = per_epoch["el2n"].unstack("epoch")
    for epoch in sorted(el2n.columns):
        summary[f"el2n_epoch_{int(epoch)}"] = el2n[epoch]
    if accumulated_el2n_epochs is not None:
        early = records[records["epoch"] < accumulated_el2n_epochs]
        summary["el2n_accumulated"] = early.groupby("example_id")["el2n"].sum(min_count=1)
    if accumulated_margin_epochs is not None:
        early = records[records["epoch"] < accumulated_margin_epochs]
        # p_y = exp(-loss); the runner-up's probability is p_y exp(-M) = exp(-loss - M), accurate when p_y underflows
        prob_margin = np.exp(-early["loss"]) - np.exp(-(early["loss"] + early["margin"]))
        summary["prob_margin_accumulated"] = prob_margin.groupby(early["example_id"]).sum(min_count=1)
    if "grad_norm" in records.columns:
        summary["mean_grad_norm"] = by_example["grad_norm"].mean()
    summary.index.name = "example_id"
    summary.attrs["cartography"] = {"burn_out": burn_out, "variability_ddof": variability_ddof}
    summary.attrs["accumulated_epochs"] = {
        column: epochs for column, epochs in (("el2n_accumulated", accumulated_el2n_epochs),
                                              ("prob_margin_accumulated", accumulated_margin_epochs))
        if epochs is not None
    }
    return summary
