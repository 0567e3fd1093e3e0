"""Plots of per-example scores: data maps, score histograms and accuracy-vs-fraction curves, saved as PNG.

Everything renders with matplotlib's non-interactive ``Agg`` backend (no display needed) through figures created with
``matplotlib.figure.Figure`` directly, so nothing touches the global pyplot state. Each ``*_figure`` function returns
the figure (for notebooks and tests); each ``plot_*`` function saves it and returns the path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers.utils import logging

logger = logging.get_logger(__name__)

DATA_MAP_COLUMNS = ("variability", "confidence")


def as_frame(data: Any, what: str = "data") -> pd.DataFrame:
    """Turn a pandas DataFrame, a `datasets.Dataset`, a SignalStore (``.summary()``) or a dict of columns into a
    DataFrame (`what` names the argument in the error).

    Raises:
        TypeError: for any other type.
    """
    if isinstance(data, pd.DataFrame):
        return data
    if hasattr(data, "summary") and callable(data.summary):
        return data.summary()
    if hasattr(data, "to_pandas") and callable(data.to_pandas):
        return data.to_pandas()
    if isinstance(data, dict):
        return pd.DataFrame(data)
    raise TypeError(
        f"{what} must be a pandas DataFrame, a datasets.Dataset, a SignalStore or a dict of columns, got "
        f"{type(data).__name__}."
    )


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} needs the column(s) {missing}, which are missing. Available columns: {list(frame.columns)}. "
            "Pass the SignalStore summary (SignalStore.summary()) or a dataset scored with DynamicsScorer, or name "
            "the right columns."
        )


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def data_map_figure(
    summary: Any,
    *,
    hue: str = "correctness",
    max_points: int | None = 25_000,
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Build a dataset-cartography data map (Swayamdipta et al., 2020, Fig. 1): one point per example at
    (variability, confidence), coloured by ``hue``.

    Confidence is the mean probability of the gold label over epochs, variability its population standard deviation.
    The three regions of the paper are annotated: easy-to-learn (high confidence, low variability), ambiguous (high
    variability) and hard-to-learn (low confidence, low variability). Rows with a NaN coordinate are left out (and
    logged).

    Args:
        summary (`pandas.DataFrame`, `datasets.Dataset` or `SignalStore`): one row per example with the columns
            ``variability``, ``confidence`` and ``hue`` (the `SignalStore.summary()` frame has them all).
        hue (`str`, defaults to `"correctness"`): the column that colours the points.
        max_points (`int`, *optional*, defaults to 25000): draw a seeded random subset of at most this many points;
            `None` draws all.
        seed (`int`, defaults to 0): seed of that subset.
        title (`str`, *optional*): figure title.

    Returns:
        `matplotlib.figure.Figure`: the figure; its first axes holds one scatter collection with the drawn points.
    """
    frame = as_frame(summary, "summary")
    _require_columns(frame, [*DATA_MAP_COLUMNS, hue], "plot_data_map")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be a positive int or None, got {max_points}.")
    x = frame["variability"].to_numpy(dtype=np.float64)
    y = frame["confidence"].to_numpy(dtype=np.float64)
    c = frame[hue].to_numpy(dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        logger.warning(f"plot_data_map: {int((~finite).sum())} row(s) with NaN confidence/variability are not drawn.")
    idx = np.flatnonzero(finite)
    if max_points is not None and idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_points, replace=False))
        logger.info(f"plot_data_map: drawing a random subset of {max_points} of {int(finite.sum())} examples.")

    fig = Figure(figsize=(7.0, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    points = ax.scatter(x[idx], y[idx], c=c[idx], cmap="coolwarm_r", s=12, alpha=0.7, edgecolors="none")
    fig.colorbar(points, ax=ax, label=hue)
    ax.set_xlabel("variability (std of gold-label probability over epochs)")
    ax.set_ylabel("confidence (mean gold-label probability)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0.0, right=max(0.5, float(np.nanmax(x[idx])) * 1.05) if idx.size else 0.5)
    box = {"boxstyle": "round,pad=0.3", "facecolor": "white", "alpha": 0.8}
    ax.text(0.03, 0.95, "easy-to-learn", transform=ax.transAxes, va="top", bbox=box)
    ax.text(0.03, 0.05, "hard-to-learn", transform=ax.transAxes, va="bottom", bbox=box)
    ax.text(0.97, 0.5, "ambiguous", transform=ax.transAxes, ha="right", va="center", bbox=box)
    ax.set_title(title or f"Data map ({idx.size} examples)")
    fig.tight_layout()
    return fig


def plot_data_map(
    summary: Any,
    path: str | Path,
    *,
    hue: str = "correctness",
    max_points: int | None = 25_000,
    seed: int = 0,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Save a dataset-cartography data map (confidence vs variability, coloured by correctness) as a PNG.

    See [`data_map_figure`] for the arguments.

    Args:
        summary (`pandas.DataFrame`, `datasets.Dataset` or `SignalStore`): rows with ``variability``, ``confidence``
            and ``hue``.
        path (`str` or `Path`): where to write the PNG (parent folders are created).
        dpi (`int`, defaults to 120): resolution.

    Returns:
        `Path`: ``path``.

    Example:
        ```python
        >>> from hf_influence import SignalStore, plot_data_map
        >>> plot_data_map(SignalStore.load("out/signals").summary(), "out/data_map.png")
        ```
    """
    fig = data_map_figure(summary, hue=hue, max_points=max_points, seed=seed, title=title)
    return _save(fig, path, dpi)


def score_histograms_figure(
    frame: Any,
    columns: Sequence[str],
    *,
    by: str | None = None,
    bins: int = 30,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Build one histogram panel per score column, optionally with one overlaid histogram per class.

    Non-finite values (NaN, and the ``inf`` that marks never-learned examples in ``forgetting``) cannot be binned:
    they are left out and their count is written in the panel title.

    Args:
        frame (`pandas.DataFrame` or `datasets.Dataset`): the scored rows.
        columns (`Sequence[str]`): the score columns, one panel each.
        by (`str`, *optional*): a class column (e.g. ``"label"``); one overlaid histogram per value.
        bins (`int`, defaults to 30): number of bins (shared by the overlays of a panel).
        class_names (`Sequence[str]`, *optional*): legend names of integer classes ``0..C-1``.

    Returns:
        `matplotlib.figure.Figure`
    """
    frame = as_frame(frame, "frame")
    columns = [columns] if isinstance(columns, str) else list(columns)
    if not columns:
        raise ValueError("plot_score_histograms needs at least one score column in `columns`.")
    _require_columns(frame, columns + ([by] if by is not None else []), "plot_score_histograms")
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.4 * nrows))
    for i, column in enumerate(columns):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        values = frame[column].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        n_out = int((~finite).sum())
        title = column if n_out == 0 else f"{column} ({n_out} non-finite left out)"
        if not finite.any():
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")
        elif by is None:
            ax.hist(values[finite], bins=bins, color="tab:blue", alpha=0.85)
        else:
            edges = np.histogram_bin_edges(values[finite], bins=bins)
            groups = frame[by].to_numpy()
            for value in sorted(pd.unique(groups[finite])):
                sel = finite & (groups == value)
                label = class_names[int(value)] if class_names is not None else str(value)
                ax.hist(values[sel], bins=edges, alpha=0.5, label=f"{by}={label}")
            ax.legend(fontsize="small")
        ax.set_title(title)
        ax.set_xlabel(column)
        ax.set_ylabel("examples")
    fig.tight_layout()
    return fig


def plot_score_histograms(
    frame: Any,
    columns: Sequence[str],
    path: str | Path,
    *,
    by: str | None = None,
    bins: int = 30,
    class_names: Sequence[str] | None = None,
    dpi: int = 120,
) -> Path:
    """Save one histogram per score column (optionally overlaid per class) as a PNG.

    See [`score_histograms_figure`] for the arguments.

    Returns:
        `Path`: ``path``.

    Example:
        ```python
        >>> plot_score_histograms(scored_ds, ["el2n", "forgetting"], "out/scores.png", by="label")
        ```
    """
    fig = score_histograms_figure(frame, columns, by=by, bins=bins, class_names=class_names)
    return _save(fig, path, dpi)


_BASELINE_STYLES = ({"color": "grey", "linestyle": "--"}, {"color": "dimgrey", "linestyle": "-."},
                    {"color": "black", "linestyle": "--"})
_CURVE_MARKERS = ("o", "s", "^", "D", "v")


def _curve_styles(methods: Sequence[Any], baselines: Sequence[Any]) -> dict[Any, dict[str, Any]]:
    """One line style per method: greys for the random baselines, a distinct non-grey colour for every other."""
    from matplotlib import colormaps

    others = [m for m in methods if m not in baselines]
    if len(others) <= 9:
        palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]  # index 7 is tab10's grey
    else:
        palette = [c for i, c in enumerate(colormaps["tab20"].colors) if i not in (14, 15)]  # its two greys
    styles: dict[Any, dict[str, Any]] = {}
    for rank, method in enumerate(m for m in baselines if m in methods):
        styles[method] = {**_BASELINE_STYLES[min(rank, len(_BASELINE_STYLES) - 1)], "marker": "o"}
    for i, method in enumerate(others):
        styles[method] = {"color": palette[i % len(palette)],
                          "marker": _CURVE_MARKERS[(i // len(palette)) % len(_CURVE_MARKERS)]}
    return styles


def accuracy_vs_fraction_figure(
    results: Any,
    *,
    fraction_column: str = "fraction",
    metric_column: str = "accuracy",
    method_column: str = "method",
    random_method: str | Sequence[str] = "random",
    full_data: float | None = None,
    title: str | None = None,
    interval: str = "std",
    confidence: float = 0.95,
) -> Figure:
    """Build the pruning curve of the Data Diet / SNLI papers: accuracy (mean ± std over seeds) against the fraction
    of training data kept, one line per score/strategy.

    ``results`` is long-form: one row per (method, fraction, seed) run. Rows whose method is a ``random_method`` are
    drawn as dashed grey baselines (the first mid grey, further ones darker, dash-dotted). Every other method gets a
    colour of its own (tab10 without its grey up to 9 methods, tab20 without its greys up to 18; beyond that colours
    repeat with another marker), so no selection can be mistaken for a baseline. The full-data accuracy is a
    horizontal line: ``full_data`` when given, otherwise the mean of the rows with fraction 1.0 (if any).

    Args:
        results (`pandas.DataFrame`): columns ``method_column``, ``fraction_column``, ``metric_column``.
        fraction_column (`str`, defaults to `"fraction"`): fraction of the training set kept, in (0, 1].
        metric_column (`str`, defaults to `"accuracy"`): the metric on the y axis.
        method_column (`str`, defaults to `"method"`): the score/strategy name of a run.
        random_method (`str` or sequence of `str`, defaults to `"random"`): the method(s) drawn as random baselines
            (e.g. plain and class-balanced random).
        full_data (`float`, *optional*): full-data accuracy to mark.
        title (`str`, *optional*): figure title.
        interval (`str`, defaults to `"std"`): `"std"` draws error bars of one standard deviation over seeds;
            `"ci"` draws a shaded band of the Student-t confidence interval of the mean (level `confidence`).
        confidence (`float`, defaults to 0.95): the band's level with `interval="ci"`.

    Returns:
        `matplotlib.figure.Figure`; one errorbar container per method, in sorted method order.
    """
    if interval not in ("std", "ci"):
        raise ValueError(f"interval must be 'std' or 'ci', got {interval!r}.")
    frame = as_frame(results, "results")
    _require_columns(frame, [method_column, fraction_column, metric_column], "plot_accuracy_vs_fraction")
    if frame.empty:
        raise ValueError("plot_accuracy_vs_fraction got an empty results table: run at least one recipe first.")
    stats = (
        frame.groupby([method_column, fraction_column])[metric_column]
        .agg(["mean", lambda s: float(np.std(s.to_numpy(dtype=np.float64), ddof=0))])
        .rename(columns={"<lambda_0>": "std"})
        .reset_index()
    )
    if interval == "ci":
        from .statistics import mean_interval

        bounds = frame.groupby([method_column, fraction_column])[metric_column].apply(
            lambda s: mean_interval(s.to_numpy(dtype=np.float64), confidence))
        stats["low"] = [bounds[(m, f)].low for m, f in zip(stats[method_column], stats[fraction_column])]
        stats["high"] = [bounds[(m, f)].high for m, f in zip(stats[method_column], stats[fraction_column])]
    if full_data is None:
        full_rows = frame[np.isclose(frame[fraction_column].to_numpy(dtype=np.float64), 1.0)]
        full_data = float(full_rows[metric_column].mean()) if len(full_rows) else None

    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    methods = sorted(stats[method_column].unique(), key=str)
    styles = _curve_styles(methods, [random_method] if isinstance(random_method, str) else list(random_method))
    for method in methods:
        rows = stats[stats[method_column] == method].sort_values(fraction_column)
        style = styles[method]
        x = rows[fraction_column].to_numpy(dtype=np.float64)
        container = ax.errorbar(
            x,
            rows["mean"].to_numpy(dtype=np.float64),
            yerr=rows["std"].to_numpy(dtype=np.float64) if interval == "std" else None,
            label=str(method),
            capsize=3,
            **style,
        )
        if interval == "ci":
            color = container.lines[0].get_color()
            ax.fill_between(x, rows["low"].to_numpy(dtype=np.float64), rows["high"].to_numpy(dtype=np.float64),
                            color=color, alpha=0.15, linewidth=0)
    if full_data is not None and np.isfinite(full_data):
        ax.axhline(full_data, color="black", linestyle=":", label=f"full data ({full_data:.4g})")
    ax.set_xlabel("fraction of training data kept")
    spread = "std" if interval == "std" else f"{100 * confidence:g}% CI"
    ax.set_ylabel(f"{metric_column} (mean ± {spread} over seeds)")
    ax.legend(fontsize="small")
    ax.set_title(title or f"{metric_column} vs fraction kept")
    fig.tight_layout()
    return fig


def plot_accuracy_vs_fraction(
    results: Any,
    path: str | Path,
    *,
    fraction_column: str = "fraction",
    metric_column: str = "accuracy",
    method_column: str = "method",
    random_method: str | Sequence[str] = "random",
    full_data: float | None = None,
    title: str | None = None,
    dpi: int = 120,
    interval: str = "std",
    confidence: float = 0.95,
) -> Path:
    """Save the accuracy-vs-fraction-kept curve of a pruning recipe as a PNG.

    See [`accuracy_vs_fraction_figure`] for the arguments.

    Returns:
        `Path`: ``path``.

    Example:
        ```python
        >>> import pandas as pd
        >>> runs = pd.DataFrame({"method": ["el2n", "el2n", "random"], "fraction": [0.5, 0.5, 0.5],
        ...                      "seed": [0, 1, 0], "accuracy": [0.81, 0.83, 0.78]})
        >>> plot_accuracy_vs_fraction(runs, "out/curve.png", full_data=0.85)
        ```
    """
    fig = accuracy_vs_fraction_figure(
        results,
        fraction_column=fraction_column,
        metric_column=metric_column,
        method_column=method_column,
        random_method=random_method,
        full_data=full_data,
        title=title,
        interval=interval,
        confidence=confidence,
    )
    return _save(fig, path, dpi)
