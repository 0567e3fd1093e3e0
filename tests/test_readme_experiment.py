"""The README's "run the experiment on your own data" example, executed as written on a tiny BERT and real SNLI pairs
(the names it leaves to the user, MODEL, train, validation, test, tokenizer and accuracy, are defined here)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Run the experiment on your own data"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_experiment_example_runs(tmp_path, monkeypatch, minilm_path):
    from conftest import tiny_bert_config
    from transformers import AutoTokenizer, BertForSequenceClassification

    from hf_influence.experiments import text_classification as tc

    code = _readme_example()
    assert len(code.strip().splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))
    model = BertForSequenceClassification(tiny_bert_config(vocab_size=tokenizer.vocab_size,
                                                           max_position_embeddings=128))
    model.save_pretrained("tiny-bert")
    model.save_pretrained("run0/checkpoint-500")  # the scoring checkpoint the example names
    data_args = tc.DataArguments(dataset_name="shared:snli", max_train_samples=24, max_eval_samples=12,
                                 max_seq_length=48)
    splits = tc.prepare_splits(tc.load_raw_splits(data_args), data_args, num_labels=3)
    tokenized = tc.tokenize_splits(splits, tokenizer, data_args, lambda desc="": __import__("contextlib")
                                   .nullcontext())
    namespace = {"MODEL": "tiny-bert", "train": tokenized["train"], "validation": tokenized["validation"],
                 "test": tokenized["test"], "tokenizer": tokenizer, "accuracy": tc.accuracy_metrics}
    exec(compile(code, "README.md", "exec"), namespace)

    rows = pd.read_csv(tmp_path / "out" / "pruning" / "results.csv")
    # 4 seeds x (full + 2 fractions x (random, class-balanced random, 2 selections))
    assert len(rows) == 4 * (1 + 2 * 4) and rows["run_id"].is_unique
    assert set(rows["selection"]) == {"full", "random", "random (class-balanced)", "el2n:easiest",
                                      "el2n:hardest (class-balanced)"}
    # "easiest" by EL2N (higher = harder) kept the floor(0.3 n) lowest EL2N: recomputed from the scored column
    import hashlib

    ids = np.asarray(namespace["train"]["example_id"])
    lowest = np.sort(ids[np.argsort(namespace["train"]["el2n"], kind="stable")[: int(0.3 * len(ids))]])
    expected = hashlib.blake2b(lowest.astype(np.int64).tobytes(), digest_size=8).hexdigest()
    easiest = rows[(rows["selection"] == "el2n:easiest") & np.isclose(rows["keep"], 0.3)]
    assert (easiest["kept_ids_hash"] == expected).all() and len(easiest) == 4
    summary = namespace["result"].summary()
    cell = summary[(summary["selection"] == "el2n:easiest") & np.isclose(summary["keep"], 0.3)].iloc[0]
    assert cell["runs"] == 4 and cell["paired_runs"] == 4 and cell["baseline"] == "random"
    assert (tmp_path / "out" / "pruning" / "summary.md").is_file()
    assert (tmp_path / "out" / "pruning" / "accuracy_vs_fraction.png").is_file()
