"""Plots: real PNGs, and the drawn data equal the input rows (checked against hand computations)."""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset
from matplotlib.image import imread

from hf_influence.plots import (
    accuracy_vs_fraction_figure,
    data_map_figure,
    plot_accuracy_vs_fraction,
    plot_data_map,
    plot_score_histograms,
    score_histograms_figure,
)


def _summary(n: int = 22, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "confidence": rng.uniform(0, 1, n),
            "variability": rng.uniform(0, 0.5, n),
            "correctness": rng.integers(0, 4, n) / 3.0,
            "forgetting": rng.integers(0, 3, n).astype(float),
            "label": rng.integers(0, 3, n),
        },
        index=pd.Index(np.arange(100, 100 + n), name="example_id"),
    )
    frame.loc[105, "forgetting"] = np.inf  # never learned
    return frame


def _assert_real_png(path, width: int, height: int) -> np.ndarray:
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    image = imread(path)
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.05  # not a blank canvas
    return image


def test_data_map_png_and_points_equal_summary_rows(tmp_path):
    summary = _summary()
    out = plot_data_map(summary, tmp_path / "maps" / "data_map.png", dpi=100)
    assert out == tmp_path / "maps" / "data_map.png"
    _assert_real_png(out, width=700, height=600)

    fig = data_map_figure(summary)
    points = fig.axes[0].collections[0]
    np.testing.assert_allclose(points.get_offsets(), summary[["variability", "confidence"]].to_numpy())
    np.testing.assert_allclose(points.get_array(), summary["correctness"].to_numpy())
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"easy-to-learn", "hard-to-learn", "ambiguous"} <= texts


def test_data_map_from_dataset_drops_nan_and_subsamples(tmp_path):
    summary = _summary(n=40).reset_index()
    summary.loc[[2, 7], "confidence"] = np.nan
    ds = Dataset.from_pandas(summary, preserve_index=False)
    fig = data_map_figure(ds)
    offsets = fig.axes[0].collections[0].get_offsets()
    expected = summary.drop(index=[2, 7])[["variability", "confidence"]].to_numpy()
    np.testing.assert_allclose(offsets, expected)

    fig = data_map_figure(ds, max_points=9, seed=1)
    offsets = np.asarray(fig.axes[0].collections[0].get_offsets())
    assert offsets.shape == (9, 2)
    rows = {tuple(r) for r in expected.round(12)}
    assert all(tuple(r) in rows for r in offsets.round(12))
    again = np.asarray(data_map_figure(ds, max_points=9, seed=1).axes[0].collections[0].get_offsets())
    np.testing.assert_array_equal(offsets, again)


def test_data_map_missing_column_names_it(tmp_path):
    with pytest.raises(ValueError, match=r"variability.*Available columns"):
        plot_data_map(pd.DataFrame({"confidence": [0.5], "correctness": [1.0]}), tmp_path / "x.png")
    with pytest.raises(ValueError, match="hue_col"):
        plot_data_map(_summary(), tmp_path / "x.png", hue="hue_col")
    assert not (tmp_path / "x.png").exists()


def test_score_histograms_counts_per_panel_and_class(tmp_path):
    summary = _summary()
    out = plot_score_histograms(summary, ["confidence", "forgetting"], tmp_path / "h.png", dpi=100)
    _assert_real_png(out, width=900, height=340)

    fig = score_histograms_figure(summary, ["confidence", "forgetting"])
    conf_ax, forg_ax = fig.axes
    assert sum(p.get_height() for p in conf_ax.patches) == len(summary)
    assert sum(p.get_height() for p in forg_ax.patches) == len(summary) - 1  # the inf is left out
    assert "1 non-finite left out" in forg_ax.get_title()

    fig = score_histograms_figure(summary, ["confidence"], by="label", bins=5)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    counts_per_class = summary["label"].value_counts().sort_index().tolist()
    # 5 bars per class, classes in sorted order
    assert [sum(heights[5 * i : 5 * (i + 1)]) for i in range(len(counts_per_class))] == counts_per_class
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"label={c}" for c in sorted(summary["label"].unique())]


def test_score_histograms_bad_input(tmp_path):
    with pytest.raises(ValueError, match="el2n"):
        plot_score_histograms(_summary(), ["el2n"], tmp_path / "h.png")
    with pytest.raises(ValueError, match="at least one"):
        plot_score_histograms(_summary(), [], tmp_path / "h.png")


def test_accuracy_vs_fraction_mean_std_and_baselines(tmp_path):
    runs = pd.DataFrame(
        {
            "method": ["el2n"] * 4 + ["random"] * 4 + ["full"] * 2,
            "fraction": [0.3, 0.3, 0.6, 0.6, 0.3, 0.3, 0.6, 0.6, 1.0, 1.0],
            "seed": [0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
            "accuracy": [0.70, 0.74, 0.80, 0.81, 0.60, 0.64, 0.75, 0.79, 0.85, 0.87],
        }
    )
    out = plot_accuracy_vs_fraction(runs, tmp_path / "curve.png", dpi=100)
    _assert_real_png(out, width=700, height=500)

    fig = accuracy_vs_fraction_figure(runs)
    ax = fig.axes[0]
    containers = {c.get_label(): c for c in ax.containers}
    el2n = containers["el2n"].lines[0]
    np.testing.assert_allclose(el2n.get_xdata(), [0.3, 0.6])
    np.testing.assert_allclose(el2n.get_ydata(), [statistics.mean([0.70, 0.74]), statistics.mean([0.80, 0.81])])
    assert containers["random"].lines[0].get_linestyle() == "--"
    full = [line for line in ax.get_lines() if line.get_label().startswith("full data")]
    assert len(full) == 1 and np.allclose(full[0].get_ydata(), 0.86)
    # error bar half-length = population std over seeds
    segments = containers["el2n"].lines[2][0].get_segments()
    half = [abs(seg[1][1] - seg[0][1]) / 2 for seg in segments]
    np.testing.assert_allclose(half, [statistics.pstdev([0.70, 0.74]), statistics.pstdev([0.80, 0.81])])

    with pytest.raises(ValueError, match="accuracy"):
        plot_accuracy_vs_fraction(runs.drop(columns="accuracy"), tmp_path / "c.png")


def test_accuracy_vs_fraction_gives_every_selection_its_own_colour_and_both_baselines_grey():
    # 11 selections + 2 random baselines: more lines than matplotlib's 10-colour cycle, which repeated its grey
    # (the random baseline's colour) on the 11th selection
    from matplotlib.colors import to_rgb

    selections = [f"score{i}:easiest" for i in range(11)]
    methods = selections + ["random", "random (class-balanced)"]
    runs = pd.DataFrame({"method": np.repeat(methods, 2), "fraction": 0.5, "seed": [0, 1] * len(methods),
                         "accuracy": np.linspace(0.4, 0.7, 2 * len(methods))})
    fig = accuracy_vs_fraction_figure(runs, random_method=("random", "random (class-balanced)"))
    lines = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}
    colours = {m: to_rgb(lines[m].get_color()) for m in methods}

    def is_grey(rgb):
        return max(rgb) - min(rgb) < 1e-6

    assert len({colours[m] for m in selections}) == len(selections)
    assert not any(is_grey(colours[m]) for m in selections)
    for baseline in ("random", "random (class-balanced)"):
        assert is_grey(colours[baseline]) and lines[baseline].get_linestyle() != "-"
    assert colours["random"] != colours["random (class-balanced)"]


def test_data_map_from_a_signal_store_uses_its_summary(tmp_path):
    from hf_influence.store import SignalStore

    rng = np.random.default_rng(4)
    n, epochs = 22, 4
    prob = rng.random((epochs, n))
    records = pd.DataFrame(
        {
            "example_id": np.tile(np.arange(n), epochs),
            "epoch": np.repeat(np.arange(epochs), n),
            "step": np.repeat(np.arange(epochs), n),
            "loss": -np.log(prob).ravel(),
            "prob_gold": prob.ravel(),
            "margin": (prob - 0.5).ravel(),
            "correct": (prob > 0.5).ravel().astype(float),
            "el2n": (1 - prob).ravel(),
            "entropy": np.zeros(epochs * n),
        }
    )
    store = SignalStore.from_records(records)
    fig = data_map_figure(store)
    points = fig.axes[0].collections[0]
    # hand computation: cartography confidence = mean, variability = population std, correctness = mean of correct
    expected = np.column_stack([prob.std(axis=0), prob.mean(axis=0)])
    np.testing.assert_allclose(points.get_offsets(), expected, rtol=1e-5)  # the store keeps float32 signals
    np.testing.assert_allclose(points.get_array(), (prob > 0.5).mean(axis=0), rtol=1e-6)
    _assert_real_png(plot_data_map(store, tmp_path / "m.png", dpi=100), width=700, height=600)
