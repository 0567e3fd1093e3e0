"""The SNLI pruning recipe (recipes/snli_prune.py): bad input fails fast with clear errors, and the smoke profile runs
end to end and writes every promised output."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "snli_prune.py"
SMOKE = REPO / "recipes" / "configs" / "snli_smoke.yaml"


def _recipe():
    spec = importlib.util.spec_from_file_location("snli_prune", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("snli_prune", module)
    spec.loader.exec_module(module)
    return module


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _no_barrier(desc=""):
    """A stand-in for accelerate's main_process_first (one process)."""
    import contextlib

    return contextlib.nullcontext()


def _run_main(recipe, tmp_path, *extra):
    return recipe.main(["--config", str(SMOKE), "--output_dir", str(tmp_path / "out"), *extra])


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: each error names the problem and the fix, and comes before any model weights are loaded
# ---------------------------------------------------------------------------------------------------------------------


def test_unknown_score_lists_valid_ones(tmp_path):
    recipe = _recipe()
    begin = time.perf_counter()
    with pytest.raises(ValueError, match=r"Unknown score\(s\) \['el3n'\]; valid scores are: el2n, grand") as err:
        _run_main(recipe, tmp_path, "--scores", "el2n", "el3n")
    assert "vog_class" in str(err.value) and "forgetting" in str(err.value)
    assert time.perf_counter() - begin < 10
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.2", "nan"])
def test_fraction_outside_unit_interval(tmp_path, fraction):
    recipe = _recipe()
    with pytest.raises(ValueError, match=r"--keep_fractions must lie in \(0, 1\].*For 45% pruned pass 0.55"):
        _run_main(recipe, tmp_path, "--keep_fractions", "0.5", fraction)


def test_grad_cosine_option_errors(tmp_path):
    recipe = _recipe()
    with pytest.raises(ValueError, match=r"--similarity_reduce must be one of mean, max, got 'sum'"):
        _run_main(recipe, tmp_path, "--similarity_reduce", "sum")
    with pytest.raises(ValueError, match=r"--target_samples and --similarity_projection must be positive"):
        _run_main(recipe, tmp_path, "--target_samples", "0")
    assert not (tmp_path / "out").exists()


def test_unknown_strategy_and_bad_selection(tmp_path):
    recipe = _recipe()
    with pytest.raises(ValueError, match=r"Unknown strategy 'toughest'.*valid: hardest, easiest, random"):
        _run_main(recipe, tmp_path, "--selections", "el2n:toughest")
    with pytest.raises(ValueError, match=r"expected 'score:strategy'"):
        _run_main(recipe, tmp_path, "--selections", "el2n")


def test_inconsistent_scoring_options(tmp_path):
    recipe = _recipe()
    with pytest.raises(ValueError, match=r"--el2n_epoch 3 is after the end of the scoring runs \(1 epochs\)"):
        _run_main(recipe, tmp_path, "--el2n_epoch", "3")
    with pytest.raises(ValueError, match=r"--push_to_hub needs --hub_repo_id"):
        _run_main(recipe, tmp_path, "--push_to_hub", "true")
    with pytest.raises(ValueError, match=r"--num_score_checkpoints must be at least 2"):
        _run_main(recipe, tmp_path, "--num_score_checkpoints", "1")
    with pytest.raises(ValueError, match=r"--pvi_epoch 2 is after the end of the scoring runs \(1 epochs\)"):
        _run_main(recipe, tmp_path, "--pvi_epoch", "2")
    with pytest.raises(ValueError, match=r"--pvi_epoch is 1-based"):
        _run_main(recipe, tmp_path, "--pvi_epoch", "0")
    assert not (tmp_path / "out" / "scoring").exists()


def test_unknown_yaml_key(tmp_path):
    recipe = _recipe()
    config = tmp_path / "bad.yaml"
    config.write_text(SMOKE.read_text() + "learning_rte: 0.1\n")
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['learning_rte'\]"):
        recipe.main(["--config", str(config), "--output_dir", str(tmp_path / "out")])


def test_dataset_missing_columns(tmp_path):
    recipe = _recipe()
    data = tmp_path / "nli"
    data.mkdir()
    rows = [{"sentence1": "A man sleeps.", "sentence2": "A person rests.", "label": 0}] * 3
    _write_jsonl(data / "train.jsonl", rows)
    _write_jsonl(data / "validation.jsonl", rows)
    begin = time.perf_counter()
    with pytest.raises(ValueError, match=r"has no column\(s\) \['hypothesis', 'premise'\].*--premise_column <column>"):
        _run_main(recipe, tmp_path, "--dataset_name", str(data))
    assert time.perf_counter() - begin < 20
    # naming the columns makes the same folder valid as far as the columns go
    raw = recipe.load_raw_splits(recipe.DataArguments(dataset_name=str(data)))
    recipe.validate_columns(raw, recipe.DataArguments(premise_column="sentence1", hypothesis_column="sentence2"))


def test_dataset_folder_without_validation(tmp_path):
    recipe = _recipe()
    data = tmp_path / "nli"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", [{"premise": "a", "hypothesis": "b", "label": 1}])
    with pytest.raises(FileNotFoundError, match=r"has no validation file \(found: train.jsonl\)"):
        _run_main(recipe, tmp_path, "--dataset_name", str(data))


def test_hub_id_without_network_says_to_pass_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = _recipe()
    with pytest.raises(RuntimeError, match=r"pass a local folder.*--dataset_name ../shared/data/snli"):
        recipe.load_raw_splits(recipe.DataArguments(dataset_name="no-such-user/no-such-snli-copy"))


def test_model_without_sequence_classification_head(tmp_path):
    from transformers import ViTConfig

    recipe = _recipe()
    folder = tmp_path / "vit"
    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(folder)
    begin = time.perf_counter()
    with pytest.raises(ValueError, match=r"is a 'vit' model, which cannot do sequence classification.*minilm"):
        _run_main(recipe, tmp_path, "--model_name_or_path", str(folder))
    assert time.perf_counter() - begin < 10


def test_cli_error_exits_nonzero_with_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(RECIPE), "--config", str(SMOKE), "--output_dir", str(tmp_path / "o"), "--scores", "vog"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert proc.returncode != 0
    assert "Unknown score(s) ['vog']" in proc.stderr and "vog_class" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Data preparation against hand-built expectations
# ---------------------------------------------------------------------------------------------------------------------


def test_prepare_splits_ids_before_filtering_and_subsetting(tmp_path):
    recipe = _recipe()
    data = tmp_path / "nli"
    data.mkdir()
    labels = [0, -1, 2, 1, -1, 0, 2, 1, 1, 0, -1]
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": y} for i, y in enumerate(labels)]
    _write_jsonl(data / "train.jsonl", rows)
    _write_jsonl(data / "dev.jsonl", rows[:4])
    args = recipe.DataArguments(dataset_name=str(data), max_train_samples=5, max_eval_samples=10, subset_seed=3)
    splits = recipe.prepare_splits(recipe.load_raw_splits(args), args, num_labels=3)
    train = splits["train"]
    labelled = [i for i, y in enumerate(labels) if y != -1]
    assert len(train) == 5 and set(train["example_id"]) <= set(labelled)
    assert train["example_id"] == sorted(train["example_id"])  # original order kept
    for row in train:  # ids name rows of the ORIGINAL file, so the text matches the id
        assert row["premise"] == f"p{row['example_id']}" and row["label"] == labels[row["example_id"]]
    assert splits["validation"]["example_id"] == [0, 2, 3]  # dev.jsonl is the validation split; -1 dropped
    assert "test" not in splits


# ---------------------------------------------------------------------------------------------------------------------
# Arguments, YAML profiles, optimizer groups, summary table
# ---------------------------------------------------------------------------------------------------------------------


def test_flags_override_yaml_and_help_renders(tmp_path):
    import yaml

    recipe = _recipe()
    model_args, data_args, prune_args, training_args = recipe.parse_args(
        ["--config", str(SMOKE), "--output_dir", str(tmp_path), "--keep_fractions", "0.3", "0.6", "--learning_rate",
         "3e-5"]
    )
    profile = yaml.safe_load(SMOKE.read_text())
    assert prune_args.keep_fractions == [0.3, 0.6] and training_args.learning_rate == 3e-5  # the flags win
    assert data_args.max_train_samples == profile["max_train_samples"]  # the rest comes from the YAML file
    assert prune_args.scores == profile["scores"] and training_args.dense_eval_steps == profile["dense_eval_steps"]
    assert model_args.model_name_or_path == "packaged:minilm"
    help_text = recipe.build_parser().format_help()
    assert "--keep_fractions" in help_text and "45% pruned" in help_text and "--dense_eval_steps" in help_text


@pytest.mark.parametrize("profile", sorted((REPO / "recipes" / "configs").glob("snli_*.yaml")), ids=lambda p: p.name)
def test_every_profile_parses(tmp_path, profile):
    recipe = _recipe()
    # --use_cpu: GPU profiles (bf16) are refused by TrainingArguments on a machine without a GPU
    _, _, prune_args, training_args = recipe.parse_args(
        ["--config", str(profile), "--output_dir", str(tmp_path), "--use_cpu", "true"]
    )
    assert prune_args.selection_grid() and all(0 < f <= 1 for f in prune_args.keep_fractions)
    assert training_args.output_dir == str(tmp_path)


def test_special_values_resolve(shared_dir, minilm_path):
    recipe = _recipe()
    assert Path(recipe.resolve_special("shared:snli", "data")) == shared_dir / "data" / "snli"
    assert Path(recipe.resolve_special("packaged:minilm", "model")) == minilm_path
    assert recipe.resolve_special("some/hub-id", "model") == "some/hub-id"
    with pytest.raises(ValueError, match="available: packaged:minilm"):
        recipe.resolve_special("packaged:gpt5", "model")


def test_head_learning_rate_groups(tiny_bert_classifier):
    from transformers import TrainingArguments

    recipe = _recipe()
    args = TrainingArguments(output_dir="unused", learning_rate=1e-4, weight_decay=0.01)
    assert recipe.make_optimizer(tiny_bert_classifier, args, None) is None  # the Trainer's default optimizer
    optimizer = recipe.make_optimizer(tiny_bert_classifier, args, 1e-3)
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

    recipe = _recipe()
    model_args, *_ = recipe.parse_args(["--config", str(SMOKE), "--output_dir", str(tmp_path), "--head_hidden_size",
                                        "16"])
    name, config = recipe.load_model_config(model_args)
    assert recipe.encoder_config(config).num_hidden_layers == 6 and config.id2label[0] == "entailment"
    model = recipe.load_model(name, config, recipe.load_tokenizer(model_args, name), seed=0)
    assert isinstance(model, MLPHeadForSequenceClassification)
    assert [tuple(m.weight.shape) for m in model.head if isinstance(m, torch.nn.Linear)] == [(16, 384), (16, 16),
                                                                                            (3, 16)]
    pretrained = AutoModel.from_pretrained(minilm_path)
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, pretrained.embeddings.word_embeddings.weight)
    optimizer = recipe.make_optimizer(model, TrainingArguments(output_dir="unused", learning_rate=1e-4), 1e-3)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for param_name, param in model.named_parameters():
        assert lr_of[id(param)] == (1e-3 if param_name.startswith("head.") else 1e-4), param_name
    with pytest.raises(ValueError, match="Unknown pooling 'max'"):
        recipe.parse_args(["--config", str(SMOKE), "--output_dir", str(tmp_path), "--head_hidden_size", "16",
                           "--head_pooling", "max"])


def test_tracin_checkpoints_beyond_the_run_fail_before_training(tmp_path):
    """10 TracIn checkpoints every 500 steps need 5,000 steps; the 4-step smoke run stops at train begin."""
    recipe = _recipe()
    with pytest.raises(ValueError, match=r"fewer than the last TracIn checkpoint \(1500 = --num_score_checkpoints"):
        _run_main(recipe, tmp_path, "--scores", "tracin", "--selections", "tracin:hardest",
                  "--tracin_checkpoint_every", "500")
    with pytest.raises(ValueError, match="--tracin_checkpoint_every must be a positive"):
        _run_main(recipe, tmp_path, "--tracin_checkpoint_every", "0")


def test_label_noise_options_are_checked(tmp_path):
    recipe = _recipe()
    with pytest.raises(ValueError, match=r"--label_noise is the fraction of training labels to corrupt, in \[0, 1\)"):
        _run_main(recipe, tmp_path, "--label_noise", "1.5")
    with pytest.raises(ValueError, match="--label_noise_mode must be one of random, permute"):
        _run_main(recipe, tmp_path, "--label_noise", "0.1", "--label_noise_mode", "shuffle")


@pytest.mark.slow
def test_grand_at_initialization(tmp_path):
    """--grand_at_initialization scores GraNd on the pretrained encoder with each scoring seed's fresh head (equal to
    GraNdScorer on those very models), without any trained checkpoint, and the card says so."""
    import torch
    from datasets import load_dataset

    from hf_influence.scorers import GraNdScorer

    recipe = _recipe()
    out = tmp_path / "init"
    recipe.main(["--config", str(SMOKE), "--output_dir", str(out), "--scores", "grand", "--selections",
                 "grand:hardest", "--grand_at_initialization", "true", "--include_random", "false"])
    scored = load_dataset(str(out / "scored_dataset"))["train"]
    assert not list((out / "scoring").glob("seed_*/checkpoint-*"))  # nothing trained was needed
    provenance = json.loads((out / "scored_dataset" / "hf_influence.json").read_text())
    (entry,) = [e for e in provenance["scores"] if e["column"] == "grand"]
    assert "at initialisation" in entry["definition"] and entry["config"]["initialization_seeds"] == [0]
    model_args, data_args, prune_args, _ = recipe.parse_args(["--config", str(SMOKE), "--output_dir", str(out)])
    name, config = recipe.load_model_config(model_args)
    tokenizer = recipe.load_tokenizer(model_args, name)
    model = recipe.load_model(name, config, tokenizer, seed=0, quiet=True)
    tokenized = recipe.tokenize_splits({"train": scored}, tokenizer, data_args, _no_barrier)["train"]
    expected = GraNdScorer([model], tokenizer=tokenizer, column="reference")(tokenized)["reference"]
    torch.testing.assert_close(torch.tensor(scored["grand"]), torch.tensor(expected), rtol=1e-5, atol=0)
    # Kirsch's input-norm baseline next to it, and its rank correlation with GraNd in results.json
    from scipy.stats import spearmanr

    from hf_influence.scorers import InputNormScorer

    norms = InputNormScorer(model, column="reference")(tokenized)["reference"]
    torch.testing.assert_close(torch.tensor(scored["input_norm"]), torch.tensor(norms), rtol=1e-5, atol=0)
    correlations = json.loads((out / "results.json").read_text())["grand_at_initialization_spearman"]
    assert correlations["input_norm"] == pytest.approx(spearmanr(expected, norms).statistic, abs=1e-3)
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    assert correlations["num_tokens"] == pytest.approx(spearmanr(expected, lengths).statistic, abs=1e-3)


def test_summary_against_hand_computation():
    recipe = _recipe()
    rows = []
    for seed, (full, rnd, el2n) in enumerate([(0.80, 0.70, 0.74), (0.82, 0.72, 0.70), (0.84, 0.71, 0.75)]):
        common = {"seed": seed, "train_seconds": 1.0, "label_counts": "[1, 1, 1]"}
        rows.append({"score": "full", "strategy": "none", "keep_fraction": 1.0, "pruned_fraction": 0.0,
                     "num_train": 100, "eval_accuracy": full, "test_accuracy": full, **common})
        rows.append({"score": "random", "strategy": "random", "keep_fraction": 0.5, "pruned_fraction": 0.5,
                     "num_train": 50, "eval_accuracy": rnd, "test_accuracy": rnd, **common})
        rows.append({"score": "el2n", "strategy": "hardest", "keep_fraction": 0.5, "pruned_fraction": 0.5,
                     "num_train": 50, "eval_accuracy": el2n, "test_accuracy": el2n, **common})
    summary = recipe.summarize(rows).set_index("score")
    assert summary.loc["el2n", "runs"] == 3
    assert math.isclose(summary.loc["el2n", "test_mean"], (0.74 + 0.70 + 0.75) / 3)
    mean = (0.74 + 0.70 + 0.75) / 3
    sample_std = math.sqrt(sum((x - mean) ** 2 for x in (0.74, 0.70, 0.75)) / 2)
    assert math.isclose(summary.loc["el2n", "test_std"], sample_std)
    assert math.isclose(summary.loc["el2n", "test_vs_random"], mean - (0.70 + 0.72 + 0.71) / 3)
    assert math.isnan(summary.loc["random", "test_vs_random"]) and math.isnan(summary.loc["full", "test_vs_random"])
    table = recipe.format_table(recipe.summarize(rows))
    assert "el2n" in table.splitlines()[-1] and f"{100 * (mean - 0.71):+.2f}" in table


# ---------------------------------------------------------------------------------------------------------------------
# The smoke profile end to end
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_profile_end_to_end(tmp_path, minilm_path):
    import pandas as pd
    import yaml
    from datasets import load_dataset

    out = tmp_path / "smoke"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        # TracIn on its own checkpoints every step (the paper's every-500-iterations protocol, scaled down), and a
        # quarter of the training labels corrupted (the paper's noise experiment)
        [sys.executable, str(RECIPE), "--config", str(SMOKE), "--output_dir", str(out), "--tracin_checkpoint_every",
         "1", "--label_noise", "0.25"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    profile = yaml.safe_load(SMOKE.read_text())
    scores = profile["scores"]
    recipe = _recipe()
    grid = [tuple(s.split(":")) for s in profile.get("selections", [])] or [
        (s, recipe.SCORES[s].default_strategy) for s in scores
    ]
    fractions, seeds = profile["keep_fractions"], profile["finetune_seeds"]

    # results.csv: one row per score/strategy/fraction/seed, plus random at each fraction and the full reference
    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns) == list(recipe.RESULT_COLUMNS)
    expected = {("full", "none", 1.0, s) for s in seeds}
    expected |= {("random", "random", f, s) for f in fractions for s in seeds}
    expected |= {(score, strategy, f, s) for score, strategy in grid for f in fractions for s in seeds}
    got = {(r.score, r.strategy, r.keep_fraction, r.seed) for r in frame.itertuples()}
    assert got == expected and len(frame) == len(expected)
    n_train = profile["max_train_samples"]
    for row in frame.itertuples():
        assert 0.0 <= row.eval_accuracy <= 1.0 and 0.0 <= row.test_accuracy <= 1.0
        assert row.num_train == (n_train if row.score == "full" else math.floor(row.keep_fraction * n_train))
        assert sum(json.loads(row.label_counts)) == row.num_train
        assert math.isclose(row.pruned_fraction, 1.0 - row.keep_fraction)
    # accuracies are the share of correct predictions on max_eval_samples pairs: multiples of 1/n
    n_eval = profile["max_eval_samples"]
    assert np.allclose(frame["eval_accuracy"] * n_eval, np.round(frame["eval_accuracy"] * n_eval))

    payload = json.loads((out / "results.json").read_text())
    assert len(payload["runs"]) == len(frame)
    summary_keys = {(r["score"], r["strategy"], r["keep_fraction"]) for r in payload["summary"]}
    assert summary_keys == {(s, t, f) for s, t, f, _ in expected}
    assert payload["config"]["pruning"]["scores"] == scores

    png = out / "accuracy_vs_fraction.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the scored training split loads with its score columns and card
    scored = load_dataset(str(out / "scored_dataset"))["train"]
    columns = set(scored.column_names)
    assert {"premise", "hypothesis", "label", "example_id"} <= columns
    assert set(scores) <= columns
    assert len(scored) == n_train and len(set(scored["example_id"])) == n_train
    for score in scores:
        values = np.asarray(scored[score], dtype=np.float64)
        assert np.isfinite(values).any(), score
    # label noise: floor(0.25 n) labels redrawn uniformly (some land on the original), recorded per row; every run
    # reports its kept set's corrupted share, the full data's being the dataset's
    noisy = np.asarray(scored["is_noisy"])
    assert 0 < noisy.sum() <= math.floor(0.25 * n_train)
    assert (noisy == (np.asarray(scored["label"]) != np.asarray(scored["original_label"]))).all()
    assert ((frame["noisy_kept"] >= 0) & (frame["noisy_kept"] <= 1)).all()
    assert np.allclose(frame.loc[frame["score"] == "full", "noisy_kept"], noisy.mean())
    assert "noisy %" in proc.stdout
    # ... and each score's 5% hardest pairs: their corrupted share, recomputed here from the saved columns
    shares = json.loads((out / "results.json").read_text())["noise_in_hardest_5pct"]
    assert shares["dataset"] == pytest.approx(noisy.mean())
    for score in scores:
        hardness = np.asarray(scored[score], dtype=np.float64)
        if recipe.SCORES[score].polarity != "higher_is_harder":
            hardness = -hardness
        rows = np.flatnonzero(~np.isnan(hardness))  # rows with a score
        top = max(1, math.floor(0.05 * len(rows)))
        hardest = rows[np.argsort(hardness[rows], kind="stable")[len(rows) - top:]]  # ties: the later rows, as pruning
        assert shares[score] == pytest.approx(noisy[hardest].mean()), score
    assert "Corrupted pairs among each score's 5% hardest" in proc.stdout
    card = (out / "scored_dataset" / "README.md").read_text()
    for score in scores:
        assert score in card
    provenance = json.loads((out / "scored_dataset" / "hf_influence.json").read_text())
    assert set(scores) <= {e["column"] for e in provenance["scores"]}
    # PVI's null input is the empty pair tokenized as the training split is (batched: [CLS] [SEP] [SEP])
    from transformers import AutoTokenizer

    empty = AutoTokenizer.from_pretrained(str(minilm_path))([""], [""])
    (tracin,) = [e for e in provenance["scores"] if e["column"] == "tracin"]
    assert [Path(c).name for c in tracin["config"]["checkpoints"]] == [
        f"checkpoint-{i + 1}" for i in range(profile["num_score_checkpoints"])]
    (vog,) = [e for e in provenance["scores"] if e["column"] == "vog_class"]
    vog_steps = [Path(c).name for c in vog["config"]["checkpoints"]]
    assert vog_steps == ["checkpoint-1", "checkpoint-3", "checkpoint-4"]  # evenly spaced over the 4 steps
    (pvi,) = [e for e in provenance["scores"] if e["column"] == "pvi"]
    assert pvi["config"]["null_input_ids"] == empty["input_ids"][0]
    assert pvi["config"]["null_token_type_ids"] == empty["token_type_ids"][0]

    # the best pruned model is a loadable classifier with a model card
    best = out / "best_pruned_model"
    assert (best / "README.md").is_file() and (best / "config.json").is_file()
    best_row = frame[~frame["score"].isin(["full", "random"])].sort_values("eval_accuracy").iloc[-1]
    assert best_row["score"] in (best / "README.md").read_text()

    timing = json.loads((out / "timing.json").read_text())
    for phase in ("data", "scoring_training", "scoring_scorers", "finetune_full", "finetune_random", "report"):
        assert timing["phases"][phase] >= 0.0
    assert sum(timing["phases"].values()) <= timing["total_seconds"] + 1e-6
    assert len(timing["runs"]) == len(frame)

    # the printed summary table has one line per (score, strategy, fraction)
    assert "vs random" in proc.stdout
    for score, strategy in grid:
        assert any(line.split()[:2] == [score, strategy] for line in proc.stdout.splitlines())


@pytest.mark.slow
def test_grad_cosine_holds_out_its_target_pairs(tmp_path):
    """--scores grad_cosine: the first --target_samples validation pairs are the target; the column is the mean over
    them of the gradient cosine summed over the trajectory checkpoints (numpy on the written features), and the
    kept pairs are the most similar ones."""
    import numpy as np
    from datasets import load_dataset

    from hf_influence.grads import load_projected_gradients

    recipe = _recipe()
    out = tmp_path / "cosine"
    recipe.main(["--config", str(SMOKE), "--output_dir", str(out), "--scores", "grad_cosine", "--selections",
                 "grad_cosine:easiest", "--target_samples", "6", "--similarity_projection", "4",
                 "--include_random", "false", "--include_full", "false"])
    scored = load_dataset(str(out / "scored_dataset"))["train"]
    features = out / "scoring" / "gradient_features"
    train_dirs, target_dirs = sorted(features.glob("train_*")), sorted(features.glob("target_*"))
    assert len(train_dirs) == len(target_dirs) == 3  # --num_score_checkpoints 3 in the smoke profile
    model_args, data_args, _, _ = recipe.parse_args(["--config", str(SMOKE), "--output_dir", str(out)])
    splits = recipe.prepare_splits(recipe.load_raw_splits(data_args), data_args, model_args.num_labels)
    target_ids = load_projected_gradients(target_dirs[0])[1]
    assert target_ids.tolist() == splits["validation"]["example_id"][:6]
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
    results = json.loads((out / "results.json").read_text())
    (row,) = results["runs"]
    kept = row["num_train"]
    assert row["score"] == "grad_cosine" and row["strategy"] == "easiest" and kept == 16
    from hf_influence.selection import select_by_score  # the grid's own call: the 16 most similar pairs are kept

    chosen = select_by_score(scored, recipe.SCORES["grad_cosine"].hardness_column, 0.5, "easiest")
    assert sorted(chosen["grad_cosine"]) == sorted(scored["grad_cosine"])[-16:]
    with pytest.raises(ValueError, match="--target_samples 24 leaves no validation pair"):
        recipe.main(["--config", str(SMOKE), "--output_dir", str(tmp_path / "bad"), "--scores", "grad_cosine",
                     "--selections", "grad_cosine:easiest", "--target_samples", "24"])


def test_grand_at_init_diagnostic_script(capsys):
    """recipes/snli_grand_at_init.py on the smoke profile: its correlations are those of the scorers' own columns."""
    import importlib.util

    from scipy.stats import spearmanr

    spec = importlib.util.spec_from_file_location("snli_grand_at_init", REPO / "recipes" / "snli_grand_at_init.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = script.main(["--config", str(SMOKE), "--batch_size", "8"])
    assert result["num_pairs"] == 32 and result["seeds"] == [0]
    printed = json.loads(capsys.readouterr().out)
    assert printed["spearman_grand_input_norm"] == pytest.approx(result["spearman_grand_input_norm"], abs=1e-3)
    assert result["spearman_input_norm_length"] > 0.5  # the flattened norm grows with the length
    recipe = _recipe()
    model_args, data_args, _, _ = recipe.parse_args(["--config", str(SMOKE), "--output_dir", "unused"])
    name, config = recipe.load_model_config(model_args)
    tokenizer = recipe.load_tokenizer(model_args, name)
    splits = recipe.prepare_splits(recipe.load_raw_splits(data_args), data_args, model_args.num_labels)
    train = recipe.tokenize_splits({"train": splits["train"]}, tokenizer, data_args, _no_barrier)["train"]
    from hf_influence.scorers import GraNdScorer

    grand = GraNdScorer(recipe.load_model(name, config, tokenizer, 0, quiet=True), tokenizer=tokenizer)(train)["grand"]
    lengths = [len(ids) for ids in train["input_ids"]]
    assert result["spearman_grand_length"] == pytest.approx(spearmanr(grand, lengths).statistic, abs=1e-3)
