"""The ``hf-influence`` CLI end to end on a tiny JSON-lines dataset: score (vs a naive per-example forward pass),
select (vs a hand top-k), card, list, ``--config`` YAML, and clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
import yaml
from conftest import random_classification_dataset
from huggingface_hub import DatasetCard

from hf_influence.cli import main, parse_command_args


@pytest.fixture
def jsonl(tmp_path):
    ds = random_classification_dataset(n=22, num_labels=3)
    path = tmp_path / "train.jsonl"
    with path.open("w") as f:
        for i, row in enumerate(ds):
            f.write(json.dumps({"example_id": i, "input_ids": row["input_ids"], "label": row["label"]}) + "\n")
    return path


@pytest.fixture
def checkpoint(tmp_path, tiny_bert_classifier):
    path = tmp_path / "ckpt"
    tiny_bert_classifier.save_pretrained(path)
    return path


def _naive_el2n(model, rows) -> np.ndarray:
    """||softmax(logits) - onehot(y)||_2, one unpadded example at a time."""
    out = []
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            onehot = torch.nn.functional.one_hot(torch.tensor(row["label"]), logits.shape[-1]).float()
            out.append(torch.linalg.vector_norm(logits.softmax(-1) - onehot).item())
    return np.asarray(out, dtype=np.float32)


def test_score_select_card_end_to_end(tmp_path, jsonl, checkpoint, tiny_bert_classifier, capsys):
    scored_dir = tmp_path / "scored"
    rc = main(
        ["score", "--dataset", str(jsonl), "--scorer", "el2n", "--model", str(checkpoint), "--batch_size", "4"]
        + ["--output_dir", str(scored_dir), "--base_model", "tiny-bert", "--seeds", "0", "1", "--device", "cpu"]
    )
    assert rc == 0, capsys.readouterr().err
    scored = datasets.load_dataset(str(scored_dir), cache_dir=str(tmp_path / "cache"))["train"]
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert scored["example_id"] == list(range(22))
    np.testing.assert_allclose(np.asarray(scored["el2n"]), _naive_el2n(tiny_bert_classifier, rows), atol=1e-5)
    card = (scored_dir / "README.md").read_text()
    assert "| `el2n` | el2n | higher_is_harder |" in card and "- Seeds: 0, 1" in card
    assert f"| `{checkpoint}` |" in card  # the checkpoint with its fingerprint

    # select, with options from a YAML config and one overridden on the command line
    config = tmp_path / "select.yaml"
    config.write_text(
        yaml.safe_dump({"dataset": str(scored_dir), "column": "el2n", "keep": 0.9, "strategy": "hardest"})
    )
    pruned_dir = tmp_path / "pruned"
    rc = main(["select", "--config", str(config), "--keep", "5", "--output_dir", str(pruned_dir)])
    assert rc == 0, capsys.readouterr().err
    pruned = datasets.load_from_disk(str(pruned_dir))["train"]
    el2n = np.asarray(scored["el2n"])
    expected = set(np.argsort(-el2n, kind="stable")[:5].tolist())  # the 5 highest scores (no ties here)
    assert set(pruned["example_id"]) == expected
    card = (pruned_dir / "README.md").read_text()
    assert "- strategy: hardest" in card and "- num_kept: 5" in card
    assert "| `el2n` | el2n | higher_is_harder |" in card  # the score entry is carried forward
    provenance = json.loads((pruned_dir / "hf_influence.json").read_text())
    assert provenance["base_model"] == "tiny-bert" and provenance["seeds"] == [0, 1]
    assert provenance["checkpoints"][0]["ref"] == str(checkpoint)

    # card: re-render with a license into a new folder
    card_dir = tmp_path / "carded"
    rc = main(["card", "--dataset", str(pruned_dir), "--output_dir", str(card_dir), "--license", "mit"])
    assert rc == 0, capsys.readouterr().err
    rendered = DatasetCard.load(card_dir / "README.md")
    assert rendered.data.license == "mit"
    assert "- num_kept: 5" in rendered.text and "| `el2n` | el2n |" in rendered.text
    assert datasets.load_from_disk(str(card_dir))["train"]["example_id"] == pruned["example_id"]


def test_list_through_the_console_script():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    script = shutil.which("hf-influence") or os.path.join(os.path.dirname(sys.executable), "hf-influence")
    result = subprocess.run([script, "list"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "el2n" in result.stdout and "higher_is_harder" in result.stdout
    for strategy in ("hardest", "easiest", "random", "window", "ccs", "coverage", "weighted"):
        assert strategy in result.stdout


def test_argument_parsing_and_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"dataset": "d", "scorer": "loss", "model": ["a", "b"], "batch_size": 8}))
    data, score, out = parse_command_args(
        "score", ["--config", str(config), "--batch_size", "3", "--output_dir", "o", "--no_plots"]
    )
    assert data.dataset == "d" and data.split == "train"
    assert score.scorer == "loss" and score.model == ["a", "b"] and score.batch_size == 3
    assert out.output_dir == "o" and out.plots is False

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"dataset": "d", "scorerr": "loss"}))
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['scorerr'\].*'scorer'"):
        parse_command_args("score", ["--config", str(bad)])
    with pytest.raises(SystemExit):  # a required option missing: argparse usage error
        parse_command_args("select", ["--dataset", "d", "--output_dir", "o"])


def test_errors_are_clear_and_write_nothing(tmp_path, jsonl, capsys):
    out = tmp_path / "out"
    assert main(["score", "--dataset", str(jsonl), "--scorer", "nope", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Unknown scorer 'nope'" in err and "el2n" in err

    jsonl_scored = tmp_path / "s.jsonl"
    jsonl_scored.write_text(
        "".join(json.dumps({"example_id": i, "s": float(i), "label": i % 2}) + "\n" for i in range(9))
    )
    args = ["select", "--dataset", str(jsonl_scored), "--column", "s", "--keep", "0.5", "--output_dir", str(out)]
    assert main(args + ["--strategy", "best"]) == 2
    assert "best" in capsys.readouterr().err
    assert main(args + ["--strategy", "ccs", "--strategy_kwargs", "{k: 3}"]) == 2
    assert "--strategy_kwargs must be a JSON object" in capsys.readouterr().err
    assert main(args + ["--strategy", "hardest", "--column", "missing"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["select", "--dataset", str(tmp_path / "nope.jsonl")] + args[3:] + ["--strategy", "hardest"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()

    assert main(["card", "--dataset", str(jsonl_scored)]) == 2
    assert "Nothing to do" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_card_push_needs_token_or_online(tmp_path, jsonl, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: an upload would not say this
    assert main(["card", "--dataset", str(jsonl), "--push_to_hub", "me/x"]) == 2
    assert "needs a write token" in capsys.readouterr().err


def test_score_dynamics_from_a_signal_store(tmp_path, jsonl, capsys):
    import pandas as pd

    from hf_influence.store import SignalStore

    rng = np.random.default_rng(2)
    n, epochs = 22, 3
    prob = rng.random((epochs, n))
    records = pd.DataFrame(
        {
            "example_id": np.tile(np.arange(n), epochs),
            "epoch": np.repeat(np.arange(epochs), n),
            "step": np.repeat(np.arange(epochs), n) * 6,
            "loss": -np.log(prob).ravel(),
            "prob_gold": prob.ravel(),
            "margin": (prob - 0.5).ravel(),
            "correct": (prob > 0.5).ravel().astype(float),
            "el2n": (1 - prob).ravel(),
            "entropy": rng.random(epochs * n),
        }
    )
    store = SignalStore(tmp_path / "signals", metadata={"model": "tiny"})
    store.initialize()
    store.append(records)

    out = tmp_path / "dyn"
    args = ["score", "--dataset", str(jsonl), "--scorer", "dynamics", "--signals_dir", str(tmp_path / "signals")]
    args += ["--scorer_kwargs", '{"columns": ["confidence", "variability", "correctness"]}', "--output_dir", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    scored = datasets.load_from_disk(str(out))["train"]
    ids = np.asarray(scored["example_id"])
    np.testing.assert_allclose(scored["confidence"], prob.mean(axis=0)[ids], rtol=1e-6)
    np.testing.assert_allclose(scored["variability"], prob.std(axis=0)[ids], rtol=1e-5, atol=1e-7)
    card = (out / "README.md").read_text()
    for column in ("confidence", "variability", "correctness"):
        assert f"| `{column}` | {column} |" in card
    assert "(plots/data_map.png)" in card and (out / "plots" / "data_map.png").stat().st_size > 10_000


def test_score_gradient_similarity_from_feature_folders(tmp_path, jsonl, tiny_bert_classifier, capsys):
    """`hf-influence score --scorer gradient_similarity` with the feature folders in --scorer_kwargs: the column
    equals the library function's scores, joined by example id, and the card describes it."""
    from hf_influence.grads import gradient_similarity, write_projected_gradients

    train = datasets.load_dataset("json", data_files=str(jsonl), split="train")
    kwargs = {"params": "classifier|query", "k_in": 4, "k_out": 4, "seed": 0, "batch_size": 8}
    write_projected_gradients(tiny_bert_classifier, train, tmp_path / "feats_train", **kwargs)
    write_projected_gradients(tiny_bert_classifier, train.select(range(5)), tmp_path / "feats_query", **kwargs)
    out = tmp_path / "sim"
    scorer_kwargs = json.dumps({"train_features": str(tmp_path / "feats_train"),
                                "query_features": str(tmp_path / "feats_query"), "normalize": True})
    assert main(["score", "--dataset", str(jsonl), "--scorer", "gradient_similarity", "--scorer_kwargs",
                 scorer_kwargs, "--output_dir", str(out)]) == 0, capsys.readouterr().err
    scored = datasets.load_from_disk(str(out))["train"]
    expected = gradient_similarity(tmp_path / "feats_train", tmp_path / "feats_query", normalize=True)
    np.testing.assert_allclose(scored["gradient_similarity"], expected.loc[scored["example_id"]], rtol=1e-5)
    assert "cos(g_i^c, q_j^c)" in (out / "README.md").read_text()
