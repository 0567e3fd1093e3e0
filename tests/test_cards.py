"""Dataset and model cards: every score column with its definition/polarity/paper, versions, selection counts,
checkpoint fingerprints, and a valid YAML header (checked against hand-built table rows and independent counts)."""

from __future__ import annotations

import collections
import json
import re

import accelerate
import datasets
import numpy as np
import peft
import pytest
import torch
import transformers
from conftest import random_classification_dataset
from huggingface_hub import DatasetCard, ModelCard

import hf_influence
from hf_influence.cards import build_provenance, render_dataset_card, render_model_card, score_entries
from hf_influence.scorers import Scorer
from hf_influence.selection import select_by_score


class LengthScorer(Scorer):
    name = "length"
    polarity = "higher_is_harder"
    definition = "number of tokens |x| in input_ids"
    paper = "hand-made test score, no paper"

    def score_batch(self, batch):
        return [len(x) for x in batch["input_ids"]]


NOISE_ENTRY = {
    "name": "noise",
    "column": "noise_score",
    "definition": "uniform random value in [0, 1)",
    "paper": "none (control)",
    "polarity": "higher_is_easier",
    "config": {"seed": 7, "nested": {"a": [1, 2]}},
}


def _scored():
    ds = random_classification_dataset(n=22, num_labels=3)
    ds = hf_influence.add_example_ids(ds)
    ds = LengthScorer(batch_size=4)(ds)
    noise = np.random.default_rng(1).random(len(ds)).astype(np.float32)
    return hf_influence.set_polarity(ds.add_column("noise_score", noise), "noise_score", "higher_is_harder")


def _table_rows(text: str, title: str) -> list[list[str]]:
    """Rows of the Markdown table that follows the line ``**title**`` (header and separator excluded)."""
    lines = text.splitlines()
    start = lines.index(f"**{title}**")
    rows = []
    for line in lines[start + 4 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_dataset_card_records_scores_versions_and_selection():
    ds = _scored()
    kept, report = select_by_score(ds, "length", 0.5, "hardest", class_balanced=True, return_report=True)
    scorer = LengthScorer(batch_size=4)
    provenance = build_provenance(
        ds, scorers=[scorer, NOISE_ENTRY], selection=report, base_model="tiny-bert", seeds=[0, 1, 2]
    )
    card = render_dataset_card(
        provenance, license="apache-2.0", task_categories=["text-classification"], tags=["snli"], pretty_name="T"
    )
    text = str(card)

    # every score column: one table row with column, name, polarity, definition (| escaped) and paper
    assert (
        "| `length` | length | higher_is_harder | number of tokens \\|x\\| in input_ids | hand-made test score, no"
        in text
    )
    assert "| `noise_score` | noise | higher_is_easier | uniform random value in [0, 1) | none (control) |" in text
    assert '"nested": {' in text and '"batch_size": 4' in text  # configs in full

    # versions, from the modules themselves
    for name, module in [
        ("torch", torch),
        ("transformers", transformers),
        ("datasets", datasets),
        ("accelerate", accelerate),
        ("peft", peft),
        ("hf_influence", hf_influence),
    ]:
        assert f"| {name} | {module.__version__} |" in text

    # selection counts per class, against a count over the data itself
    before = collections.Counter(str(v) for v in ds["label"])
    after = collections.Counter(str(v) for v in kept["label"])
    rows = _table_rows(text, "per class counts")
    assert {r[0]: (int(r[1]), int(r[2])) for r in rows} == {k: (before[k], after.get(k, 0)) for k in before}
    assert "- strategy: hardest" in text and f"- num_kept: {len(kept)}" in text
    assert "- Base model: `tiny-bert`" in text and "- Seeds: 0, 1, 2" in text

    # YAML header
    assert card.data.license == "apache-2.0"
    assert card.data.task_categories == ["text-classification"]
    assert card.data.tags[:1] == ["hf_influence"] and "snli" in card.data.tags
    assert card.data.size_categories == ["n<1K"]
    # dataset columns and their types
    assert "| `noise_score` | Value('float32') |" in text and "- Split `train`: 22 rows" in text


def test_card_strata_table_matches_report():
    ds = _scored()
    _, report = select_by_score(ds, "noise_score", 9, "ccs", k=4, return_report=True)
    text = str(render_dataset_card(build_provenance(ds, scorers=[NOISE_ENTRY], selection=report)))
    rows = _table_rows(text, "strata")
    assert [int(r[2]) for r in rows] == [s["before"] for s in report.strata]
    assert [int(r[3]) for r in rows] == [s["after"] for s in report.strata]
    assert sum(int(r[3]) for r in rows) == 9


def test_checkpoint_fingerprints_follow_the_weights(tmp_path, tiny_bert_classifier):
    first, second = tmp_path / "ckpt-a", tmp_path / "ckpt-b"
    tiny_bert_classifier.save_pretrained(first)
    with torch.no_grad():
        tiny_bert_classifier.classifier.bias.add_(1.0)
    tiny_bert_classifier.save_pretrained(second)
    provenance = build_provenance(_scored(), checkpoints=[first, second, {"ref": "hub/model", "fingerprint": "abc"}])
    entries = provenance["checkpoints"]
    assert [e["ref"] for e in entries] == [str(first), str(second), "hub/model"]
    assert all(re.fullmatch(r"[0-9a-f]{32}", e["fingerprint"]) for e in entries[:2])
    assert entries[0]["fingerprint"] != entries[1]["fingerprint"]  # changed weights, changed fingerprint
    again = build_provenance(_scored(), checkpoints=[first])["checkpoints"][0]["fingerprint"]
    assert again == entries[0]["fingerprint"]
    text = str(render_dataset_card(provenance))
    for e in entries:
        assert f"| `{e['ref']}` | `{e['fingerprint']}` |" in text
    json.dumps(provenance)  # machine-readable as is


def test_card_round_trips_through_huggingface_hub(tmp_path):
    card = render_dataset_card(build_provenance(_scored(), scorers=[NOISE_ENTRY]), license="mit")
    card.save(tmp_path / "README.md")
    loaded = DatasetCard.load(tmp_path / "README.md")
    assert loaded.data.license == "mit" and "hf_influence" in loaded.data.tags
    assert "| `noise_score` | noise |" in loaded.text


def test_score_entries_bad_input():
    bad = {k: v for k, v in NOISE_ENTRY.items() if k not in ("polarity", "paper")}
    with pytest.raises(ValueError, match=r"\['paper', 'polarity'\]"):
        score_entries([bad])
    with pytest.raises(ValueError, match="same column"):
        score_entries([NOISE_ENTRY, dict(NOISE_ENTRY)])
    with pytest.raises(TypeError, match="card_entry"):
        score_entries(["el2n"])


def test_model_card_records_results_selection_and_provenance():
    ds = _scored()
    kept, report = select_by_score(ds, "length", 10, "easiest", return_report=True)
    card = render_model_card(
        base_model="prajjwal1/bert-tiny",
        dataset="me/snli-scored",
        selection=report,
        results={"eval_accuracy": 0.87654321, "eval_loss": 0.5},
        scorers=[LengthScorer()],
        seeds=[3],
        training={"learning_rate": 2e-5, "num_train_epochs": 3},
        pipeline_tag="text-classification",
        license="apache-2.0",
    )
    text = str(card)
    assert card.data.base_model == "prajjwal1/bert-tiny"
    assert card.data.datasets == ["me/snli-scored"]
    assert card.data.pipeline_tag == "text-classification" and "hf_influence" in card.data.tags
    assert "| eval_accuracy | 0.8765 |" in text and "| eval_loss | 0.5000 |" in text
    assert "- strategy: easiest" in text and "- num_kept: 10" in text
    assert "| `length` | length | higher_is_harder |" in text
    assert "| learning_rate | 2e-05 |" in text and "Seeds: 3" in text
    assert isinstance(ModelCard(text), ModelCard)
