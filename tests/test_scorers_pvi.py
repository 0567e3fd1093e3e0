"""PVI in bits against a hand computation with explicit softmaxes; the null-input dataset helper."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import random_classification_dataset, tiny_bert_config
from datasets import Dataset

from hf_influence.scorers import PVIScorer, get_scorer, make_null_input_dataset


def _bert(seed):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config()).eval()


def _log2_probs(model, ids, token_type_ids=None):
    kwargs = {"input_ids": torch.tensor([ids])}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.tensor([token_type_ids])
    with torch.no_grad():
        return torch.log_softmax(model(**kwargs).logits[0].double(), -1) / math.log(2)


def test_pvi_hand_computation_pretokenized_two_seeds():
    ds = random_classification_dataset(n=13, num_labels=3, seed=2)
    models, nulls = [_bert(0), _bert(1)], [_bert(10), _bert(11)]
    out = PVIScorer(models, nulls, null_input_ids=[1, 2], batch_size=4)(ds)
    assert out.features["pvi"].dtype == "float32"
    for i, (ids, y) in enumerate(zip(ds["input_ids"], ds["label"])):
        per_seed = [
            float(_log2_probs(m, ids)[y] - _log2_probs(n, [1, 2])[y]) for m, n in zip(models, nulls)
        ]
        assert out["pvi"][i] == pytest.approx(np.mean(per_seed), rel=1e-4, abs=1e-5)
    # identical model and null model on identical inputs -> PVI 0
    same = ds.map(lambda r: {"input_ids": [1, 2]})
    np.testing.assert_allclose(PVIScorer(models[0], models[0], null_input_ids=[1, 2])(same)["pvi"], 0, atol=1e-5)


def test_pvi_minilm_snli_text_columns(minilm_path, shared_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [json.loads(x) for x in (shared_dir / "data" / "snli" / "train.jsonl").read_text().splitlines()[:5]]
    ds = Dataset.from_list(rows)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3).eval()
    torch.manual_seed(1)
    null = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3).eval()
    scorer = get_scorer("pvi", model=model, null_model=null, tokenizer=tok, text_columns=["premise", "hypothesis"])
    assert scorer.polarity == "higher_is_easier"
    assert scorer.null_input_ids == [tok.cls_token_id, tok.sep_token_id, tok.sep_token_id]
    out = scorer(ds)["pvi"]
    empty = {k: v[0] for k, v in tok([""], [""]).items()}  # how map(batched=True) tokenizes the null dataset
    for i, row in enumerate(rows):
        enc = tok(row["premise"], row["hypothesis"])
        expected = _log2_probs(model, enc["input_ids"], enc["token_type_ids"])[row["label"]] - _log2_probs(
            null, empty["input_ids"], empty["token_type_ids"]
        )[row["label"]]
        assert out[i] == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


def test_make_null_input_dataset_and_errors():
    ds = Dataset.from_dict({"premise": ["A dog runs.", "Rain."], "hypothesis": ["It moves.", "Wet."], "label": [0, 2]})
    null = make_null_input_dataset(ds, ["premise", "hypothesis"])
    assert list(null["premise"]) == ["", ""] and list(null["hypothesis"]) == ["", ""]
    assert list(null["label"]) == [0, 2]
    with pytest.raises(ValueError, match="not in the dataset"):
        make_null_input_dataset(ds, "text")
    with pytest.raises(ValueError, match="token columns"):
        make_null_input_dataset(ds.add_column("input_ids", [[1], [2]]), "premise")
    with pytest.raises(ValueError, match="null input"):
        PVIScorer(_bert(0), _bert(1))
    with pytest.raises(ValueError, match="null_model"):
        PVIScorer(_bert(0), None, null_input_ids=[1])
