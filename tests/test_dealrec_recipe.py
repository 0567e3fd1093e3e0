"""recipes/rec_fewshot_lora.py end to end on the tiny config (tiny random Llama, real SmolLM2 tokenizer, real Games
users), with the output files and their structure checked against the inputs (budget, hard cut, ids, timing)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "rec_tiny.yaml"


def _recipe():
    spec = importlib.util.spec_from_file_location("rec_fewshot_lora", ROOT / "recipes" / "rec_fewshot_lora.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_recipe_tiny_end_to_end(tmp_path):
    recipe = _recipe()
    out = tmp_path / "run"
    budget, hard_prune = 12, 0.1
    summary = recipe.main([
        "--config", str(TINY), "--output_dir", str(out), "--max_users", "90", "--budget", str(budget),
        "--k", "4", "--hard_prune", str(hard_prune), "--max_eval_users", "4", "--lissa_depth", "30",
        "--max_new_tokens", "4",
    ])
    methods = ["dealrec", "random", "el2n", "grand", "ccs"]
    for name in ("results.json", "results.csv", "scores.csv", "timing.json", "recall_ndcg.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == methods
    assert results["num_eval_users"] == 4 and results["budget"] == budget
    for method in methods:
        row = results["methods"][method]
        assert row["num_users"] == budget
        assert set(row["metrics"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
        assert all(0.0 <= v <= 1.0 for v in row["metrics"].values())
        assert row["seconds"]["finetune"] > 0 and row["train"]["global_step"] >= 1
    stages = results["timing"]["stages"]
    for stage in ("surrogate training", "influence", "effort", "el2n (surrogate)", "grand (surrogate)",
                  "selection/dealrec", "finetune/dealrec", "evaluation/dealrec", "catalogue embedding"):
        assert stage in stages, stage
    assert results["timing"]["dealrec_pruning_overhead_s"] >= stages["influence"] + stages["effort"]

    with open(out / "scores.csv") as handle:
        scores = list(csv.DictReader(handle))
    assert len(scores) == results["num_train_users"] == summary["num_train_users"]
    ids = [int(r["example_id"]) for r in scores]
    combined = np.array([float(r["dealrec"]) for r in scores])
    # the DEALRec combination is min-max(influence) + lambda * min-max(effort)
    influence = np.array([float(r["influence"]) for r in scores])
    effort = np.array([float(r["effort"]) for r in scores])
    mm = lambda a: (a - a.min()) / (a.max() - a.min())  # noqa: E731
    np.testing.assert_allclose(combined, mm(influence) + results["lambda"] * mm(effort), rtol=1e-5, atol=1e-6)

    for method in methods:
        selected = json.loads((out / "selected" / f"{method}.json").read_text())
        assert len(selected["example_ids"]) == budget == len(set(selected["example_ids"]))
        assert set(selected["example_ids"]) <= set(ids)
        by_id = {int(r["example_id"]): int(r["user_id"]) for r in scores}
        assert selected["user_ids"] == [by_id[e] for e in selected["example_ids"]]
    dealrec_ids = json.loads((out / "selected" / "dealrec.json").read_text())["example_ids"]
    cut = int(np.floor(hard_prune * len(scores)))
    top = {ids[i] for i in np.argsort(combined, kind="stable")[len(scores) - cut :]}
    assert not top & set(dealrec_ids)  # the hard-pruned highest scores are never selected
    el2n_ids = json.loads((out / "selected" / "el2n.json").read_text())["example_ids"]
    el2n = {int(r["example_id"]): float(r["el2n"]) for r in scores}
    assert min(el2n[e] for e in el2n_ids) >= sorted(el2n.values())[-budget]  # EL2N keeps the hardest

    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == methods
    assert (out / "dealrec_adapter" / "adapter_config.json").is_file()
    assert "DEALRec" in (out / "dealrec_adapter" / "README.md").read_text()


def test_recipe_argument_errors(tmp_path):
    recipe = _recipe()
    with pytest.raises(ValueError, match="Unknown method"):
        args = recipe.parse_args(["--config", str(TINY), "--methods", "dealrec", "magic",
                                  "--output_dir", str(tmp_path)])
        recipe.validate_args(*args[:5])
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: 4\nnot_a_flag: 1\n")
    with pytest.raises(ValueError, match="not_a_flag"):
        recipe.parse_args(["--config", str(bad)])
    scores = {"example_id": np.arange(10), "user_id": np.arange(10) + 1, "influence": np.random.rand(10),
              "effort": np.random.rand(10), "el2n": np.random.rand(10), "grand": np.random.rand(10)}
    pruning = recipe.PruningArguments(budget=11)
    with pytest.raises(ValueError, match="larger than the number of users"):
        recipe.select_users(scores, "random", pruning, lam=0.3)
    with pytest.raises(ValueError, match="--dataset"):
        recipe.load_users(recipe.DataArguments(dataset="amazon-books"))
