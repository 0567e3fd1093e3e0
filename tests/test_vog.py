"""VoGScorer against a direct computation from stored per-checkpoint input gradients (batch of one, unpadded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_classification_dataset, tiny_bert_config

from hf_influence.scorers import get_scorer
from hf_influence.scorers.vog import VoGScorer

NUM_CHECKPOINTS = 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A Trainer-style run folder with three checkpoint-<step> sub-folders of a tiny BERT (different weights)."""
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("vog_run")
    for k, step in enumerate([30, 10, 20]):  # created out of order: iter_checkpoints sorts by step
        torch.manual_seed(100 + k)
        BertForSequenceClassification(tiny_bert_config()).save_pretrained(root / f"checkpoint-{step}")
    return root


@pytest.fixture(scope="module")
def dataset():
    ds = random_classification_dataset(n=22, seed=3)
    labels = list(ds["label"])
    labels[5] = -1  # an unlabelled row must come out NaN and stay out of the statistics
    return ds.remove_columns("label").add_column("label", labels)


@pytest.fixture(scope="module")
def stored_gradients(run_dir, dataset):
    """gradients[k][i]: [len_i, d] gradient of the gold logit w.r.t. the word embeddings, one example at a time."""
    from transformers import BertForSequenceClassification

    out = []
    for step in (10, 20, 30):
        model = BertForSequenceClassification.from_pretrained(run_dir / f"checkpoint-{step}").eval()
        per_example = []
        for row in dataset:
            ids = torch.tensor([row["input_ids"]])
            embeds = model.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
            logit = model(inputs_embeds=embeds).logits[0, max(row["label"], 0)]
            (grad,) = torch.autograd.grad(logit, embeds)
            per_example.append(grad[0].double().numpy())
        out.append(per_example)
    return out


def reference_vog(stored, labels, reduce, normalization):
    raw = []
    for i in range(len(labels)):
        stack = np.stack([stored[k][i] for k in range(NUM_CHECKPOINTS)])  # [K, T_i, d]
        per_element = stack.var(axis=0)  # population variance over checkpoints
        raw.append((np.sqrt(per_element) if reduce == "std" else per_element).mean())
    raw = np.where(np.asarray(labels) >= 0, raw, np.nan)
    labels = np.asarray(labels)
    if normalization is None:
        return raw
    out = np.full_like(raw, np.nan)
    groups = [labels == c for c in sorted(set(labels) - {-1})] if normalization == "class" else [labels >= 0]
    for group in groups:
        out[group] = (raw[group] - raw[group].mean()) / raw[group].std()
    return out


@pytest.mark.parametrize("reduce", ["var", "std"])
@pytest.mark.parametrize("normalization", [None, "class", "dataset"])
def test_vog_matches_direct_computation(run_dir, dataset, stored_gradients, reduce, normalization):
    scorer = VoGScorer(str(run_dir), reduce=reduce, normalization=normalization, batch_size=4, device="cpu")
    assert len(scorer.checkpoints) == NUM_CHECKPOINTS
    scored = scorer(dataset)
    assert scored.features["vog"].dtype == "float32"
    assert scored.column_names == dataset.column_names + ["vog"]
    ours = np.asarray(scored["vog"], dtype=np.float64)
    ref = reference_vog(stored_gradients, list(dataset["label"]), reduce, normalization)
    assert np.isnan(ours[5]) and np.isnan(ref[5])
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=1e-5 if normalization else 0)
    if normalization is None:
        assert np.all(ours[~np.isnan(ours)] > 0)


def test_streaming_checkpoints_equals_in_memory(run_dir, dataset, stored_gradients, tmp_path):
    for reduce in ("var", "std"):
        stream = VoGScorer(str(run_dir), reduce=reduce, normalization=None, batch_size=5, stream_checkpoints=True,
                           moments_dir=str(tmp_path), device="cpu")(dataset)
        ref = reference_vog(stored_gradients, list(dataset["label"]), reduce, None)
        np.testing.assert_allclose(np.asarray(stream["vog"], dtype=np.float64), ref, rtol=2e-4)
    assert list(tmp_path.iterdir()) == []  # the moment memmaps are removed


def test_vog_gold_prob_target_and_registry(run_dir, dataset):
    scorer = get_scorer("vog", model=str(run_dir), target="gold_prob", normalization=None, batch_size=8)
    assert isinstance(scorer, VoGScorer) and scorer.polarity == "higher_is_harder"
    values = np.asarray(scorer(dataset.select(range(4)))["vog"])
    assert np.all(values > 0)
    entry = scorer.card_entry()
    assert entry["config"]["target"] == "gold_prob" and "Anand" in entry["paper"]


def test_vog_errors(run_dir):
    with pytest.raises(ValueError, match="at least two checkpoints"):
        VoGScorer(str(run_dir / "checkpoint-10"))
    with pytest.raises(ValueError, match="reduce"):
        VoGScorer(str(run_dir), reduce="mean")
    with pytest.raises(ValueError, match="normalization"):
        VoGScorer(str(run_dir), normalization="minmax")
    with pytest.raises(ValueError, match="label"):
        VoGScorer(str(run_dir))(random_classification_dataset(n=3).remove_columns("label"))
