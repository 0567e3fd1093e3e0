"""`ExperimentResult`: the rows of a pruning experiment, their intervals, and the paired comparison with random."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..statistics import mean_interval, paired_bootstrap, paired_t
from .selections import FULL_DATA, RANDOM, RANDOM_BALANCED

RESULTS_FILENAME = "results.csv"
BEST_MODEL_DIRNAME = "best_pruned_model"
BEST_RUN_FILENAME = "best_run.json"
PER_EXAMPLE_DIRNAME = "per_example"

#: Row columns that are not metrics.
RUN_COLUMNS: tuple[str, ...] = (
    "run_id", "selection", "score", "strategy", "class_balanced", "keep", "keep_fraction", "seed", "num_train",
    "train_seconds", "eval_seconds", "label_counts", "noisy_kept", "kept_ids_hash", "finished_at",
)


class ExperimentResult:
    """The runs of a `PruningExperiment` (one row each, as in `results.csv`) and what they show.

    Args:
        rows (`pandas.DataFrame` or list of dicts, *optional*): the runs.
        output_dir (path, *optional*): the experiment folder (where `append` writes).
        metric (`str`, *optional*): the metric compared with random (default: `test_accuracy`, else
            `eval_accuracy`, else the first metric column).
        greater_is_better (`bool`, defaults to True): the metric's direction ("beats random" means better).
    """

    def __init__(self, rows: Any = None, *, output_dir: str | os.PathLike | None = None, metric: str | None = None,
                 greater_is_better: bool = True) -> None:
        import pandas as pd

        self.rows = pd.DataFrame(rows if rows is not None else [])
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.metric = metric
        self.greater_is_better = greater_is_better
        self._order: list[str] = []

    # ---- persistence ----------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, output_dir: str | os.PathLike, **kwargs: Any) -> ExperimentResult:
        """The result of the experiment in `output_dir` (its `results.csv`)."""
        import pandas as pd

        path = Path(output_dir) / RESULTS_FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run the experiment first (PruningExperiment.run).")
        return cls(pd.read_csv(path), output_dir=output_dir, **kwargs)

    def configure(self, metric: str | None = None, greater_is_better: bool = True,
                  selections: Sequence[Any] = ()) -> None:
        """Set the compared metric, its direction and the display order of the selections."""
        self.metric = metric or self.metric
        self.greater_is_better = greater_is_better
        self._order = [s.label for s in selections]

    def append(self, row: Mapping[str, Any], per_example: Mapping[str, np.ndarray] | None = None) -> None:
        """Add one finished run and write `results.csv` at once (atomically: a crash keeps the previous file)."""
        import pandas as pd

        from ..store import atomic_write_bytes

        if self.output_dir is None:
            raise ValueError("This result has no output_dir to write to.")
        if per_example:
            folder = self.output_dir / PER_EXAMPLE_DIRNAME
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{row['run_id']}.tmp.npz"
            np.savez(tmp, **{k: np.asarray(v, dtype=np.float64) for k, v in per_example.items()})
            os.replace(tmp, folder / f"{row['run_id']}.npz")
        self.rows = pd.concat([self.rows, pd.DataFrame([dict(row)])], ignore_index=True) if len(self.rows) else \
            pd.DataFrame([dict(row)])
        atomic_write_bytes(str(self.output_dir / RESULTS_FILENAME), self.rows.to_csv(index=False).encode())

    def per_example(self, run_id: str, metric: str) -> np.ndarray | None:
        """The per-example values of `metric` of one run, when its evaluation returned them."""
        if self.output_dir is None:
            return None
        path = self.output_dir / PER_EXAMPLE_DIRNAME / f"{run_id}.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            return data[metric] if metric in data else None

    # ---- statistics -------------------------------------------------------------------------------------------------

    @property
    def metrics(self) -> list[str]:
        """The metric columns (numeric columns that describe a run's evaluation)."""
        return [c for c in self.rows.columns if c not in RUN_COLUMNS
                and np.issubdtype(self.rows[c].dtype, np.number)]

    def primary_metric(self) -> str:
        metrics = self.metrics
        if self.metric is not None:
            if self.metric not in metrics:
                raise ValueError(f"Metric {self.metric!r} is not among the recorded metrics {metrics}.")
            return self.metric
        for name in ("test_accuracy", "eval_accuracy"):
            if name in metrics:
                return name
        if not metrics:
            raise ValueError("The runs recorded no metric.")
        return metrics[0]

    def summary(self, metric: str | None = None, confidence: float = 0.95, bootstrap: bool | str = "auto",
                min_seeds: int = 3, num_resamples: int = 10_000, baseline: str | None = None) -> Any:
        """One row per (selection, kept fraction): runs, mean/std/interval of every metric, and the paired
        difference of `metric` to random at the same fraction.

        Args:
            metric (`str`, *optional*): the compared metric (default: `primary_metric()`).
            confidence (`float`, defaults to 0.95): the intervals' level.
            bootstrap (`bool` or `"auto"`, defaults to `"auto"`): use the paired bootstrap over evaluation examples
                (`statistics.paired_bootstrap`) instead of the paired t-test; `"auto"`: when fewer than `min_seeds`
                paired seeds exist and every run kept its per-example values.
            min_seeds (`int`, defaults to 3): see `bootstrap`.
            num_resamples (`int`, defaults to 10000): bootstrap draws.
            baseline (`str`, *optional*): compare every cell with this selection (e.g. `"random"` to compare
                class-balanced selections with plain random too); default: class-balanced selections with
                class-balanced random when it ran, every other cell with plain random.

        Returns:
            `pandas.DataFrame` with columns `selection, score, strategy, class_balanced, keep, num_train, runs`,
            `<m>_mean, <m>_std, <m>_ci_low, <m>_ci_high` for each metric `m`, and `baseline, paired_runs, diff_mean,
            diff_ci_low, diff_ci_high, p_value, test, beats_random, loses_to_random` (`beats_random` only when the
            interval of the difference lies entirely on the better side of 0; both False when it cannot be told).
        """
        import pandas as pd

        if self.rows.empty:
            return pd.DataFrame()
        metric = metric or self.primary_metric()
        rows = self.rows
        out = []
        groups = rows.groupby(["selection", "keep"], sort=False)
        for (label, keep), group in groups:
            first = group.iloc[0]
            record: dict[str, Any] = {
                "selection": label, "score": first.get("score"), "strategy": first.get("strategy"),
                "class_balanced": bool(first.get("class_balanced", False)), "keep": keep,
                "keep_fraction": float(group["keep_fraction"].mean()), "num_train": float(group["num_train"].mean()),
                "runs": int(len(group)),
            }
            for name in self.metrics:
                values = group[name].to_numpy(dtype=np.float64)
                interval = mean_interval(values, confidence)
                std = float(np.std(values[~np.isnan(values)], ddof=1)) if interval.n > 1 else math.nan
                record.update({f"{name}_mean": interval.mean, f"{name}_std": std, f"{name}_ci_low": interval.low,
                               f"{name}_ci_high": interval.high})
            if "noisy_kept" in group and group["noisy_kept"].notna().any():
                record["noisy_kept"] = float(group["noisy_kept"].mean())
            record.update(self._compare(label, keep, group, metric, confidence, bootstrap, min_seeds, num_resamples,
                                        baseline))
            out.append(record)
        frame = pd.DataFrame(out)
        rank = {name: i for i, name in enumerate([FULL_DATA, RANDOM, RANDOM_BALANCED, *self._order])}
        frame["_order"] = [rank.get(name, len(rank)) for name in frame["selection"]]
        frame = frame.sort_values(["keep", "_order", "selection"], kind="stable").drop(columns="_order")
        return frame.reset_index(drop=True)

    def _baseline_of(self, label: str, class_balanced: bool, forced: str | None = None) -> str | None:
        present = set(self.rows["selection"])
        if label in (FULL_DATA, RANDOM, RANDOM_BALANCED) or label == forced:
            return None
        if forced is not None:
            if forced not in present:
                raise ValueError(f"baseline={forced!r} is not among the selections {sorted(present)}.")
            return forced
        if class_balanced and RANDOM_BALANCED in present:
            return RANDOM_BALANCED
        return RANDOM if RANDOM in present else None

    def _compare(self, label: str, keep: Any, group: Any, metric: str, confidence: float, bootstrap: bool | str,
                 min_seeds: int, num_resamples: int, forced: str | None = None) -> dict[str, Any]:
        empty = {"baseline": None, "paired_runs": 0, "diff_mean": math.nan, "diff_ci_low": math.nan,
                 "diff_ci_high": math.nan, "p_value": math.nan, "test": None, "beats_random": False,
                 "loses_to_random": False}
        baseline = self._baseline_of(label, bool(group.iloc[0].get("class_balanced", False)), forced)
        if baseline is None:
            return empty
        base = self.rows[(self.rows["selection"] == baseline) & (self.rows["keep"] == keep)]
        pairs = group.merge(base, on="seed", suffixes=("", "_base"))[["seed", "run_id", "run_id_base", metric,
                                                                       f"{metric}_base"]]
        pairs = pairs.dropna(subset=[metric, f"{metric}_base"])
        if pairs.empty:
            return {**empty, "baseline": baseline}
        use_bootstrap = bootstrap is True
        arrays = None
        if bootstrap in (True, "auto"):
            a = [self.per_example(r, metric) for r in pairs["run_id"]]
            b = [self.per_example(r, metric) for r in pairs["run_id_base"]]
            if all(x is not None for x in a + b) and len({x.size for x in a + b}) == 1:
                arrays = (np.stack(a), np.stack(b))
            elif bootstrap is True:
                raise ValueError(f"bootstrap=True needs the per-example values of {metric!r} for every paired run; "
                                 "return arrays from evaluate_fn to keep them.")
            use_bootstrap = use_bootstrap or (arrays is not None and len(pairs) < min_seeds)
        if use_bootstrap:
            comparison = paired_bootstrap(*arrays, confidence=confidence, num_resamples=num_resamples)
        else:
            comparison = paired_t(pairs[metric], pairs[f"{metric}_base"], confidence)
        diff = comparison.difference
        known = bool(np.isfinite(diff.low) and np.isfinite(diff.high))
        above, below = known and diff.low > 0, known and diff.high < 0
        better, worse = (above, below) if self.greater_is_better else (below, above)
        return {"baseline": baseline, "paired_runs": int(len(pairs)), "diff_mean": diff.mean, "diff_ci_low": diff.low,
                "diff_ci_high": diff.high, "p_value": comparison.p_value, "test": comparison.test,
                "beats_random": better, "loses_to_random": worse}

    # ---- reports ----------------------------------------------------------------------------------------------------

    def to_markdown(self, metric: str | None = None, confidence: float = 0.95, scale: float = 100.0,
                    **summary_kwargs: Any) -> str:
        """A Markdown table: per cell the metric's mean [interval], the paired difference to random [interval], its
        p-value and a plain verdict (values multiplied by `scale`, e.g. accuracy in %)."""
        summary = self.summary(metric, confidence, **summary_kwargs)
        if summary.empty:
            return "(no runs)"
        metric = metric or self.primary_metric()
        level = f"{100 * confidence:g}%"
        header = (f"| selection | kept | n train | runs | {metric} mean [{level} CI] | vs random: diff [{level} CI] "
                  "| p | verdict |")
        lines = [header, "|" + "---|" * 8]

        def fmt(x: float) -> str:
            return "n/a" if x is None or not np.isfinite(x) else f"{scale * x:.2f}"

        for r in summary.to_dict("records"):  # not itertuples: it renames columns such as "recall@10"
            mean = f"{fmt(r[f'{metric}_mean'])} [{fmt(r[f'{metric}_ci_low'])}, {fmt(r[f'{metric}_ci_high'])}]"
            if not isinstance(r["baseline"], str):  # random and full data are the references
                diff, p, verdict = "", "", "baseline" if r["selection"] != FULL_DATA else "reference"
            else:
                diff = f"{fmt(r['diff_mean'])} [{fmt(r['diff_ci_low'])}, {fmt(r['diff_ci_high'])}]"
                p = "n/a" if not np.isfinite(r["p_value"]) else "<0.001" if r["p_value"] < 0.001 else \
                    f"{r['p_value']:.3f}"
                verdict = ("beats random" if r["beats_random"] else "loses to random" if r["loses_to_random"]
                           else "cannot be told apart")
            keep = f"{r['keep_fraction']:.2f}"
            lines.append(f"| {r['selection']} | {keep} | {r['num_train']:.0f} | {r['runs']} | {mean} | {diff} | {p} | "
                         f"{verdict} |")
        tests = sorted({t for t in summary["test"].dropna()})
        if tests:
            lines.append("")
            lines.append(f"Paired differences to same-size random over shared seeds: {'; '.join(tests)}.")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike, metric: str | None = None, confidence: float = 0.95,
             title: str | None = None) -> Path | None:
        """The metric against the kept fraction, one line per selection with its confidence band, random dashed,
        full data as a horizontal line."""
        from ..plots import plot_accuracy_vs_fraction

        metric = metric or self.primary_metric()
        curves = self.rows[self.rows["selection"] != FULL_DATA]
        if curves.empty:
            return None
        full = self.rows.loc[self.rows["selection"] == FULL_DATA, metric]
        return plot_accuracy_vs_fraction(
            curves, path, fraction_column="keep_fraction", metric_column=metric, method_column="selection",
            random_method=(RANDOM, RANDOM_BALANCED), full_data=float(full.mean()) if len(full) else None,
            interval="ci", confidence=confidence, title=title or f"{metric} vs fraction of training data kept",
        )

    def save(self, output_dir: str | os.PathLike | None = None, metric: str | None = None,
             confidence: float = 0.95) -> Path:
        """Write `results.csv`, `summary.csv`, `summary.json`, `summary.md` and `accuracy_vs_fraction.png`."""
        folder = Path(output_dir) if output_dir is not None else self.output_dir
        if folder is None:
            raise ValueError("Pass output_dir=... (this result has none).")
        folder.mkdir(parents=True, exist_ok=True)
        self.rows.to_csv(folder / RESULTS_FILENAME, index=False)
        if self.rows.empty:
            return folder
        summary = self.summary(metric, confidence)
        summary.to_csv(folder / "summary.csv", index=False)
        (folder / "summary.json").write_text(json.dumps(
            {"metric": metric or self.primary_metric(), "confidence": confidence,
             "cells": json.loads(summary.to_json(orient="records"))}, indent=2) + "\n")
        (folder / "summary.md").write_text(self.to_markdown(metric, confidence) + "\n")
        self.plot(folder / "accuracy_vs_fraction.png", metric, confidence)
        return folder

    def best_run(self) -> dict[str, Any] | None:
        """The best pruned run saved by the experiment (`best_pruned_model/best_run.json`), if any."""
        if self.output_dir is None:
            return None
        path = self.output_dir / BEST_MODEL_DIRNAME / BEST_RUN_FILENAME
        return json.loads(path.read_text()) if path.is_file() else None

    def write_best_model_card(self, *, base_model: str | None = None, dataset: str | None = None,
                              scorers: Sequence[Any] = (), checkpoints: Sequence[Any] = (),
                              training: Mapping[str, Any] | None = None, **card_kwargs: Any) -> Path | None:
        """Write the model card (README.md) of the best pruned model, with its selection and its results next to
        random at the same fraction (from `summary()`). Returns the card's path, or None without a best model."""
        from ..cards import render_model_card

        best = self.best_run()
        if best is None:
            return None
        row = best["row"]
        results = {k: row[k] for k in self.metrics if k in row and row[k] is not None}
        summary = self.summary()
        cell = summary[(summary["selection"] == row["selection"]) & np.isclose(summary["keep"].astype(float),
                                                                                 float(row["keep"]))]
        if len(cell):
            c = cell.iloc[0]
            results.update({"paired_difference_to_random": c["diff_mean"],
                            "paired_difference_ci": [c["diff_ci_low"], c["diff_ci_high"]],
                            "paired_p_value": c["p_value"], "seeds_in_cell": int(c["runs"])})
        used = [s for s in scorers if (s.get("column") if isinstance(s, Mapping) else getattr(s, "column", None))
                == row.get("score")]
        card = render_model_card(base_model=base_model, dataset=dataset, selection=best.get("selection"),
                                 results=results, scorers=used, checkpoints=checkpoints, seeds=[int(row["seed"])],
                                 training=training, **card_kwargs)
        path = self.output_dir / BEST_MODEL_DIRNAME / "README.md"
        card.save(str(path))
        return path
