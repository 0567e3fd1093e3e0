"""hf_influence.experiments: intervals and paired tests against scipy on hand-made numbers, the grid's pairing,
resume after a kill mid-grid (only the missing rows run), settings checks, and the report files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hf_influence.experiments import ExperimentResult, PruningExperiment, Selection
from hf_influence.statistics import (
    PAIRED_BOOTSTRAP,
    PAIRED_T_TEST,
    mean_interval,
    paired_bootstrap,
    paired_t,
    proportion_interval,
)

REPO = Path(__file__).resolve().parents[1]


# ---- statistics against scipy ---------------------------------------------------------------------------------------


def test_mean_interval_and_paired_t_equal_scipy():
    values = np.array([0.61, 0.58, 0.66, 0.63, 0.60])
    iv = mean_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert iv.mean == pytest.approx(values.mean()) and iv.low == pytest.approx(low) and iv.high == pytest.approx(high)
    a = np.array([0.62, 0.60, 0.67, 0.61, 0.64])
    b = np.array([0.58, 0.59, 0.61, 0.60, 0.59])
    cmp = paired_t(a, b)
    d = a - b
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert cmp.difference.mean == pytest.approx(d.mean())
    assert (cmp.difference.low, cmp.difference.high) == (pytest.approx(low), pytest.approx(high))
    assert cmp.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue) and cmp.test == PAIRED_T_TEST
    # one value: a mean without an interval; identical arms: no difference, p = 1
    assert np.isnan(mean_interval([0.5]).low) and mean_interval([0.5]).mean == 0.5
    assert paired_t(a, a).p_value == 1.0
    with pytest.raises(ValueError, match="matched pairs"):
        paired_t(a, b[:3])
    with pytest.raises(ValueError, match="confidence"):
        mean_interval(values, confidence=95)


def test_paired_bootstrap_matches_the_normal_interval_on_many_examples():
    rng = np.random.default_rng(0)
    base = rng.random((2, 4000))
    shifted = base + 0.02 + rng.normal(0, 0.1, size=base.shape)
    cmp = paired_bootstrap(shifted, base, num_resamples=4000)
    diff = (shifted - base).mean(axis=0)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size)
    assert cmp.test == PAIRED_BOOTSTRAP and cmp.difference.mean == pytest.approx(diff.mean())
    assert cmp.difference.low == pytest.approx(diff.mean() - half, abs=0.15 * half)
    assert cmp.difference.high == pytest.approx(diff.mean() + half, abs=0.15 * half)
    assert cmp.p_value < 0.01
    null = paired_bootstrap(base + rng.normal(0, 0.1, size=base.shape), base, num_resamples=2000)
    assert null.difference.low < 0 < null.difference.high or null.p_value > 0.01


def test_proportion_interval_is_the_exact_binomial_interval():
    # the closed forms at the ends: (alpha/2)^(1/n)
    assert proportion_interval(0, 10).low == 0.0 and proportion_interval(0, 10).high == pytest.approx(1 - 0.025 ** 0.1)
    assert proportion_interval(10, 10).low == pytest.approx(0.025 ** 0.1) and proportion_interval(10, 10).high == 1.0
    # scipy's exact interval (a second implementation)
    for k, n in [(7, 20), (1, 100), (63, 100)]:
        iv = proportion_interval(k, n)
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert (iv.mean, iv.low, iv.high, iv.n) == (k / n, pytest.approx(ci.low), pytest.approx(ci.high), n)
    # exact coverage >= 95% at the noise level of the SNLI table (100 flagged pairs, 10% corrupted)
    n, p = 100, 0.1
    bounds = [proportion_interval(k, n) for k in range(n + 1)]
    coverage = sum(stats.binom.pmf(k, n, p) for k, iv in enumerate(bounds) if iv.low <= p <= iv.high)
    assert 0.95 <= coverage < 1.0
    for bad in [(3, 2), (-1, 5), (0, 0)]:
        with pytest.raises(ValueError, match="successes <= trials"):
            proportion_interval(*bad)


def test_noise_detection_on_a_hand_made_split():
    from datasets import Dataset

    from hf_influence.experiments.diagnostics import noise_detection
    from hf_influence.polarity import set_polarity

    # 20 pairs, 2 corrupted (rows 3 and 11): EL2N puts them highest, AUM lowest, "other" finds one of them
    noisy = np.zeros(20, dtype=bool)
    noisy[[3, 11]] = True
    el2n = np.linspace(0.0, 0.5, 20)
    el2n[[3, 11]] = [0.9, 0.8]
    other = np.linspace(0.0, 1.0, 20)
    other[3] = 2.0  # rows 3 and 19 are its 2 hardest: one corrupted
    data = Dataset.from_dict({"is_noisy": noisy, "el2n": el2n, "aum": -el2n, "other": other, "plain": other})
    data = set_polarity(data, {"el2n": "higher_is_harder", "aum": "higher_is_easier", "other": "higher_is_harder"})
    table = noise_detection(data, ["el2n", "aum", "other", "plain", "absent"], fraction=0.1).set_index("score")
    assert list(table.index) == ["el2n", "aum", "other"]  # no polarity or no column: skipped
    for score in ("el2n", "aum"):
        row = table.loc[score]
        assert (row.flagged, row.noisy, row.share, row.chance, row.enrichment) == (2, 2, 1.0, 0.1, 10.0)
        assert row.ci_low == pytest.approx(0.025 ** 0.5) and row.ci_high == 1.0
        assert row.p_value == pytest.approx(1 / 190)  # both corrupted pairs among 2 drawn from 20: 1 / C(20, 2)
    row = table.loc["other"]
    assert (row.noisy, row.share) == (1, 0.5)
    assert row.p_value == pytest.approx(1 - 153 / 190)  # P(at least one corrupted) = 1 - C(18, 2) / C(20, 2)
    assert noise_detection(data.remove_columns("is_noisy"), ["el2n"]).empty


# ---- summary on hand-made rows --------------------------------------------------------------------------------------


def _row(selection, keep, seed, acc, balanced=False, strategy="easiest"):
    return {"run_id": f"{selection}__{keep}__{seed}", "selection": selection, "score": "el2n", "strategy": strategy,
            "class_balanced": balanced, "keep": keep, "keep_fraction": keep, "seed": seed, "num_train": 100 * keep,
            "test_accuracy": acc}


def test_summary_pairs_each_selection_with_same_fraction_random_by_seed():
    rand = [0.60, 0.58, 0.63, 0.61]
    el2n = [0.64, 0.61, 0.66, 0.66]  # +0.04, +0.03, +0.03, +0.05: clearly above
    worse = [0.50, 0.52, 0.49, 0.55]
    noisy = [0.65, 0.55, 0.66, 0.58]
    rows = [_row("random", 0.5, s, a, strategy="random") for s, a in enumerate(rand)]
    rows += [_row("el2n:easiest", 0.5, s, a) for s, a in enumerate(el2n)]
    rows += [_row("aum:hardest", 0.5, s, a) for s, a in enumerate(worse)]
    rows += [_row("vog:hardest", 0.5, s, a) for s, a in enumerate(noisy)]
    rows += [_row("random", 0.7, s, 0.7, strategy="random") for s in range(2)]  # another fraction: not paired
    summary = ExperimentResult(rows).summary().set_index(["selection", "keep"])
    cell = summary.loc[("el2n:easiest", 0.5)]
    d = np.array(el2n) - np.array(rand)
    low, high = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert cell["baseline"] == "random" and cell["paired_runs"] == 4
    assert cell["diff_mean"] == pytest.approx(d.mean()) and cell["diff_ci_low"] == pytest.approx(low)
    assert cell["diff_ci_high"] == pytest.approx(high)
    assert cell["p_value"] == pytest.approx(stats.ttest_rel(el2n, rand).pvalue)
    assert cell["beats_random"] and not cell["loses_to_random"]
    assert summary.loc[("aum:hardest", 0.5)]["loses_to_random"]
    vog = summary.loc[("vog:hardest", 0.5)]
    assert not vog["beats_random"] and not vog["loses_to_random"]  # the interval straddles 0
    acc = summary.loc[("el2n:easiest", 0.5)]
    low, high = stats.t.interval(0.95, 3, loc=np.mean(el2n), scale=stats.sem(el2n))
    assert acc["test_accuracy_ci_low"] == pytest.approx(low) and acc["test_accuracy_std"] == pytest.approx(
        np.std(el2n, ddof=1))
    assert np.isnan(summary.loc[("random", 0.5)]["diff_mean"])
    # lower-is-better metrics flip the verdicts
    flipped = ExperimentResult(rows, greater_is_better=False).summary().set_index(["selection", "keep"])
    assert flipped.loc[("aum:hardest", 0.5)]["beats_random"] and flipped.loc[("el2n:easiest", 0.5)][
        "loses_to_random"]
    text = ExperimentResult(rows).to_markdown()
    assert "beats random" in text and "loses to random" in text and "cannot be told apart" in text
    assert "paired t-test" in text


def test_class_balanced_selections_pair_with_class_balanced_random():
    rows = [_row("random", 0.5, s, 0.5, strategy="random") for s in range(3)]
    rows += [_row("random (class-balanced)", 0.5, s, 0.6, balanced=True, strategy="random") for s in range(3)]
    rows += [_row("el2n:easiest (class-balanced)", 0.5, s, 0.6 + 0.01 * s, balanced=True) for s in range(3)]
    cell = ExperimentResult(rows).summary().set_index("selection").loc["el2n:easiest (class-balanced)"]
    assert cell["baseline"] == "random (class-balanced)" and cell["diff_mean"] == pytest.approx(0.01)
    plain = ExperimentResult(rows).summary(baseline="random").set_index("selection")
    plain = plain.loc["el2n:easiest (class-balanced)"]
    assert plain["baseline"] == "random" and plain["diff_mean"] == pytest.approx(0.11)
    with pytest.raises(ValueError, match="not among the selections"):
        ExperimentResult(rows).summary(baseline="no-such")


def test_bootstrap_over_examples_when_seeds_are_few(tmp_path):
    rng = np.random.default_rng(1)
    result = ExperimentResult(output_dir=tmp_path)
    users = rng.random(500) < 0.1
    better = users | (rng.random(500) < 0.05)
    result.append({"run_id": "r0", "selection": "random", "strategy": "random", "keep": 0.5, "keep_fraction": 0.5,
                   "seed": 0, "num_train": 5, "recall": users.mean()}, {"recall": users.astype(float)})
    result.append({"run_id": "d0", "selection": "dealrec:dealrec", "strategy": "dealrec", "keep": 0.5,
                   "keep_fraction": 0.5, "seed": 0, "num_train": 5, "recall": better.mean()},
                  {"recall": better.astype(float)})
    loaded = ExperimentResult.load(tmp_path)
    cell = loaded.summary("recall").set_index("selection").loc["dealrec:dealrec"]
    assert cell["test"] == PAIRED_BOOTSTRAP and cell["diff_mean"] == pytest.approx(better.mean() - users.mean())
    assert cell["diff_ci_low"] > 0 and cell["beats_random"]
    with pytest.raises(ValueError, match="per-example"):
        ExperimentResult(loaded.rows).summary("recall", bootstrap=True)


def test_selection_parse_and_errors():
    assert Selection.parse("aum:hardest").label == "aum:hardest"
    balanced = Selection.parse("aum:ccs:balanced")
    assert balanced.class_balanced and balanced.label == "aum:ccs (class-balanced)"
    assert Selection.parse(("el2n", "easiest")).strategy == "easiest"
    with pytest.raises(ValueError, match="Unknown strategy"):
        Selection("el2n", "toughest")
    with pytest.raises(ValueError, match="Cannot read"):
        Selection.parse("el2n")
    with pytest.raises(ValueError, match="does not take"):
        Selection("el2n", "ccs", options={"offset": 3})


def test_selection_short_form_carries_strategy_options():
    ccs = Selection.parse("el2n:ccs:balanced:beta=0.3")
    assert ccs.options == {"beta": 0.3} and ccs.class_balanced
    assert ccs.label == "el2n:ccs[beta=0.3] (class-balanced)" and ccs.slug == "el2n_ccs_beta_0.3_class-balanced"
    # another option value is another run id; no options keeps the old label (and so the old run ids)
    assert Selection.parse("el2n:ccs:balanced:beta=0.1").slug != ccs.slug
    assert Selection.parse("el2n:ccs:balanced").label == "el2n:ccs (class-balanced)"
    cut = Selection.parse("el2n:ccs:beta=0:k=10:cut_column=aum")
    assert cut.options == {"beta": 0, "k": 10, "cut_column": "aum"} and not cut.class_balanced
    assert isinstance(cut.options["k"], int)
    # written options override the ones passed in (e.g. a recipe's --weighted_* flags); the rest are kept
    weighted = Selection.parse("el2n:weighted:mapping=softmax:prefer=easy", options={"mapping": "linear", "eps": 0.1})
    assert weighted.options == {"mapping": "softmax", "eps": 0.1, "prefer": "easy"}
    assert Selection.parse("aum:window:balanced:start_rank=none").options == {"start_rank": None}
    with pytest.raises(ValueError, match="does not take"):
        Selection.parse("el2n:ccs:gamma=1")
    with pytest.raises(ValueError, match="twice"):
        Selection.parse("el2n:ccs:beta=0.1:beta=0.2")
    for bad in ("el2n:ccs:beta=", "el2n:ccs:extra", "el2n:ccs:beta=0.1:balanced"):
        with pytest.raises(ValueError, match="Cannot read"):
            Selection.parse(bad)


# ---- the grid on a tiny model ---------------------------------------------------------------------------------------

GRID_SCRIPT = textwrap.dedent('''
    import os, sys, json
    import numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import random_classification_dataset, tiny_bert_config
    from transformers import BertForSequenceClassification, DataCollatorWithPadding, TrainerCallback, \\
        TrainingArguments, PreTrainedTokenizerFast
    from hf_influence import add_example_ids, set_polarity
    from hf_influence.experiments import PruningExperiment

    out, kill_after = sys.argv[1], int(sys.argv[2])
    train = add_example_ids(random_classification_dataset(n=24, seed=0))
    train = train.add_column("el2n", np.linspace(0, 1, len(train)).astype("float32"))
    train = set_polarity(train, "el2n", "higher_is_harder")
    evals = {{"eval": random_classification_dataset(n=10, seed=1),
             "test": random_classification_dataset(n=10, seed=2)}}

    class Counter(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            with open(os.path.join(out, "trained.log"), "a") as f:
                f.write(os.path.basename(args.output_dir) + "\\n")
            finished = sum(1 for _ in open(os.path.join(out, "trained.log")))
            if kill_after and finished > kill_after:
                os._exit(9)  # a hard stop after training, before the row is written

    def collate(rows):
        import torch
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [0] * (n - len(r["input_ids"])) for r in rows])
        return {{"input_ids": ids, "attention_mask": (ids != 0).long(),
                "labels": torch.tensor([r["label"] for r in rows])}}

    def accuracy(p):
        return {{"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}}

    exp = PruningExperiment(
        train, selections=["el2n:easiest", "el2n:hardest:balanced"], fractions=[0.5], seeds=[0, 1],
        model_init=lambda: BertForSequenceClassification(tiny_bert_config()),
        args=TrainingArguments(out, num_train_epochs=1, per_device_train_batch_size=8, report_to="none",
                               remove_unused_columns=False, use_cpu=True,
                               ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None),
        eval_datasets=evals, compute_metrics=accuracy, data_collator=collate, callbacks=[Counter()])
    result = exp.run(out, progress=False)
    from accelerate import PartialState

    print("ROWS", len(result.rows), "WORLD", PartialState().num_processes, "RANK", PartialState().process_index)
''')


def _run_grid(out: Path, kill_after: int) -> subprocess.CompletedProcess:
    script = out.parent / "grid.py"
    script.write_text(GRID_SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get(
        "PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(script), str(out), str(kill_after)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_resume_after_a_kill_runs_only_the_missing_rows(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    killed = _run_grid(out, kill_after=3)
    assert killed.returncode == 9, killed.stderr[-2000:]
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 3  # the fourth run trained, then the process died before its row was written
    first = rows.copy()
    resumed = _run_grid(out, kill_after=0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = pd.read_csv(out / "results.csv")
    # per seed: full + random + random (class-balanced) + 2 selections = 5 runs, 2 seeds
    assert len(rows) == 10 and rows["run_id"].is_unique
    trained = (out / "trained.log").read_text().split()
    assert len(trained) == 4 + 7  # the killed run is redone, the 3 finished are not
    assert not set(first["run_id"]) & set(trained[4:])
    pd.testing.assert_frame_equal(rows.iloc[:3].reset_index(drop=True), first, check_dtype=False)  # untouched
    # pairing: every cell ran the same seeds as its random baseline, at the same size
    assert set(rows["selection"]) == {"full", "random", "random (class-balanced)", "el2n:easiest",
                                      "el2n:hardest (class-balanced)"}
    kept = rows[rows["selection"] != "full"]
    assert (kept["num_train"] == 12).all()
    assert all(sorted(seeds) == [0, 1] for seeds in kept.groupby("selection")["seed"].apply(list))
    balanced = rows[rows["selection"] == "el2n:hardest (class-balanced)"]["label_counts"].map(json.loads)
    plain = rows[rows["selection"] == "el2n:easiest"]["label_counts"].map(json.loads)
    assert len(balanced) == 2 and len(plain) == 2
    from conftest import random_classification_dataset

    labels = np.asarray(random_classification_dataset(n=24, seed=0)["label"])
    for counts in balanced:  # class-balanced: each class keeps its share of the 12 kept rows (within rounding)
        for label, count in counts.items():
            assert abs(count - 12 * np.mean(labels == int(label))) < 1
    # a rerun with everything finished trains nothing
    again = _run_grid(out, kill_after=0)
    assert again.returncode == 0 and len((out / "trained.log").read_text().split()) == 11
    result = ExperimentResult.load(out)
    folder = result.save()
    for name in ("summary.csv", "summary.json", "summary.md", "accuracy_vs_fraction.png"):
        assert (folder / name).is_file(), name
    assert (out / "best_pruned_model" / "best_run.json").is_file()
    assert result.write_best_model_card(base_model="tiny-bert").is_file()
    assert "train.log" in os.listdir(out) and "{" in (out / "train.log").read_text()


def test_a_diverged_run_stops_the_grid_and_keeps_the_finished_rows(tmp_path):
    import torch
    from conftest import random_classification_dataset, tiny_bert_config
    from test_trainer import PadCollator
    from transformers import BertForSequenceClassification, TrainerCallback, TrainingArguments

    from hf_influence import add_example_ids

    class DivergeOnSeed1(TrainerCallback):  # what a too-high learning rate does, deterministically
        def on_train_end(self, args, state, control, model=None, **kwargs):
            if args.seed == 1:
                with torch.no_grad():
                    model.classifier.weight[0, 0] = float("nan")

    exp = PruningExperiment(
        add_example_ids(random_classification_dataset(n=8)), fractions=[0.5], seeds=[0, 1], full_data=False,
        model_init=lambda: BertForSequenceClassification(tiny_bert_config()),
        args=TrainingArguments(str(tmp_path), num_train_epochs=1, report_to="none", use_cpu=True),
        eval_datasets={"eval": random_classification_dataset(n=4, seed=3)}, data_collator=PadCollator(),
        callbacks=[DivergeOnSeed1()])
    with pytest.raises(FloatingPointError, match=r"random__keep0\.5__seed1 diverged: .*classifier\.weight.*learning"):
        exp.run(tmp_path, progress=False)
    rows = ExperimentResult.load(tmp_path).rows
    assert list(rows["run_id"]) == ["random__keep0.5__seed0"] and np.isfinite(rows["eval_loss"]).all()
    assert not (tmp_path / "runs" / "random__keep0.5__seed0").exists()  # nothing saved: no empty run folder left


def test_changed_settings_are_refused(tmp_path):
    from conftest import random_classification_dataset, tiny_bert_config
    from transformers import BertForSequenceClassification, TrainingArguments

    from hf_influence import add_example_ids

    train = add_example_ids(random_classification_dataset(n=8))
    evals = random_classification_dataset(n=4, seed=3)

    def make(lr, seeds=(0,), epochs=3):
        return PruningExperiment(train, fractions=[0.5], seeds=list(seeds), full_data=False,
                                 model_init=lambda: BertForSequenceClassification(tiny_bert_config()),
                                 args=TrainingArguments(str(tmp_path), learning_rate=lr, report_to="none",
                                                        num_train_epochs=epochs),
                                 eval_datasets=evals)

    make(1e-3)._check_or_write_settings(tmp_path, make(1e-3).settings(train), True)
    make(1e-3)._check_or_write_settings(tmp_path, make(1e-3).settings(train), True)  # same settings: fine
    later_seeds = make(1e-3, seeds=(2, 3))  # more seeds in a later call (or in a parallel folder): the same settings
    later_seeds._check_or_write_settings(tmp_path, later_seeds.settings(train), True)
    # 3 (an int, as a YAML file gives it) and 3.0 (a float, as the command line gives it) are the same setting
    as_float = make(1e-3, epochs=3.0)
    as_float._check_or_write_settings(tmp_path, as_float.settings(train), True)
    with pytest.raises(ValueError, match="other settings.*training_arguments"):
        make(1e-4)._check_or_write_settings(tmp_path, make(1e-4).settings(train), True)
    with pytest.raises(ValueError, match="other settings.*training_arguments"):
        make(1e-3, epochs=3.5)._check_or_write_settings(tmp_path, make(1e-3, epochs=3.5).settings(train), True)


def test_bad_input_errors():
    from conftest import random_classification_dataset

    train = random_classification_dataset(n=8)
    common = {"model_init": lambda: None, "args": object(), "eval_datasets": train}
    with pytest.raises(ValueError, match="not both and not neither"):
        PruningExperiment(**common)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        PruningExperiment(train, fractions=[1.5], **common)
    with pytest.raises(ValueError, match="each once"):
        PruningExperiment(train, seeds=[0, 0], **common)
    with pytest.raises(ValueError, match="model_init"):
        PruningExperiment(train, args=object(), eval_datasets=train)
    with pytest.raises(ValueError, match="evaluated"):
        PruningExperiment(train, model_init=lambda: None, args=object())
    with pytest.raises(ValueError, match="empty"):
        PruningExperiment(train, model_init=lambda: None, args=object(), eval_datasets={"eval": train.select([])})


@pytest.mark.slow
def test_two_processes_write_one_results_file_and_return_the_same_rows(tmp_path):
    """Under torchrun (2 gloo processes), every rank trains every run, only rank 0 writes results.csv, and both
    ranks return the same rows."""
    out = tmp_path / "exp"
    out.mkdir()
    script = tmp_path / "grid.py"
    script.write_text(GRID_SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                           str(out), "0"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("ROWS"))
    assert lines == ["ROWS 10 WORLD 2 RANK 0", "ROWS 10 WORLD 2 RANK 1"]
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 10 and rows["run_id"].is_unique
    assert len((out / "trained.log").read_text().split()) == 20  # both ranks trained each of the 10 runs
