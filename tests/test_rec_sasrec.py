"""SASRec surrogate: encoder vs a naive loop, loss vs hand computation, negatives, features, training, evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_influence.rec.data import ItemVocab, load_dealrec_folder
from hf_influence.rec.metrics import ranking_metrics
from hf_influence.rec.sasrec import (
    INFLUENCE_SCOPE,
    SASRecCollator,
    SASRecConfig,
    SASRecModel,
    build_sasrec_dataset,
    evaluate_sasrec,
    rank_items,
    sasrec_per_sample_loss,
    train_sasrec,
)

NUM_ITEMS = 13
MAX_LEN = 6


def tiny_model(seed: int = 0, **kwargs) -> SASRecModel:
    torch.manual_seed(seed)
    config = SASRecConfig(
        num_items=NUM_ITEMS, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8,
        max_seq_length=MAX_LEN, **kwargs,
    )
    return SASRecModel(config).eval()


def _rows(histories, targets):
    return Dataset.from_dict(
        {
            "example_id": list(range(len(histories))),
            "user_id": [100 + i for i in range(len(histories))],
            "history_item_ids": histories,
            "target_item_ids": targets,
        }
    )


def naive_hidden(model: SASRecModel, padded: list[int]) -> torch.Tensor:
    """Second implementation: explicit loops over positions/heads, only for non-padding query positions."""
    cfg = model.config
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    length = len(padded)

    def ln(x, prefix):
        return torch.nn.functional.layer_norm(x, (cfg.hidden_size,), sd[prefix + ".weight"], sd[prefix + ".bias"],
                                              cfg.layer_norm_eps)

    def lin(x, prefix):
        return x @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]

    h = torch.stack([sd["item_embeddings.weight"][i] + sd["position_embeddings.weight"][t] for t, i in
                     enumerate(padded)])
    h = ln(h, "LayerNorm")
    d = cfg.hidden_size // cfg.num_attention_heads
    real = [t for t in range(length) if padded[t] > 0]
    for layer in range(cfg.num_hidden_layers):
        p = f"item_encoder.layer.{layer}"
        q, k, v = lin(h, p + ".attention.query"), lin(h, p + ".attention.key"), lin(h, p + ".attention.value")
        context = torch.zeros_like(h)
        for i in real:
            for head in range(cfg.num_attention_heads):
                sl = slice(head * d, (head + 1) * d)
                keys = [j for j in real if j <= i]
                w = torch.tensor([float(q[i, sl] @ k[j, sl]) / math.sqrt(d) for j in keys], dtype=torch.double)
                w = torch.softmax(w, 0)
                context[i, sl] = sum(w[n] * v[j, sl] for n, j in enumerate(keys))
        h = ln(lin(context, p + ".attention.dense") + h, p + ".attention.LayerNorm")
        a = lin(h, p + ".intermediate.dense_1")
        a = 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))  # exact GELU
        h = ln(lin(a, p + ".intermediate.dense_2") + h, p + ".intermediate.LayerNorm")
    return h


def test_encoder_matches_naive_loop_and_scope_name():
    model = tiny_model()
    padded = [0, 0, 3, 7, 1, 12]
    hidden = model.encode(torch.tensor([padded]))[0].double()
    reference = naive_hidden(model, padded)
    real = [t for t, i in enumerate(padded) if i > 0]
    torch.testing.assert_close(hidden[real], reference[real], atol=1e-5, rtol=1e-5)
    assert dict(model.named_parameters())[INFLUENCE_SCOPE].shape == (8, 8)
    assert float(model.item_embeddings.weight[0].detach().abs().sum()) == 0.0  # padding row
    # defaults = the DEALRec surrogate
    cfg = SASRecConfig(num_items=5)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_act) == (64, 2, 2, "gelu")
    assert (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob, cfg.initializer_range, cfg.max_seq_length) == (
        0.5, 0.5, 0.02, 50)


def test_per_sample_loss_equals_hand_computation():
    model = tiny_model()
    input_ids = torch.tensor([[0, 0, 3, 7, 1, 12], [5, 6, 2, 9, 10, 11], [0, 0, 0, 0, 0, 4]])
    labels = torch.tensor([[0, 0, 7, 1, 12, 2], [6, 2, 9, 10, 11, 13], [0, 0, 0, 0, 0, 8]])
    neg_ids = torch.tensor([[0, 0, 4, 5, 6, 8], [1, 3, 4, 7, 8, 12], [0, 0, 0, 0, 0, 1]])
    batch = {"input_ids": input_ids, "labels": labels, "neg_ids": neg_ids}
    per_sample = sasrec_per_sample_loss(model, batch)
    hidden = model.encode(input_ids).detach()
    emb = model.item_embeddings.weight.detach()
    expected, total, count = [], 0.0, 0
    for b in range(3):
        terms = []
        for t in range(MAX_LEN):
            if labels[b, t] == 0:
                continue
            pos = float(hidden[b, t] @ emb[labels[b, t]])
            neg = float(hidden[b, t] @ emb[neg_ids[b, t]])
            terms.append(-math.log(1 / (1 + math.exp(-pos))) - math.log(1 - 1 / (1 + math.exp(-neg))))
        expected.append(sum(terms) / len(terms))
        total, count = total + sum(terms), count + len(terms)
    torch.testing.assert_close(per_sample.double(), torch.tensor(expected, dtype=torch.double), atol=1e-6, rtol=1e-6)
    out = model(**batch)
    assert float(out.loss.detach()) == pytest.approx(total / count, rel=1e-6)  # authors' token mean
    model_samples = tiny_model(loss_reduction="samples")
    assert float(model_samples(**batch).loss.detach()) == pytest.approx(sum(expected) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="neg_ids"):
        model(input_ids=input_ids, labels=labels)
    with pytest.raises(ValueError, match="max_seq_length"):
        model(input_ids=torch.ones(1, MAX_LEN + 1, dtype=torch.long))


def test_per_sample_gradients_with_torch_func():
    """sasrec_per_sample_loss works under vmap(grad(...)) and matches a per-example autograd loop."""
    from torch.func import functional_call, grad, vmap

    model = tiny_model(seed=1)
    collator = SASRecCollator(num_items=NUM_ITEMS, max_len=MAX_LEN, seed=3, resample=False)
    features = build_sasrec_dataset(_rows([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12]], [[4], [2], [1]]),
                                    ItemVocab(list(range(1, NUM_ITEMS + 1))), max_len=MAX_LEN)
    batch = collator(list(features))
    params = {INFLUENCE_SCOPE: model.get_parameter(INFLUENCE_SCOPE).detach()}

    def loss_one(p, input_ids, labels, neg_ids):
        one = {"input_ids": input_ids[None], "labels": labels[None], "neg_ids": neg_ids[None]}
        return functional_call(model, p, args=(), kwargs={**one, "return_dict": True}).per_sample_loss[0]

    vmapped = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))(params, batch["input_ids"], batch["labels"],
                                                           batch["neg_ids"])[INFLUENCE_SCOPE]
    weight = model.get_parameter(INFLUENCE_SCOPE)
    for b in range(3):
        one = {k: v[b : b + 1] for k, v in batch.items() if k != "example_id"}
        (g,) = torch.autograd.grad(sasrec_per_sample_loss(model, one)[0], weight)
        torch.testing.assert_close(vmapped[b], g, atol=1e-6, rtol=1e-5)


def test_features_and_collator():
    vocab = ItemVocab([10, 20, 30, 40, 50, 60, 70, 80, 90])  # raw ids -> indices 1..9
    rows = _rows([[10, 20, 30, 40, 50, 60, 70, 80], [90]], [[20], [10]])
    feats = build_sasrec_dataset(rows, vocab, max_len=4)
    # user 0: sequence indices 1..8 + 2 -> inputs = seq[:-1][-4:], labels = seq[1:][-4:]
    assert feats[0]["input_ids"] == [5, 6, 7, 8] and feats[0]["labels"] == [6, 7, 8, 2]
    assert feats[0]["seen_item_ids"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert feats[1]["input_ids"] == [9] and feats[1]["labels"] == [1]
    assert feats.column_names == ["example_id", "user_id", "input_ids", "seen_item_ids", "labels"]
    eval_feats = build_sasrec_dataset(rows, vocab, max_len=4, for_training=False)
    assert eval_feats[0]["input_ids"] == [5, 6, 7, 8] and eval_feats[0]["target_ids"] == [2]

    collator = SASRecCollator(num_items=9, max_len=4, seed=0)
    batch = collator(list(feats))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [0, 0, 0, 9]]
    assert batch["labels"].tolist() == [[6, 7, 8, 2], [0, 0, 0, 1]]
    assert batch["example_id"].tolist() == [0, 1]
    neg = batch["neg_ids"]
    assert neg[0].tolist() == [9, 9, 9, 9]  # the only item outside user 0's whole sequence
    assert neg[1, :3].tolist() == [0, 0, 0] and neg[1, 3] not in (1, 9)
    # resampled negatives: uniform over the allowed items, fresh at each call, reproducible with the same seed
    big = SASRecCollator(num_items=9, max_len=4, seed=5)
    draws = [int(big([feats[1]])["neg_ids"][0, 3]) for _ in range(700)]
    counts = np.bincount(draws, minlength=10)
    assert counts[[0, 1, 9]].sum() == 0 and counts[2:9].min() > 60  # 7 allowed items, ~100 each
    again = SASRecCollator(num_items=9, max_len=4, seed=5)
    assert [int(again([feats[1]])["neg_ids"][0, 3]) for _ in range(700)] == draws
    # resample=False: negatives depend on (seed, example_id) only, not on the batch they are in
    fixed = SASRecCollator(num_items=9, max_len=4, seed=5, resample=False)
    alone = fixed([feats[1]])["neg_ids"][0]
    assert torch.equal(fixed(list(feats))["neg_ids"][1], alone) and torch.equal(fixed([feats[1]])["neg_ids"][0], alone)
    with pytest.raises(ValueError, match="covers all 8 items"):
        SASRecCollator(num_items=8, max_len=4, seed=0)([feats[0]])
    assert "example_id" not in SASRecCollator(num_items=9, max_len=4, keep_example_id=False)([feats[1]])


def test_rank_items_matches_naive_scoring():
    model = tiny_model(seed=2)
    vocab = model.config.item_vocab()
    rows = _rows([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12]], [[4, 5], [1], [13]])
    ranked = rank_items(model, rows, k=5, exclude_history=True)
    for row, got in zip(rows, ranked):
        history = vocab.encode(row["history_item_ids"])[-MAX_LEN:]
        ids = torch.tensor([[0] * (MAX_LEN - len(history)) + history])
        with torch.no_grad():
            scores = (model.encode(ids)[0, -1] @ model.item_embeddings.weight.T).numpy()
        order = [i for i in np.argsort(-scores, kind="stable") if i != 0 and i not in row["history_item_ids"]]
        assert got == vocab.decode(order[:5])
    metrics = evaluate_sasrec(model, rows, ks=(2, 5))
    assert metrics == pytest.approx(ranking_metrics(ranked, rows["target_item_ids"], ks=[2, 5]))


def test_training_loss_decreases_and_keep_best(shared_dir, tmp_path):
    users = load_dealrec_folder(shared_dir / "data" / "dealrec" / "games", max_users=350)
    config = {"hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.2}
    result = train_sasrec(users["train"], valid_rows=users["valid"], config=config, epochs=6, batch_size=64,
                          lr=3e-3, output_dir=tmp_path / "last", eval_every=2, keep="last")
    assert len(result.train_loss) == 6 and result.kept_epoch == 6
    assert result.train_loss[-1] < result.train_loss[0] - 0.05
    assert [m["epoch"] for m in result.valid_metrics] == [2, 4, 6]
    # the saved model is the final one and carries its item vocabulary
    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(tmp_path / "last")  # registered model type "sasrec"
    assert isinstance(loaded, SASRecModel)
    assert loaded.config.item_ids == result.model.config.item_ids
    for a, b in zip(loaded.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)
    assert evaluate_sasrec(loaded, users["valid"], ks=(5, 10, 20)) == pytest.approx(
        {k: v for k, v in result.valid_metrics[-1].items() if k != "epoch"})

    best = train_sasrec(users["train"], valid_rows=users["valid"], config=config, epochs=3, batch_size=64, lr=3e-3,
                        output_dir=None, eval_every=1, keep="best", metric_for_best="ndcg@20")
    values = [m["ndcg@20"] for m in best.valid_metrics]
    assert best.kept_epoch == 1 + int(np.argmax(values))
    assert evaluate_sasrec(best.model, users["valid"])["ndcg@20"] == pytest.approx(max(values))
    with pytest.raises(ValueError, match="keep='best' needs valid_rows"):
        train_sasrec(users["train"], keep="best", output_dir=None)
