"""The SNLI pruning recipe (recipes/snli_prune.py) and the library pieces it is made of
(hf_influence.experiments.text_classification and .scoring): bad input fails fast with clear errors, data and
models are prepared as documented, and the smoke profile runs end to end (through the command line) and writes every
promised output."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_influence.experiments import text_classification as tc
from hf_influence.experiments.scoring import SCORES, CheckpointSchedule, ScoringPlan

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "snli_prune.py"
SMOKE = REPO / "recipes" / "configs" / "snli_smoke.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _no_barrier(desc=""):
    """A stand-in for accelerate's main_process_first (one process)."""
    import contextlib

    return contextlib.nullcontext()


def _recipe(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the recipe through its command line (as users do)."""
    return subprocess.run([sys.executable, str(RECIPE), *args], capture_output=True, text=True, env=ENV, cwd=REPO,
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: each error names the problem and the fix, before any model weights are loaded
# ---------------------------------------------------------------------------------------------------------------------


def test_scoring_plan_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"Unknown score\(s\) \['el3n'\]; valid scores are: el2n, grand") as err:
        ScoringPlan(scores=["el2n", "el3n"])
    assert "vog_class" in str(err.value) and "forgetting" in str(err.value)
    with pytest.raises(ValueError, match=r"--similarity_reduce must be one of mean, max, got 'sum'"):
        ScoringPlan(similarity_reduce="sum")
    with pytest.raises(ValueError, match=r"--target_samples and --similarity_projection must be positive"):
        ScoringPlan(target_samples=0)
    with pytest.raises(ValueError, match=r"--num_score_checkpoints must be at least 2"):
        ScoringPlan(num_score_checkpoints=1)
    with pytest.raises(ValueError, match=r"--pvi_epoch is 1-based"):
        ScoringPlan(pvi_epoch=0)
    with pytest.raises(ValueError, match="--tracin_checkpoint_every must be a positive"):
        ScoringPlan(tracin_checkpoint_every=0)
    with pytest.raises(ValueError, match=r"--el2n_epoch 3 is after the end of the scoring runs \(1 epochs\)"):
        ScoringPlan(scores=["el2n"], el2n_epoch=3).check_epochs(1)
    with pytest.raises(ValueError, match=r"--pvi_epoch 2 is after the end of the scoring runs \(1 epochs\)"):
        ScoringPlan(scores=["pvi"], pvi_epoch=2).check_epochs(1)
    ScoringPlan(scores=["forgetting"], el2n_epoch=3).check_epochs(1)  # EL2N not asked: no complaint
    with pytest.raises(ValueError, match=r"--label_noise is the fraction of training labels to corrupt, in \[0, 1\)"):
        tc.DataArguments(label_noise=1.5)
    with pytest.raises(ValueError, match="--label_noise_mode must be one of random, permute"):
        tc.DataArguments(label_noise=0.1, label_noise_mode="shuffle")


def test_tracin_checkpoints_beyond_the_run_fail_before_training():
    """10 TracIn checkpoints every 500 steps need 5,000 steps: a 4-step run stops at train begin."""
    from types import SimpleNamespace

    plan = ScoringPlan(scores=["tracin"], num_score_checkpoints=3, tracin_checkpoint_every=500)
    schedule = CheckpointSchedule(fixed_steps=plan.tracin_steps())
    with pytest.raises(ValueError, match=r"fewer than the last TracIn checkpoint \(1500 = --num_score_checkpoints"):
        schedule.on_train_begin(None, SimpleNamespace(max_steps=4), None)
    evenly = CheckpointSchedule(num_evenly_spaced=3)
    evenly.on_train_begin(None, SimpleNamespace(max_steps=4), None)
    assert evenly.steps == [1, 3, 4]  # round(4 * k / 3)


def test_recipe_command_line_errors_and_help(tmp_path):
    """The recipe's own checks (kept fractions, selections, YAML keys, --push_to_hub) through its command line."""
    out = str(tmp_path / "out")
    proc = _recipe("--config", str(SMOKE), "--output_dir", out, "--keep_fractions", "0.5", "1.5")
    assert proc.returncode != 0 and "--keep_fractions must lie in (0, 1]" in proc.stderr
    assert "For 45% pruned pass 0.55" in proc.stderr
    proc = _recipe("--config", str(SMOKE), "--output_dir", out, "--selections", "el2n:toughest")
    assert proc.returncode != 0 and "Unknown strategy 'toughest'" in proc.stderr and "hardest" in proc.stderr
    proc = _recipe("--config", str(SMOKE), "--output_dir", out, "--selections", "el2n:ccs:balanced:gamma=0.3")
    assert proc.returncode != 0 and "does not take ['gamma']" in proc.stderr and "beta" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text() + "learning_rte: 0.1\n")
    proc = _recipe("--config", str(bad), "--output_dir", out)
    assert proc.returncode != 0 and "Unknown option(s) ['learning_rte']" in proc.stderr
    proc = _recipe("--config", str(SMOKE), "--output_dir", out, "--scores", "vog")
    assert proc.returncode != 0 and "Unknown score(s) ['vog']" in proc.stderr and "vog_class" in proc.stderr
    proc = _recipe("--help")
    assert proc.returncode == 0 and "--keep_fractions" in proc.stdout and "--dense_eval_steps" in proc.stdout
    assert "--scored_dataset" in proc.stdout and "45% pruned" in proc.stdout
    assert not (tmp_path / "out" / "scoring").exists()


def test_special_values_resolve(shared_dir, minilm_path):
    assert Path(tc.resolve_special("shared:snli", "data")) == shared_dir / "data" / "snli"
    assert Path(tc.resolve_special("packaged:minilm", "model")) == minilm_path
    assert tc.resolve_special("some/hub-id", "model") == "some/hub-id"
    with pytest.raises(ValueError, match="available: packaged:minilm"):
        tc.resolve_special("packaged:gpt5", "model")


def test_every_profile_uses_known_scores_and_strategies():
    import yaml

    from hf_influence.selection import list_strategies

    for profile in sorted((REPO / "recipes" / "configs").glob("snli_*.yaml")):
        values = yaml.safe_load(profile.read_text())
        plan = ScoringPlan(**{k: v for k, v in values.items() if k in ScoringPlan.__dataclass_fields__})
        for item in values.get("selections", []):
            score, strategy = item.split(":")[:2]
            assert score in plan.scores and strategy in list_strategies(), (profile.name, item)
        assert all(0 < f <= 1 for f in values.get("keep_fractions", [0.5])), profile.name
        assert all(s in SCORES for s in plan.scores), profile.name


def test_every_profile_parses_through_the_recipe(tmp_path, monkeypatch):
    """Each profile read by the recipe's own parser: no unknown key (a mangled YAML line fails here, not hours into a
    background grid), and the YAML values arrive."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("snli_prune_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, recipe)  # dataclasses look their module up while being built
    spec.loader.exec_module(recipe)
    for profile in sorted((REPO / "recipes" / "configs").glob("snli_*.yaml")):
        values = yaml.safe_load(profile.read_text())
        cpu = [a for flag in ("bf16", "fp16") if values.get(flag) for a in (f"--{flag}", "false")]  # GPU profiles
        model_args, data_args, plan, prune_args, config = recipe.parse_args(
            ["--config", str(profile), "--output_dir", str(tmp_path / profile.stem), *cpu])
        for key, value in values.items():
            parsed = [getattr(a, key) for a in (model_args, data_args, plan, prune_args, config) if hasattr(a, key)]
            assert parsed, (profile.name, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert parsed[0] == pytest.approx(value), (profile.name, key)


def test_dataset_missing_columns(tmp_path):
    data = tmp_path / "nli"
    data.mkdir()
    rows = [{"sentence1": "A man sleeps.", "sentence2": "A person rests.", "label": 0}] * 3
    _write_jsonl(data / "train.jsonl", rows)
    _write_jsonl(data / "validation.jsonl", rows)
    raw = tc.load_raw_splits(tc.DataArguments(dataset_name=str(data)))
    with pytest.raises(ValueError, match=r"has no column\(s\) \['hypothesis', 'premise'\].*--premise_column <column>"):
        tc.validate_columns(raw, tc.DataArguments(dataset_name=str(data)))
    # naming the columns makes the same folder valid as far as the columns go
    tc.validate_columns(raw, tc.DataArguments(premise_column="sentence1", hypothesis_column="sentence2"))


def test_dataset_folder_without_validation(tmp_path):
    data = tmp_path / "nli"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", [{"premise": "a", "hypothesis": "b", "label": 1}])
    with pytest.raises(FileNotFoundError, match=r"has no validation file \(found: train.jsonl\)"):
        tc.load_raw_splits(tc.DataArguments(dataset_name=str(data)))


def test_hub_id_without_network_says_to_pass_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"pass a local folder.*--dataset_name ../shared/data/snli"):
        tc.load_raw_splits(tc.DataArguments(dataset_name="no-such-user/no-such-snli-copy"))


def test_model_without_sequence_classification_head(tmp_path):
    from transformers import ViTConfig

    folder = tmp_path / "vit"
    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"is a 'vit' model, which cannot do sequence classification.*minilm"):
        tc.load_model_config(tc.ModelArguments(model_name_or_path=str(folder)))


# ---------------------------------------------------------------------------------------------------------------------
# Data preparation against hand-built expectations
# ---------------------------------------------------------------------------------------------------------------------


def test_prepare_splits_ids_before_filtering_and_subsetting(tmp_path):
    data = tmp_path / "nli"
    data.mkdir()
    labels = [0, -1, 2, 1, -1, 0, 2, 1, 1, 0, -1]
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": y} for i, y in enumerate(labels)]
    _write_jsonl(data / "train.jsonl", rows)
    _write_jsonl(data / "dev.jsonl", rows[:4])
    args = tc.DataArguments(dataset_name=str(data), max_train_samples=5, max_eval_samples=10, subset_seed=3)
    splits = tc.prepare_splits(tc.load_raw_splits(args), args, num_labels=3)
    train = splits["train"]
    labelled = [i for i, y in enumerate(labels) if y != -1]
    assert len(train) == 5 and set(train["example_id"]) <= set(labelled)
    assert train["example_id"] == sorted(train["example_id"])  # original order kept
    for row in train:  # ids name rows of the ORIGINAL file, so the text matches the id
        assert row["premise"] == f"p{row['example_id']}" and row["label"] == labels[row["example_id"]]
    assert splits["validation"]["example_id"] == [0, 2, 3]  # dev.jsonl is the validation split; -1 dropped
    assert "test" not in splits



def test_head_learning_rate_groups(tiny_bert_classifier):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", learning_rate=1e-4, weight_decay=0.01)
    assert tc.make_optimizer(tiny_bert_classifier, args, None) is None  # the Trainer's default optimizer
    optimizer = tc.make_optimizer(tiny_bert_classifier, args, 1e-3)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(tiny_bert_classifier.named_parameters())
    assert len(lr_of) == len(named)  # every parameter exactly once
    for name, param in named.items():
        assert lr_of[id(param)] == (1e-3 if name.startswith("classifier.") else 1e-4), name
        no_decay = name.endswith("bias") or "LayerNorm" in name
        assert decay_of[id(param)] == (0.0 if no_decay else 0.01), name


def test_mlp_head_option(tmp_path, minilm_path):
    """--head_hidden_size: the packaged encoder under the paper's MLP head, the head on the head learning rate,
    TracIn's 'last_layer' found in the nested encoder config; a bad head option fails at parse time."""
    import torch
    from transformers import AutoModel, TrainingArguments

    from hf_influence.mlp_head import MLPHeadForSequenceClassification

    model_args = tc.ModelArguments(model_name_or_path="packaged:minilm", head_hidden_size=16)
    name, config = tc.load_model_config(model_args)
    assert tc.encoder_config(config).num_hidden_layers == 6 and config.id2label[0] == "entailment"
    model = tc.load_model(name, config, tc.load_tokenizer(model_args, name), seed=0)
    assert isinstance(model, MLPHeadForSequenceClassification)
    assert [tuple(m.weight.shape) for m in model.head if isinstance(m, torch.nn.Linear)] == [(16, 384), (16, 16),
                                                                                            (3, 16)]
    pretrained = AutoModel.from_pretrained(minilm_path)
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, pretrained.embeddings.word_embeddings.weight)
    optimizer = tc.make_optimizer(model, TrainingArguments(output_dir="unused", learning_rate=1e-4), 1e-3)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for param_name, param in model.named_parameters():
        assert lr_of[id(param)] == (1e-3 if param_name.startswith("head.") else 1e-4), param_name
    with pytest.raises(ValueError, match="Unknown pooling 'max'"):
        tc.ModelArguments(head_hidden_size=16, head_pooling="max")



# ---------------------------------------------------------------------------------------------------------------------
# The smoke profile end to end, through the command line
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_profile_end_to_end_and_resume(tmp_path, minilm_path):
    import pandas as pd
    import yaml
    from datasets import load_dataset

    from hf_influence.polarity import get_polarity

    out = tmp_path / "smoke"
    # TracIn on its own checkpoints every step (the paper's every-500-iterations protocol, scaled down), and a
    # quarter of the training labels corrupted (the paper's noise experiment)
    proc = _recipe("--config", str(SMOKE), "--output_dir", str(out), "--tracin_checkpoint_every", "1",
                   "--label_noise", "0.25")
    assert proc.returncode == 0, proc.stderr[-4000:]
    profile = yaml.safe_load(SMOKE.read_text())
    scores, grid = profile["scores"], profile["selections"]
    fractions, seeds = profile["keep_fractions"], profile["finetune_seeds"]

    # results.csv: one row per selection/fraction/seed, plus random at each fraction and the full reference
    frame = pd.read_csv(out / "results.csv")
    expected = {("full", 1.0, s) for s in seeds} | {("random", f, s) for f in fractions for s in seeds}
    expected |= {(sel, f, s) for sel in grid for f in fractions for s in seeds}
    assert {(r.selection, r.keep, r.seed) for r in frame.itertuples()} == expected and len(frame) == len(expected)
    n_train, n_eval = profile["max_train_samples"], profile["max_eval_samples"]
    for row in frame.itertuples():
        assert 0.0 <= row.eval_accuracy <= 1.0 and 0.0 <= row.test_accuracy <= 1.0
        assert row.num_train == (n_train if row.selection == "full" else math.floor(row.keep * n_train))
        assert sum(json.loads(row.label_counts).values()) == row.num_train
    # accuracies are the share of correct predictions on max_eval_samples pairs: multiples of 1/n
    assert np.allclose(frame["eval_accuracy"] * n_eval, np.round(frame["eval_accuracy"] * n_eval))
    payload = json.loads((out / "results.json").read_text())
    assert len(payload["runs"]) == len(frame) and payload["config"]["scoring"]["scores"] == scores
    assert {(r["selection"], r["keep"]) for r in payload["summary"]} == {(s, f) for s, f, _ in expected}
    for name in ("summary.md", "summary.csv", "train.log", "experiment.json"):
        assert (out / name).is_file(), name
    assert (out / "accuracy_vs_fraction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| selection | kept |" in proc.stdout and "paired t-test" in proc.stdout

    # the scored training split loads with its score columns, their polarity and its card
    scored = load_dataset(str(out / "scored_dataset"))["train"]
    assert {"premise", "hypothesis", "label", "example_id", *scores} <= set(scored.column_names)
    assert len(scored) == n_train and len(set(scored["example_id"])) == n_train
    assert get_polarity(scored, "aum") == "higher_is_easier" and get_polarity(scored, "el2n") == "higher_is_harder"
    assert get_polarity(scored, "vog_class") == "higher_is_harder"  # inherited by the z-scored column
    for score in scores:
        assert np.isfinite(np.asarray(scored[score], dtype=np.float64)).any(), score
    # label noise: floor(0.25 n) labels redrawn uniformly (some land on the original), recorded per row
    noisy = np.asarray(scored["is_noisy"])
    assert 0 < noisy.sum() <= math.floor(0.25 * n_train)
    assert (noisy == (np.asarray(scored["label"]) != np.asarray(scored["original_label"]))).all()
    assert np.allclose(frame.loc[frame["selection"] == "full", "noisy_kept"], noisy.mean())
    # ... and each score's 5% hardest pairs (by its polarity): their corrupted share, recomputed here
    rows = {row["score"]: row for row in payload["noise_in_hardest"]}
    assert set(rows) == {s for s in scores if get_polarity(scored, s) is not None}  # those with a hard/easy reading
    for score in scores:
        if score not in rows:
            continue
        hardness = np.asarray(scored[score], dtype=np.float64)
        if get_polarity(scored, score) == "higher_is_easier":
            hardness = -hardness
        valid = np.flatnonzero(~np.isnan(hardness))
        top = max(1, math.floor(0.05 * len(valid)))
        hardest = valid[np.argsort(hardness[valid], kind="stable")[len(valid) - top:]]  # ties: the later rows
        row = rows[score]
        assert (row["flagged"], row["noisy"]) == (top, int(noisy[hardest].sum())), score
        assert row["share"] == pytest.approx(noisy[hardest].mean()) and row["ci_low"] <= row["share"] <= row["ci_high"]
        assert row["chance"] == pytest.approx(noisy[valid].mean()), score
        assert 0.0 < row["p_value"] <= 1.0
    provenance = json.loads((out / "scored_dataset" / "hf_influence.json").read_text())
    assert set(scores) <= {e["column"] for e in provenance["scores"]}
    from transformers import AutoTokenizer

    empty = AutoTokenizer.from_pretrained(str(minilm_path))([""], [""])
    (tracin,) = [e for e in provenance["scores"] if e["column"] == "tracin"]
    assert [Path(c).name for c in tracin["config"]["checkpoints"]] == [
        f"checkpoint-{i + 1}" for i in range(profile["num_score_checkpoints"])]
    (vog,) = [e for e in provenance["scores"] if e["column"] == "vog_class"]
    assert [Path(c).name for c in vog["config"]["checkpoints"]] == ["checkpoint-1", "checkpoint-3", "checkpoint-4"]
    (pvi,) = [e for e in provenance["scores"] if e["column"] == "pvi"]
    assert pvi["config"]["null_input_ids"] == empty["input_ids"][0]

    # the best pruned model (by validation accuracy among the selections) is a classifier with a model card
    best = out / "best_pruned_model"
    assert (best / "README.md").is_file() and (best / "config.json").is_file()
    pruned = frame[~frame["selection"].isin(["full", "random"])]
    assert json.loads((best / "best_run.json").read_text())["row"]["eval_accuracy"] == pruned["eval_accuracy"].max()
    timing = json.loads((out / "timing.json").read_text())
    assert {"data", "scoring", "finetune", "report"} <= set(timing["phases"])

    # the same command again: the scored split is reused and no run is repeated
    before = (out / "results.csv").read_text()
    again = _recipe("--config", str(SMOKE), "--output_dir", str(out), "--tracin_checkpoint_every", "1",
                    "--label_noise", "0.25")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "results.csv").read_text() == before
    assert json.loads((out / "timing.json").read_text())["phases"]["scoring"] < 30


@pytest.mark.slow
def test_grad_cosine_holds_out_its_target_pairs(tmp_path):
    """--scores grad_cosine: the first --target_samples validation pairs are the target; the column is the mean over
    them of the gradient cosine summed over the trajectory checkpoints (numpy on the written features), it has no
    hard/easy polarity, and 'highest' keeps the most similar pairs."""
    from datasets import load_dataset

    from hf_influence.grads import load_projected_gradients
    from hf_influence.polarity import get_polarity
    from hf_influence.selection import select_by_score

    out = tmp_path / "cosine"
    proc = _recipe("--config", str(SMOKE), "--output_dir", str(out), "--scores", "grad_cosine", "--selections",
                   "grad_cosine:highest", "--target_samples", "6", "--similarity_projection", "4",
                   "--include_random", "false", "--include_full", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = load_dataset(str(out / "scored_dataset"))["train"]
    features = out / "scoring" / "gradient_features"
    train_dirs, target_dirs = sorted(features.glob("train_*")), sorted(features.glob("target_*"))
    assert len(train_dirs) == len(target_dirs) == 3  # --num_score_checkpoints 3 in the smoke profile
    data_args = tc.DataArguments(dataset_name="shared:snli", max_train_samples=32, max_eval_samples=24)
    splits = tc.prepare_splits(tc.load_raw_splits(data_args), data_args, 3)
    assert load_projected_gradients(target_dirs[0])[1].tolist() == splits["validation"]["example_id"][:6]
    total = 0.0
    for train_dir, target_dir in zip(train_dirs, target_dirs):
        g, train_ids, _ = load_projected_gradients(train_dir)
        q = load_projected_gradients(target_dir)[0].astype(np.float64)
        g = g.astype(np.float64)
        total = total + (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (q / np.linalg.norm(q, axis=1,
                                                                                             keepdims=True)).T
    expected = dict(zip(train_ids.tolist(), total.mean(axis=1)))
    np.testing.assert_allclose(scored["grad_cosine"], [expected[i] for i in scored["example_id"]], rtol=1e-4,
                               atol=1e-6)
    assert get_polarity(scored, "grad_cosine") is None
    (row,) = json.loads((out / "results.json").read_text())["runs"]
    assert row["selection"] == "grad_cosine:highest" and row["num_train"] == 16
    chosen = select_by_score(scored, "grad_cosine", 0.5, "highest")  # the grid's own call: the 16 most similar
    assert sorted(chosen["grad_cosine"]) == sorted(scored["grad_cosine"])[-16:]
    bad = _recipe("--config", str(SMOKE), "--output_dir", str(tmp_path / "bad"), "--scores", "grad_cosine",
                  "--selections", "grad_cosine:highest", "--target_samples", "24")
    assert bad.returncode != 0 and "--target_samples 24 leaves no validation pair" in bad.stderr


@pytest.mark.slow
def test_grand_at_initialization(tmp_path):
    """--grand_at_initialization scores GraNd on the pretrained encoder with each scoring seed's fresh head (equal to
    GraNdScorer on those very models), without any trained checkpoint, and the card says so."""
    import torch
    from datasets import load_dataset
    from scipy.stats import spearmanr

    from hf_influence.scorers import GraNdScorer, InputNormScorer

    out = tmp_path / "init"
    proc = _recipe("--config", str(SMOKE), "--output_dir", str(out), "--scores", "grand", "--selections",
                   "grand:hardest", "--grand_at_initialization", "true", "--include_random", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = load_dataset(str(out / "scored_dataset"))["train"]
    assert not list((out / "scoring").glob("seed_*/checkpoint-*"))  # nothing trained was needed
    provenance = json.loads((out / "scored_dataset" / "hf_influence.json").read_text())
    (entry,) = [e for e in provenance["scores"] if e["column"] == "grand"]
    assert "at initialisation" in entry["definition"] and entry["config"]["initialization_seeds"] == [0]
    model_args = tc.ModelArguments(model_name_or_path="packaged:minilm")
    data_args = tc.DataArguments(dataset_name="shared:snli", max_seq_length=64)
    name, config = tc.load_model_config(model_args)
    tokenizer = tc.load_tokenizer(model_args, name)
    model = tc.load_model(name, config, tokenizer, seed=0, quiet=True)
    tokenized = tc.tokenize_splits({"train": scored}, tokenizer, data_args, _no_barrier)["train"]
    expected = GraNdScorer([model], tokenizer=tokenizer, column="reference")(tokenized)["reference"]
    torch.testing.assert_close(torch.tensor(scored["grand"]), torch.tensor(expected), rtol=1e-5, atol=0)
    norms = InputNormScorer(model, column="reference")(tokenized)["reference"]
    torch.testing.assert_close(torch.tensor(scored["input_norm"]), torch.tensor(norms), rtol=1e-5, atol=0)
    correlations = json.loads((out / "results.json").read_text())["grand_at_initialization_spearman"]
    assert correlations["input_norm"] == pytest.approx(spearmanr(expected, norms).statistic, abs=1e-3)


def test_grand_at_init_diagnostic_script():
    """recipes/snli_grand_at_init.py on the smoke profile: its correlations are those of the scorers' own columns."""
    from scipy.stats import spearmanr

    from hf_influence.scorers import GraNdScorer

    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "snli_grand_at_init.py"), "--config", str(SMOKE),
                           "--batch_size", "8"], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["num_pairs"] == 32 and result["seeds"] == [0]
    assert result["spearman_input_norm_length"] > 0.5  # the flattened norm grows with the length
    model_args = tc.ModelArguments(model_name_or_path="packaged:minilm")
    data_args = tc.DataArguments(dataset_name="shared:snli", max_train_samples=32, max_eval_samples=24,
                                 max_seq_length=64)
    name, config = tc.load_model_config(model_args)
    tokenizer = tc.load_tokenizer(model_args, name)
    splits = tc.prepare_splits(tc.load_raw_splits(data_args), data_args, model_args.num_labels)
    train = tc.tokenize_splits({"train": splits["train"]}, tokenizer, data_args, _no_barrier)["train"]
    grand = GraNdScorer(tc.load_model(name, config, tokenizer, 0, quiet=True), tokenizer=tokenizer)(train)["grand"]
    lengths = [len(ids) for ids in train["input_ids"]]
    assert result["spearman_grand_length"] == pytest.approx(spearmanr(grand, lengths).statistic, abs=2e-3)
