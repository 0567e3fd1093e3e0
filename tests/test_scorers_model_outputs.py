"""EL2N / loss / entropy / perplexity scorers against naive per-example formulas (no padding, one row at a time)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_classification_dataset, tiny_bert_config
from datasets import Dataset

from hf_influence.scorers import (
    EL2NScorer,
    EntropyScorer,
    InputNormScorer,
    LossScorer,
    PerplexityScorer,
    get_scorer,
    list_scorers,
)


def _bert(seed: int):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config()).eval()


def _naive_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].double()


def test_el2n_matches_manual_softmax_formula_averaged_over_checkpoints():
    ds = random_classification_dataset(n=22, num_labels=3)
    models = [_bert(0), _bert(1)]
    out = EL2NScorer(models, batch_size=4)(ds)
    expected = []
    for ids, y in zip(ds["input_ids"], ds["label"]):
        per_model = []
        for model in models:
            p = torch.softmax(_naive_logits(model, ids), -1)
            onehot = torch.zeros(3, dtype=torch.float64)
            onehot[y] = 1
            per_model.append(float(torch.sqrt(((p - onehot) ** 2).sum())))
        expected.append(np.mean(per_model))
    np.testing.assert_allclose(out["el2n"], expected, rtol=1e-4, atol=1e-6)
    assert out.features["el2n"].dtype == "float32"
    # a single checkpoint differs from the average (the average really mixes both)
    single = EL2NScorer(models[0], batch_size=4)(ds)["el2n"]
    assert not np.allclose(single, out["el2n"])


def test_loss_and_entropy_naive_loop_with_unlabelled_rows():
    ds = random_classification_dataset(n=10, num_labels=3, seed=3)
    labels = list(ds["label"])
    labels[4] = -1  # unlabelled (SNLI convention) -> NaN
    ds = ds.remove_columns("label").add_column("gold", labels)
    model = _bert(2)
    loss = LossScorer(model, batch_size=4, label_column="gold")(ds)["loss"]
    entropy = EntropyScorer(model, batch_size=3, label_column="gold", column="H")(ds)["H"]
    for i, (ids, y) in enumerate(zip(ds["input_ids"], labels)):
        logits = _naive_logits(model, ids)
        log_p = torch.log_softmax(logits, -1)
        assert entropy[i] == pytest.approx(float(-(log_p.exp() * log_p).sum()), rel=1e-4)
        if y < 0:
            assert math.isnan(loss[i])
        else:
            assert loss[i] == pytest.approx(float(F.cross_entropy(logits[None], torch.tensor([y]))), rel=1e-4)


def test_input_norm_matches_a_loop_over_the_embedding_rows():
    """Kirsch's input-norm baseline: sqrt(sum_t ||E[t]||^2) (or the mean token norm) over each row's own tokens,
    from the embedding matrix one row at a time, averaged over two checkpoints; padded batches of mixed lengths,
    label-free."""
    ds = random_classification_dataset(n=13, num_labels=3, seed=5)
    ds = ds.remove_columns("label").add_column("label", [-1] + list(range(12)))  # -1 and out-of-range: not read
    models = [_bert(0), _bert(1)]
    weights = [m.get_input_embeddings().weight.detach().double() for m in models]
    norm = InputNormScorer(models, batch_size=4)(ds)["input_norm"]
    mean = InputNormScorer(models, batch_size=5, reduce="mean", column="mean_norm")(ds)["mean_norm"]
    for i, ids in enumerate(ds["input_ids"]):
        rows = [w[ids].norm(dim=1) for w in weights]
        assert norm[i] == pytest.approx(np.mean([float(r.square().sum().sqrt()) for r in rows]), rel=1e-5)
        assert mean[i] == pytest.approx(np.mean([float(r.mean()) for r in rows]), rel=1e-5)
    lengths = np.array([len(ids) for ids in ds["input_ids"]])
    assert np.corrcoef(norm, lengths)[0, 1] > np.corrcoef(mean, lengths)[0, 1]  # the flattened norm grows with T
    entry = InputNormScorer(models[0], reduce="mean").card_entry()
    assert entry["config"]["reduce"] == "mean" and "mean over real tokens" in entry["definition"]
    assert "input_norm" in list_scorers()
    with pytest.raises(ValueError, match="reduce='max'; choose one of"):
        InputNormScorer(models[0], reduce="max")


def test_perplexity_causal_lm_naive(tiny_llama_lm):
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 101, (n,), generator=g).tolist() for n in (5, 2, 9, 1, 7)]
    labels = [list(r) for r in rows]
    labels[2][:4] = [-100] * 4  # prompt tokens masked
    ds = Dataset.from_dict({"input_ids": rows, "labels": labels})
    out = PerplexityScorer(tiny_llama_lm, batch_size=2)(ds)["perplexity"]
    out_nolabels = PerplexityScorer(tiny_llama_lm, batch_size=3)(ds.remove_columns("labels"))["perplexity"]
    for i, ids in enumerate(rows):
        with torch.no_grad():
            logits = tiny_llama_lm(input_ids=torch.tensor([ids])).logits[0, :-1].double()
        target = torch.tensor(labels[i][1:])
        if (target != -100).sum() == 0:
            assert math.isnan(out[i]) and math.isnan(out_nolabels[i])  # 1-token row: nothing to predict
            continue
        ce = F.cross_entropy(logits, target, ignore_index=-100)
        assert out[i] == pytest.approx(math.exp(float(ce)), rel=1e-4)
        full = F.cross_entropy(logits, torch.tensor(ids[1:]))
        assert out_nolabels[i] == pytest.approx(math.exp(float(full)), rel=1e-4)
    with pytest.raises(ValueError, match="supports task"):
        PerplexityScorer(tiny_llama_lm, task="sequence_classification")


def test_minilm_on_snli_rows_with_text_columns(minilm_path, shared_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    lines = (shared_dir / "data" / "snli" / "train.jsonl").read_text().splitlines()[:6]
    rows = [json.loads(line) for line in lines]
    ds = Dataset.from_list(rows)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3).eval()
    out = EL2NScorer(model, tokenizer=tok, text_columns=["premise", "hypothesis"], batch_size=4)(ds)["el2n"]
    for i, row in enumerate(rows):
        enc = tok(row["premise"], row["hypothesis"], return_tensors="pt")
        with torch.no_grad():
            p = torch.softmax(model(**enc).logits[0].double(), -1)
        expected = float(torch.linalg.vector_norm(p - F.one_hot(torch.tensor(row["label"]), 3)))
        assert out[i] == pytest.approx(expected, rel=1e-4)


def test_checkpoint_paths_cache_and_errors(tmp_path):
    from datasets import load_from_disk

    model = _bert(0)
    model.save_pretrained(tmp_path / "run" / "checkpoint-5")
    _bert(1).save_pretrained(tmp_path / "run" / "checkpoint-12")
    random_classification_dataset(n=9).save_to_disk(str(tmp_path / "ds"))
    ds = load_from_disk(str(tmp_path / "ds"))
    scorer = get_scorer("el2n", model=tmp_path / "run", batch_size=4)
    assert [p.name for p in scorer.checkpoints] == ["checkpoint-5", "checkpoint-12"]
    first = scorer(ds)["el2n"]
    np.testing.assert_allclose(first, EL2NScorer([model, _bert(1)])(ds)["el2n"], rtol=1e-5)
    calls = []
    again = get_scorer("el2n", model=tmp_path / "run", batch_size=4)
    again.score_batch = lambda batch: calls.append(1)  # would break if called
    assert again(ds)["el2n"] == first and not calls
    _bert(2).save_pretrained(tmp_path / "run" / "checkpoint-12")  # the checkpoint changes on disk
    changed = get_scorer("el2n", model=tmp_path / "run", batch_size=4)
    recomputed = changed(ds)["el2n"]
    np.testing.assert_allclose(recomputed, EL2NScorer([model, _bert(2)])(ds)["el2n"], rtol=1e-5)
    assert not np.allclose(recomputed, first)
    assert {"el2n", "loss", "entropy", "perplexity"} <= set(list_scorers())
    with pytest.raises(ValueError, match="label_column"):
        LossScorer(model)(ds.remove_columns("label"))
    with pytest.raises(ValueError, match="tokenizer"):
        LossScorer(model, text_columns="text")


def test_entropy_needs_no_labels():
    ds = random_classification_dataset(n=7, seed=5)
    model = _bert(0)
    with_labels = EntropyScorer(model, batch_size=3)(ds)["entropy"]
    without = EntropyScorer(model, batch_size=3)(ds.remove_columns("label"))["entropy"]
    np.testing.assert_allclose(with_labels, without)
    assert not np.isnan(without).any()


def test_num_proc_and_remove_columns_match_single_process():
    ds = random_classification_dataset(n=22, seed=4)
    model = _bert(3)
    single = EL2NScorer(model, batch_size=4)(ds)["el2n"]
    multi = EL2NScorer(model, batch_size=4, device="cpu")(ds, num_proc=2)
    np.testing.assert_allclose(multi["el2n"], single, rtol=1e-6)
    slim = EL2NScorer(model, batch_size=4)(ds, remove_columns=["input_ids"])
    assert slim.column_names == ["label", "el2n"]
    np.testing.assert_allclose(slim["el2n"], single, rtol=1e-6)
