"""Outputs of the DEALRec few-shot recipe: scores, selections, the per-method table, intervals, plot and timing.

The runs themselves are rows of a `PruningExperiment` (`results.csv`, one per method x seed); this module turns them
into the recipe's files: `scores.csv`, `selected/<method>.json`, `results.json`, `summary.md`/`summary.csv` (95%
intervals and the paired difference of every selection to random), `recall_ndcg.png` and `timing.json`.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: METHODS.md C.6, Table 2 (BIGRec, 1024-shot, LLaMA-7B), per dataset and method.
PAPER_TABLE2_BIGREC = {
    "games": {
        "ccs": {"recall@10": 0.0164, "recall@20": 0.0246, "ndcg@10": 0.0097, "ndcg@20": 0.0122},
        "grand": {"recall@10": 0.0158, "recall@20": 0.0250, "ndcg@10": 0.0098, "ndcg@20": 0.0125},
        "el2n": {"recall@10": 0.0154, "recall@20": 0.0256, "ndcg@10": 0.0098, "ndcg@20": 0.0128},
        "random": {"recall@10": 0.0163, "recall@20": 0.0241, "ndcg@10": 0.0100, "ndcg@20": 0.0122},
        "dealrec": {"recall@10": 0.0181, "recall@20": 0.0276, "ndcg@10": 0.0115, "ndcg@20": 0.0142},
        "full": {"recall@10": 0.0169, "recall@20": 0.0233, "ndcg@10": 0.0102, "ndcg@20": 0.0120},
    },
    "microlens-50k": {
        "ccs": {"recall@20": 0.0096, "recall@50": 0.0131, "ndcg@20": 0.0041, "ndcg@50": 0.0049},
        "grand": {"recall@20": 0.0014, "recall@50": 0.0032, "ndcg@20": 0.0006, "ndcg@50": 0.0010},
        "el2n": {"recall@20": 0.0096, "recall@50": 0.0045, "ndcg@20": 0.0041, "ndcg@50": 0.0016},  # as printed
        "random": {"recall@20": 0.0108, "recall@50": 0.0151, "ndcg@20": 0.0044, "ndcg@50": 0.0054},
        "dealrec": {"recall@20": 0.0124, "recall@50": 0.0160, "ndcg@20": 0.0055, "ndcg@50": 0.0064},
        "full": {"recall@20": 0.0081, "recall@50": 0.0136, "ndcg@20": 0.0038, "ndcg@50": 0.0053},
    },
}
#: Columns of `scores.csv` written as integers.
ID_COLUMNS = ("example_id", "user_id")


def metric_names(ks: Sequence[int]) -> list[str]:
    """`recall@K` then `ndcg@K` for every K."""
    return [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]


def write_scores(path: str | Path, scores: Mapping[str, np.ndarray]) -> None:
    """`scores.csv`: one row per training user, one column per score (ids as integers)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        names = list(scores)
        writer.writerow(names)
        for values in zip(*(scores[n] for n in names)):
            writer.writerow([int(v) if n in ID_COLUMNS else f"{v:.8g}" for n, v in zip(names, values)])


def write_selections(users: Any, methods: Sequence[str], selections: Sequence[Any], budget: int, seed: int,
                     folder: str | Path | None) -> dict[str, dict[str, Any]]:
    """Select every method's users once with `seed` (as the experiment's run with that seed does) and write
    `folder/<method>.json` (`example_ids`, `user_ids`, `seed`).

    Returns:
        `dict`: per method `{"report": the selection report as a dict, "seconds": selection time}`.

    Raises:
        ValueError: if the budget is larger than the number of users.
    """
    from ..experiments import random_selection
    from ..selection import select_by_score
    from .dealrec import check_budget

    check_budget(budget, len(users))
    by_name = {s.label: s for s in selections}
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        start = time.perf_counter()
        if method == "full":
            kept, report = users, {"strategy": "full", "kept": len(users)}
        else:
            sel = random_selection() if method == "random" else by_name[method]
            kept, report = select_by_score(users, sel.score, budget, sel.strategy, label_column=None, seed=seed,
                                           return_report=True, **sel.options)
            report = report.to_dict()
        out[method] = {"report": report, "seconds": time.perf_counter() - start}
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            record = {"method": method, "seed": seed, "example_ids": list(map(int, kept["example_id"])),
                      "user_ids": list(map(int, kept["user_id"]))}
            (Path(folder) / f"{method}.json").write_text(json.dumps(record, indent=1))
    return out


def interval_tables(result: Any, ks: Sequence[int], min_seeds: int = 3) -> tuple[str, Any]:
    """`summary.md` and `summary.csv` contents: for every Recall/NDCG metric, each method's mean [95% CI] and its
    paired difference to random, with a paired t-test over seeds when there are at least `min_seeds` of them, else a
    paired bootstrap over test users; with enough seeds the bootstrap table is given as well.

    Returns:
        `tuple`: `(markdown, pandas.DataFrame with one row per metric x selection x test)`.
    """
    import pandas as pd

    seeds = int(result.rows["seed"].nunique()) if len(result.rows) else 0
    lines = [f"# DEALRec few-shot: selections vs random ({seeds} fine-tuning seed(s), "
             f"{len(result.rows)} runs; values x100)", ""]
    frames = []
    for metric in metric_names(ks):
        if metric not in result.metrics:
            continue
        lines += [f"## {metric}", "", result.to_markdown(metric, min_seeds=min_seeds), ""]
        frames.append(result.summary(metric, min_seeds=min_seeds).assign(metric=metric))
        if seeds >= min_seeds:
            lines += [f"Paired bootstrap over test users ({metric}):", "",
                      result.to_markdown(metric, bootstrap=True), ""]
            boot = result.summary(metric, bootstrap=True).assign(metric=metric)
            frames.append(boot[boot["baseline"].notna()])
    return "\n".join(lines), (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())


def method_table(result: Any, methods: Sequence[str], ks: Sequence[int], selection_info: Mapping[str, Any],
                 output_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per method: users kept, mean metrics over seeds, per-seed metrics, mean seconds, train loss, selection report
    (first seed) and the first generations of the first seed (from `runs/<run_id>/generations.json`)."""
    rows = result.rows
    table: dict[str, dict[str, Any]] = {}
    for method in methods:
        group = rows[rows["selection"] == method].sort_values("seed") if len(rows) else rows
        if group.empty:
            continue
        generations: list[str] = []
        path = Path(output_dir) / "runs" / str(group.iloc[0]["run_id"]) / "generations.json"
        if path.is_file():
            generations = json.loads(path.read_text())["generations"][:5]
        names = [n for n in metric_names(ks) if n in group]
        table[method] = {
            "num_users": int(group["num_train"].iloc[0]),
            "seeds": [int(s) for s in group["seed"]],
            "metrics": {n: float(group[n].mean()) for n in names},
            "metrics_per_seed": {n: [float(v) for v in group[n]] for n in names},
            "seconds": {"selection": float(selection_info.get(method, {}).get("seconds", math.nan)),
                        "finetune": float(group["train_seconds"].mean()),
                        "evaluation": float(group["eval_seconds"].mean())},
            "train": {"train_loss": float(group["train_loss"].mean()) if "train_loss" in group else math.nan},
            "selection": selection_info.get(method, {}).get("report"),
            "example_generations": generations,
        }
    return table


def run_stages(result: Any) -> dict[str, float]:
    """`finetune/<method>` and `evaluation/<method>` seconds, summed over the seeds of the recorded runs."""
    stages: dict[str, float] = {}
    for method, group in result.rows.groupby("selection", sort=False) if len(result.rows) else ():
        stages[f"finetune/{method}"] = float(group["train_seconds"].sum())
        stages[f"evaluation/{method}"] = float(group["eval_seconds"].sum())
    return stages


def write_plot(summary: Any, ks: Sequence[int], path: str | Path) -> None:
    """`recall_ndcg.png`: per metric, one bar per method (mean over seeds) with its 95% interval when seeds allow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary["selection"])
    names = [n for n in metric_names(ks) if f"{n}_mean" in summary]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2))
    for ax, name in zip(np.atleast_1d(axes), names):
        mean = summary[f"{name}_mean"].to_numpy(dtype=float)
        low, high = summary[f"{name}_ci_low"].to_numpy(dtype=float), summary[f"{name}_ci_high"].to_numpy(dtype=float)
        err = np.where(np.isfinite(low), np.vstack([mean - low, high - mean]), 0.0)
        ax.bar(range(len(methods)), mean, yerr=err, capsize=3,
               color=["C3" if m == "dealrec" else "C0" for m in methods])
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(output_dir: str | Path, summary: Mapping[str, Any], result: Any, ks: Sequence[int]) -> None:
    """Write `results.json`, `timing.json`, `summary.md`, `summary.csv` and `recall_ndcg.png` (`results.csv` and
    `scores.csv` are written as the runs go)."""
    out = Path(output_dir)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "timing.json").write_text(json.dumps(summary["timing"], indent=2))
    markdown, frame = interval_tables(result, ks)
    (out / "summary.md").write_text(markdown + "\n")
    frame.to_csv(out / "summary.csv", index=False)
    if len(result.rows):
        write_plot(result.summary(metric_names(ks)[0], bootstrap=False), ks, out / "recall_ndcg.png")


def dealrec_vs_random(result: Any, ks: Sequence[int]) -> dict[str, dict[str, Any]]:
    """The paired difference DEALRec - random per metric: the t-test over seeds and the bootstrap over test users."""
    out: dict[str, dict[str, Any]] = {}
    if not len(result.rows) or not {"dealrec", "random"} <= set(result.rows["selection"]):
        return out
    for metric in metric_names(ks):
        entry = {}
        for name, kwargs in (("t_over_seeds", {"bootstrap": False}), ("bootstrap_over_users", {"bootstrap": True})):
            cell = result.summary(metric, **kwargs).set_index("selection").loc["dealrec"]
            entry[name] = {k: _plain(cell[k]) for k in ("paired_runs", "diff_mean", "diff_ci_low", "diff_ci_high",
                                                        "p_value", "test", "beats_random", "loses_to_random")}
        out[metric] = entry
    return out


def write_adapter_card(folder: str | Path, summary: Mapping[str, Any], scorers: Sequence[Any], *, dataset: str,
                       training: Mapping[str, Any]) -> None:
    """The model card (`README.md`) of the DEALRec adapter of the first seed: scorers, selection report, metrics."""
    from ..hub import save_model_card

    dealrec = summary["methods"]["dealrec"]
    save_model_card(folder, base_model=summary["model"], dataset=dataset, selection=dealrec["selection"],
                    results=dealrec["metrics"], scorers=[s for s in scorers if s is not None],
                    seeds=summary["finetune_seeds"][:1], training=dict(training),
                    model_name=f"DEALRec {summary['budget']}-shot LoRA on {summary['dataset']}")


def _plain(value: Any) -> Any:
    """A JSON-ready Python value (NaN -> None, numpy scalars -> Python)."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def print_summary(summary: Mapping[str, Any], ks: Sequence[int], timer_table: str) -> None:
    """The per-method table and the timing on stdout."""
    names = metric_names(ks)
    print("\nResults (" + summary["dataset"] + f", {summary['num_eval_users']} test users, "
          f"{summary['catalogue_size']} items, seeds {summary['finetune_seeds']})")
    print(f"{'method':<9} {'users':>6} " + " ".join(f"{n:>10}" for n in names) + f" {'finetune_s':>10}")
    for method, row in summary["methods"].items():
        print(f"{method:<9} {row['num_users']:>6} " + " ".join(f"{row['metrics'].get(n, math.nan):>10.4f}"
                                                              for n in names)
              + f" {row['seconds']['finetune']:>10.1f}")
    for metric, entry in summary.get("dealrec_vs_random", {}).items():
        b = entry["bootstrap_over_users"]
        print(f"DEALRec - random {metric}: {b['diff_mean']:+.4f} [{b['diff_ci_low']:+.4f}, {b['diff_ci_high']:+.4f}]"
              " (paired bootstrap over test users, 95%)")
    print("\nTiming (seconds)")
    print(timer_table)
    print(f"DEALRec pruning overhead (surrogate + influence + effort + selection): "
          f"{summary['timing']['dealrec_pruning_overhead_s']:.1f}s")
