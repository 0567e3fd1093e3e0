"""Gradient-similarity queries (TracInCP dot products, LESS cosines) over projected features: against numpy on the
written features, against exact per-example gradients, and the scorer's join by example id."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_classification_dataset, tiny_bert_config

from hf_influence import add_example_ids
from hf_influence.grads import (
    GradientProjector,
    gradient_similarity,
    load_projected_gradients,
    projected_gradients,
    top_influential,
    write_projected_gradients,
)
from hf_influence.scorers import GradientSimilarityScorer

PARAMS = r"classifier|attention\.output\.dense"


def bert(seed: int):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config()).eval()


def datasets_with_ids():
    train = add_example_ids(random_classification_dataset(n=11, seed=1)).shuffle(seed=3)  # ids != row positions
    query = add_example_ids(random_classification_dataset(n=4, seed=2))
    query = query.map(lambda row: {"example_id": row["example_id"] + 100})
    return train, query


@pytest.fixture(scope="module")
def feature_folders(tmp_path_factory):
    """Training and query features of two checkpoints (float32 storage)."""
    root = tmp_path_factory.mktemp("features")
    train, query = datasets_with_ids()
    folders = {"train": [], "query": []}
    for c, model in enumerate([bert(0), bert(1)]):
        projector = GradientProjector(model, PARAMS, k_in=8, k_out=8, seed=5)
        for name, data in (("train", train), ("query", query)):
            folders[name].append(write_projected_gradients(model, data, root / f"{name}{c}", projector=projector,
                                                           dtype="float32", batch_size=4))
    return folders


def similarity_matrix(folders, weights, normalize):
    total = 0.0
    for train, query, weight in zip(folders["train"], folders["query"], weights):
        g = load_projected_gradients(train)[0].astype(np.float64)
        q = load_projected_gradients(query)[0].astype(np.float64)
        if normalize:
            g = g / np.linalg.norm(g, axis=1, keepdims=True)
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
        total = total + weight * g @ q.T
    return total


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_scores_and_top_k_match_numpy_on_the_written_features(feature_folders, normalize, reduce):
    weights = [0.5, 2.0]
    expected = similarity_matrix(feature_folders, weights, normalize)
    scores = gradient_similarity(feature_folders["train"], feature_folders["query"], weights=weights,
                                 normalize=normalize, reduce=reduce, chunk_rows=3)
    train_ids = load_projected_gradients(feature_folders["train"][0])[1]
    query_ids = load_projected_gradients(feature_folders["query"][0])[1]
    assert list(scores.index) == list(train_ids) and sorted(train_ids) == list(range(11))
    reference = expected.mean(axis=1) if reduce == "mean" else expected.max(axis=1)
    np.testing.assert_allclose(scores.to_numpy(), reference, rtol=1e-5, atol=1e-9)
    top = top_influential(feature_folders["train"], feature_folders["query"], k=3, weights=weights,
                          normalize=normalize, chunk_rows=2)
    assert list(top.columns) == ["query_id", "rank", "train_id", "score"] and len(top) == 12
    for j, query_id in enumerate(query_ids):
        rows = top[top["query_id"] == query_id].sort_values("rank")
        order = np.argsort(-expected[:, j], kind="stable")[:3]
        assert list(rows["train_id"]) == list(train_ids[order])
        np.testing.assert_allclose(rows["score"], expected[order, j], rtol=1e-5)
    assert set(top["query_id"]) == set(range(100, 104))


def test_unusable_rows_are_nan_or_left_out(feature_folders, tmp_path):
    """A NaN training row scores NaN and is never a top match; a NaN (or, for cosine, zero) query row is dropped."""
    import shutil

    folders = {"train": [], "query": []}
    for name in ("train", "query"):
        for c, source in enumerate(feature_folders[name]):
            target = tmp_path / f"{name}{c}"
            shutil.copytree(source, target)
            features = np.load(target / "features.npy")
            if name == "train":
                features[4] = np.nan  # only at one checkpoint: the row is unusable overall
            elif c == 1:
                features[0] = np.nan
                features[1] = 0.0
            np.save(target / "features.npy", features)
            folders[name].append(target)
    dot = gradient_similarity(folders["train"], folders["query"])
    assert np.isnan(dot.iloc[4]) and np.isfinite(dot.drop(dot.index[4])).all()
    expected = similarity_matrix(feature_folders, [1.0, 1.0], False)
    expected[:, 1] -= load_projected_gradients(feature_folders["train"][1])[0] @ \
        load_projected_gradients(feature_folders["query"][1])[0][1]  # query 1 is zero at checkpoint 1
    np.testing.assert_allclose(np.delete(dot.to_numpy(), 4), np.delete(expected[:, 1:].mean(axis=1), 4), rtol=1e-5)
    cosine = gradient_similarity(folders["train"], folders["query"], normalize=True)
    assert cosine.attrs["gradient_similarity"]["num_queries"] == 2  # zero query rows have no cosine
    top = top_influential(folders["train"], folders["query"], k=11)
    train_ids = load_projected_gradients(folders["train"][0])[1]
    assert train_ids[4] not in set(top["train_id"]) and len(top) == 3 * 10


def test_projected_dot_products_estimate_exact_gradient_dot_products():
    """The projection is unbiased: averaged over seeds, projected dot products approach the exact <g_i, g_j> of
    per-example gradients computed one example at a time."""
    model = bert(0)
    data = random_classification_dataset(n=6, seed=4)
    names = [n for n, p in model.named_parameters() if p.requires_grad and re.search(PARAMS, n)]
    exact = []
    for row in data:
        model.zero_grad()
        out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["label"]]))
        out.loss.backward()
        params = dict(model.named_parameters())
        exact.append(torch.cat([params[n].grad.flatten() for n in names]).double())
    exact = torch.stack(exact)
    exact_dots = (exact @ exact.T).numpy()
    from hf_influence.grads import collate_for_gradients

    batch = collate_for_gradients(data[:], pad_token_id=0)
    estimates = []
    for seed in range(500):
        features = projected_gradients(model, batch, GradientProjector(model, PARAMS, k_in=8, k_out=8, seed=seed))
        estimates.append((features.double() @ features.double().T).numpy())
    estimates = np.array(estimates)
    mean = estimates.mean(axis=0)
    standard_error = estimates.std(axis=0) / np.sqrt(len(estimates))
    assert (np.abs(mean - exact_dots) / standard_error).max() < 4  # no bias beyond sampling noise (z-test)
    assert np.abs(mean - exact_dots).max() < 0.1 * np.abs(exact_dots).max()
    assert np.abs(mean - exact_dots).max() < np.abs(estimates[0] - exact_dots).max()  # and closer than one draw


def test_scorer_joins_by_example_id(feature_folders):
    train, _ = datasets_with_ids()
    scorer = GradientSimilarityScorer(feature_folders["train"], feature_folders["query"], normalize=True,
                                      reduce="max", weights=[1.0, 0.5])
    reordered = train.sort("example_id")
    scored = scorer(reordered)
    expected = gradient_similarity(feature_folders["train"], feature_folders["query"], normalize=True, reduce="max",
                                   weights=[1.0, 0.5])
    np.testing.assert_allclose(scored["gradient_similarity"], expected.loc[scored["example_id"]].to_numpy(),
                               rtol=1e-6)
    from hf_influence import select_by_score

    kept = select_by_score(scored, "gradient_similarity", 0.5, "highest")  # as the docstring says: the most similar
    with pytest.raises(ValueError, match="no known polarity"):  # similarity has no hard/easy reading
        select_by_score(scored, "gradient_similarity", 0.5, "hardest")
    assert sorted(kept["gradient_similarity"]) == sorted(scored["gradient_similarity"])[-len(kept):]
    entry = scorer.card_entry()
    assert "max over query examples" in entry["definition"] and "cos(" in entry["definition"]
    assert entry["config"]["weights"] == [1.0, 0.5] and entry["polarity"] is None
    with pytest.raises(ValueError, match="None of the dataset's 3 example ids"):
        scorer(train.select(range(3)).map(lambda row: {"example_id": row["example_id"] + 1000}))
    with pytest.raises(ValueError, match="joins on 'example_id'"):
        scorer(train.remove_columns("example_id"))


def test_errors(feature_folders, tmp_path):
    train, query = feature_folders["train"], feature_folders["query"]
    with pytest.raises(ValueError, match="2 training feature folder"):
        gradient_similarity(train, query[:1])
    with pytest.raises(ValueError, match="3 weight"):
        gradient_similarity(train, query, weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="reduce='sum'; choose one of"):
        gradient_similarity(train, query, reduce="sum")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_influential(train, query, k=0)
    with pytest.raises(FileNotFoundError, match="write_projected_gradients"):
        gradient_similarity(tmp_path, query[0])
    model = bert(0)
    _, data = datasets_with_ids()
    other = write_projected_gradients(model, data, tmp_path / "other_seed", params=PARAMS, k_in=8, k_out=8, seed=6)
    with pytest.raises(ValueError, match="different projections"):
        gradient_similarity(train[0], other)
    with pytest.raises(ValueError, match="other rows"):
        gradient_similarity(train, [query[0], train[1]], weights=1.0)  # rows differ across checkpoints
    assert isinstance(gradient_similarity(train[0], query[0]), pd.Series)


def test_real_snli_proponents_share_the_query_label(minilm_path, shared_dir, tmp_path):
    """The packaged MiniLM with a fresh head on real SNLI pairs: a validation pair's top-5 training proponents by
    gradient cosine (every trainable parameter, 16x16 projections) carry its gold label far above chance, because at
    initialisation the head's gradient (p - onehot(y)) h^T points along the label. Broken pairing of rows, ids or
    checkpoints would fall to chance (1/3)."""
    import json

    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)

    def pairs(split, n):
        lines = (shared_dir / "data" / "snli" / f"{split}.jsonl").read_text().splitlines()
        rows = [row for row in map(json.loads, lines) if row["label"] in (0, 1, 2)][:n]
        data = add_example_ids(Dataset.from_list(rows))
        return data.map(lambda batch: tokenizer(batch["premise"], batch["hypothesis"]), batched=True)

    train, validation = pairs("train", 96), pairs("validation", 12)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3).eval()
    kwargs = {"k_in": 16, "k_out": 16, "seed": 0, "batch_size": 16, "tokenizer": tokenizer}
    train_dir = write_projected_gradients(model, train, tmp_path / "train", **kwargs)
    validation_dir = write_projected_gradients(model, validation, tmp_path / "validation", **kwargs)
    top = top_influential(train_dir, validation_dir, k=5, normalize=True)
    assert len(top) == 60
    train_labels, validation_labels = np.array(train["label"]), np.array(validation["label"])
    agreement = np.mean([train_labels[row.train_id] == validation_labels[row.query_id] for row in top.itertuples()])
    chance = sum((train_labels == c).mean() * (validation_labels == c).mean() for c in range(3))
    assert chance < 0.4 and agreement > 0.9
