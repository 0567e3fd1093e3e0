"""The DEALRec few-shot recipe: its library stages (`hf_influence.rec.fewshot`, `fewshot_report`, per-user metrics)
checked against independent references, and `recipes/rec_fewshot_lora.py` end to end on the tiny config (tiny random
Llama, real SmolLM2 tokenizer, real Games users) in a subprocess, with the output files checked against the inputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from hf_influence.experiments import ExperimentResult, PruningExperiment
from hf_influence.polarity import get_polarity
from hf_influence.rec import fewshot as fs
from hf_influence.rec import fewshot_report as report
from hf_influence.rec.metrics import ndcg_at_k, per_user_ranking_metrics, ranking_metrics, recall_at_k

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "rec_fewshot_lora.py"
TINY = ROOT / "recipes" / "configs" / "rec_tiny.yaml"


def _run_recipe(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(RECIPE), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _scored_users(n: int = 40, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    prompts = Dataset.from_dict({"example_id": list(range(n)), "user_id": [1000 + i for i in range(n)],
                                 "input_ids": [[1, 2]] * n, "attention_mask": [[1, 1]] * n, "labels": [[1, 2]] * n})
    scores = {"example_id": np.arange(n), "influence": rng.normal(size=n), "effort": rng.gamma(2.0, size=n),
              "el2n": rng.random(n), "grand": rng.random(n)}
    return fs.scored_user_dataset(prompts, scores)


def test_per_user_ranking_metrics_by_hand():
    predictions = [[5, 3, 9, 1], [7, 8], [2, 2, 4]]
    targets = [[3, 1], [6], [4]]
    got = per_user_ranking_metrics(predictions, targets, ks=[2, 3])
    np.testing.assert_allclose(got["recall@2"], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(got["recall@3"], [0.5, 0.0, 1.0])  # the repeated 2 occupies rank 2, 4 is at rank 3
    np.testing.assert_allclose(got["ndcg@2"], [(1 / np.log2(3)) / (1 + 1 / np.log2(3)), 0.0, 0.0])
    np.testing.assert_allclose(got["ndcg@3"][2], 1 / np.log2(4))
    for name, values in got.items():  # the per-user values are exactly what ranking_metrics averages
        k = int(name.split("@")[1])
        fn = recall_at_k if name.startswith("recall") else ndcg_at_k
        np.testing.assert_allclose(values, [fn(p, t, k) for p, t in zip(predictions, targets)])
        assert ranking_metrics(predictions, targets, ks=[2, 3])[name] == pytest.approx(values.mean())
    with pytest.raises(ValueError, match="one of each per user"):
        per_user_ranking_metrics([[1]], [[1], [2]])


def test_load_users_and_eval_subset():
    users, catalogue = fs.load_users("games", max_users=300, max_train_users=50)
    full, _ = fs.load_users("games", max_users=300)
    assert len(users["train"]) == 50 and list(users["train"]["user_id"]) == list(full["train"]["user_id"][:50])
    assert len(users["test"]) == len(full["test"])  # test users still come from all loaded users
    seen = fs.seen_catalogue(catalogue, users)
    items = {i for s in users.values() for c in ("history_item_ids", "target_item_ids") for row in s[c] for i in row}
    assert set(seen) == items and all(seen[i] == catalogue[i] for i in seen)
    picked = fs.pick_eval_users(users["test"], 10, seed=3)
    ids = list(picked["example_id"])
    assert len(ids) == 10 and ids == sorted(ids) and set(ids) <= set(users["test"]["example_id"])
    assert list(fs.pick_eval_users(users["test"], 10, seed=3)["example_id"]) == ids  # seeded
    assert fs.pick_eval_users(users["test"], None, seed=3) is users["test"]
    with pytest.raises(ValueError, match="--data_dir"):
        fs.load_users("amazon-books")


def test_scored_users_polarity_and_alignment():
    users = _scored_users()
    assert get_polarity(users, "el2n") == get_polarity(users, "grand") == "higher_is_harder"
    assert get_polarity(users, "influence") is None  # the dealrec strategy reads raw values
    prompts = Dataset.from_dict({"example_id": [1, 0], "user_id": [5, 6]})
    with pytest.raises(RuntimeError, match="not aligned"):
        fs.scored_user_dataset(prompts, {"example_id": np.array([0, 1]), "el2n": np.array([0.1, 0.2])})


def test_method_selections_against_references(tmp_path):
    users, budget, seed = _scored_users(40), 12, 5
    selections = fs.method_selections(["dealrec", "random", "el2n", "grand", "ccs"], lam=0.3, k=4, hard_prune=0.1,
                                      ccs_beta=0.1)
    assert [s.label for s in selections] == ["dealrec", "el2n", "grand", "ccs"]  # random is the experiment's baseline
    methods = ["dealrec", "random", "el2n", "grand", "ccs", "full"]
    info = report.write_selections(users, methods, selections, budget, seed, tmp_path)
    kept = {m: json.loads((tmp_path / f"{m}.json").read_text()) for m in methods}
    for method in methods:
        ids = kept[method]["example_ids"]
        assert len(ids) == len(set(ids)) == (40 if method == "full" else budget)
        assert kept[method]["user_ids"] == [1000 + e for e in ids]
    for score in ("el2n", "grand"):  # hardest = the highest values (higher_is_harder)
        assert set(kept[score]["example_ids"]) == set(np.argsort(users[score])[-budget:].tolist())
    mm = lambda a: (a - a.min()) / (a.max() - a.min())  # noqa: E731
    combined = mm(np.array(users["influence"])) + 0.3 * mm(np.array(users["effort"]))
    cut = set(np.argsort(combined)[40 - 4:].tolist())  # hard_prune 0.1 of 40 users
    assert not cut & set(kept["dealrec"]["example_ids"])
    assert not set(np.argsort(users["el2n"])[40 - 4:].tolist()) & set(kept["ccs"]["example_ids"])  # beta 0.1
    assert info["dealrec"]["report"]["strategy"] == "dealrec"
    with pytest.raises(ValueError, match="larger than the number of users"):
        report.write_selections(users, ["random"], selections, 41, seed, None)
    with pytest.raises(ValueError, match="Unknown method"):
        fs.method_selections(["dealrec", "magic"], lam=0.3)


def test_markdown_with_at_sign_metric_names(tmp_path):
    # Recall@K columns hold an "@": the summary table must still find them (itertuples renamed such columns)
    rows = [{"run_id": f"{s}__keepn4__seed{seed}", "selection": s, "score": None, "strategy": s, "keep": 4,
             "keep_fraction": 0.5, "seed": seed, "num_train": 4, "recall@10": value}
            for seed, (a, b) in enumerate([(0.2, 0.1), (0.3, 0.1), (0.4, 0.2)]) for s, value in (("random", b),
                                                                                              ("dealrec", a))]
    result = ExperimentResult(rows, output_dir=tmp_path, metric="recall@10")
    table = result.to_markdown("recall@10")
    assert "| dealrec | 0.50 | 4 | 3 | 30.00 [" in table and "| 16.67 [" in table  # mean diff (0.1+0.2+0.2)/3


@pytest.mark.slow
def test_recipe_tiny_end_to_end(tmp_path):
    out = tmp_path / "run"
    budget, hard_prune, methods, seeds = 12, 0.1, ["dealrec", "random", "el2n"], [42, 43]
    proc = _run_recipe("--config", str(TINY), "--output_dir", str(out), "--max_users", "90", "--budget", str(budget),
                       "--k", "4", "--hard_prune", str(hard_prune), "--max_eval_users", "4", "--lissa_depth", "30",
                       "--max_new_tokens", "4", "--methods", *methods, "--finetune_seeds", *map(str, seeds))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("results.json", "results.csv", "scores.csv", "timing.json", "recall_ndcg.png", "summary.md",
                 "summary.csv", "dealrec_adapter/README.md", "dealrec_adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == methods and results["finetune_seeds"] == seeds
    assert results["num_eval_users"] == 4 and results["budget"] == budget
    for method in methods:
        row = results["methods"][method]
        assert row["num_users"] == budget and row["seeds"] == seeds
        assert set(row["metrics"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
        assert all(0.0 <= v <= 1.0 for v in row["metrics"].values())
        assert row["seconds"]["finetune"] > 0
    stages = results["timing"]["stages"]
    for stage in ("surrogate training", "influence", "effort", "el2n (surrogate)", "grand (surrogate)",
                  "selection/dealrec", "finetune/dealrec", "evaluation/dealrec", "catalogue embedding"):
        assert stage in stages, stage
    assert results["timing"]["dealrec_pruning_overhead_s"] >= stages["influence"] + stages["effort"]

    with open(out / "results.csv") as handle:  # one row per method x seed, per-user arrays kept for the bootstrap
        rows = list(csv.DictReader(handle))
    assert sorted((r["selection"], int(r["seed"])) for r in rows) == sorted((m, s) for m in methods for s in seeds)
    for r in rows:
        per_user = np.load(out / "per_example" / f"{r['run_id']}.npz")
        assert per_user["recall@20"].shape == (4,)
        assert float(r["recall@20"]) == pytest.approx(per_user["recall@20"].mean())
    with open(out / "summary.csv") as handle:
        summary = [r for r in csv.DictReader(handle) if r["selection"] == "dealrec" and r["metric"] == "recall@20"]
    assert len(summary) == 1 and summary[0]["test"].startswith("paired bootstrap")  # 2 seeds < 3: bootstrap
    assert summary[0]["baseline"] == "random" and int(summary[0]["paired_runs"]) == 2
    low, high = float(summary[0]["diff_ci_low"]), float(summary[0]["diff_ci_high"])
    assert np.isfinite(low) and low <= float(summary[0]["diff_mean"]) <= high
    assert "paired bootstrap over evaluation examples" in (out / "summary.md").read_text()
    boot = results["dealrec_vs_random"]["recall@20"]["bootstrap_over_users"]
    assert boot["diff_ci_low"] == pytest.approx(low) and boot["paired_runs"] == 2

    with open(out / "scores.csv") as handle:
        scores = list(csv.DictReader(handle))
    assert len(scores) == results["num_train_users"]
    ids = [int(r["example_id"]) for r in scores]
    combined = np.array([float(r["dealrec"]) for r in scores])
    mm = lambda a: (a - a.min()) / (a.max() - a.min())  # noqa: E731
    influence, effort = (np.array([float(r[c]) for r in scores]) for c in ("influence", "effort"))
    np.testing.assert_allclose(combined, mm(influence) + results["lambda"] * mm(effort), rtol=1e-5, atol=1e-6)
    by_id = {int(r["example_id"]): int(r["user_id"]) for r in scores}
    for method in methods:
        selected = json.loads((out / "selected" / f"{method}.json").read_text())
        assert len(selected["example_ids"]) == budget == len(set(selected["example_ids"]))
        assert selected["user_ids"] == [by_id[e] for e in selected["example_ids"]] and selected["seed"] == seeds[0]
    dealrec_ids = json.loads((out / "selected" / "dealrec.json").read_text())["example_ids"]
    cut = int(np.floor(hard_prune * len(scores)))
    assert not {ids[i] for i in np.argsort(combined, kind="stable")[len(scores) - cut :]} & set(dealrec_ids)
    el2n = {int(r["example_id"]): float(r["el2n"]) for r in scores}
    el2n_ids = json.loads((out / "selected" / "el2n.json").read_text())["example_ids"]
    assert min(el2n[e] for e in el2n_ids) >= sorted(el2n.values())[-budget]  # EL2N keeps the hardest
    run_id = PruningExperiment.run_id(fs.method_selections(["dealrec"], lam=0.3)[0], budget, seeds[0])
    kept_hash = next(r["kept_ids_hash"] for r in rows if r["run_id"] == run_id)  # the experiment ran that selection
    import hashlib

    assert kept_hash == hashlib.blake2b(np.sort(dealrec_ids).astype(np.int64).tobytes(), digest_size=8).hexdigest()
    assert "DEALRec" in (out / "dealrec_adapter" / "README.md").read_text()


def test_option_checks():
    from types import SimpleNamespace

    fs.check_options(SimpleNamespace(catalogue="seen", normalize="minmax"), seeds=[42], selection_seed=42)
    with pytest.raises(ValueError, match="--catalogue must be one of"):
        fs.check_options(SimpleNamespace(catalogue="popular"), seeds=[42])
    with pytest.raises(ValueError, match="--torch_dtype must be one of"):
        fs.check_options(SimpleNamespace(torch_dtype="int8"), seeds=[42])
    with pytest.raises(ValueError, match="--finetune_seeds 7"):  # selections draw with the fine-tuning seed
        fs.check_options(seeds=[42], selection_seed=7)
    with pytest.raises(ValueError, match="differs"):
        fs.check_options(seeds=[1, 2], selection_seed=1)
    with pytest.raises(ValueError, match=r"Unknown method\(s\) \['magic'\]"):
        fs.check_options(seeds=[42], methods=["dealrec", "magic"])


def test_recipe_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: 4\nnot_a_flag: 1\n")
    proc = _run_recipe("--config", str(bad), "--output_dir", str(tmp_path / "x"), timeout=120)
    assert proc.returncode != 0 and "not_a_flag" in proc.stderr and "rec_*.yaml" in proc.stderr
