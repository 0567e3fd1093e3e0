"""DEALRec score combination and selection, checked by hand; surrogate GraNd against torch.func per-sample grads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_influence.rec.dealrec import combine_dealrec_scores, select_dealrec, surrogate_grand


def test_combine_minmax_and_raw_by_hand():
    influence = [2.0, -1.0, 5.0, 1.0]  # min -1, max 5 -> [0.5, 0, 1, 1/3]
    effort = [10.0, 30.0, 20.0, 10.0]  # min 10, max 30 -> [0, 1, 0.5, 0]
    got = combine_dealrec_scores(influence, effort, lam=0.3, normalize="minmax")  # the authors' code
    np.testing.assert_allclose(got, [0.5, 0.3, 1.15, 1 / 3], rtol=1e-12)
    raw = combine_dealrec_scores(influence, effort, lam=0.5)  # the paper's raw sum is the default
    np.testing.assert_allclose(raw, [7.0, 14.0, 15.0, 6.0])
    constant = combine_dealrec_scores([3.0, 3.0], [1.0, 2.0], lam=1.0, normalize="minmax")  # constant -> zeros
    np.testing.assert_allclose(constant, [0.0, 1.0])


def test_combine_bad_inputs():
    with pytest.raises(ValueError, match="non-finite"):
        combine_dealrec_scores([1.0, float("nan")], [1.0, 2.0], lam=1.0)
    with pytest.raises(ValueError, match="same users"):
        combine_dealrec_scores([1.0, 2.0], [1.0], lam=1.0)
    with pytest.raises(ValueError, match="valid options"):
        combine_dealrec_scores([1.0], [1.0], lam=1.0, normalize="zscore")


def _users():
    # 30 users. Hard prune 10% -> the 3 highest (5, 6, 7) go. The rest spans [0, 1] -> 3 equal-width groups
    # [0, 1/3], (1/3, 2/3], (2/3, 1] holding 2, 5 and 20 users.
    low = [0.0, 0.1]
    mid = [0.4, 0.45, 0.5, 0.55, 0.6]
    high = list(np.linspace(0.7, 1.0, 20))
    cut = [5.0, 6.0, 7.0]
    influence = low + mid + high + cut
    order = np.random.default_rng(0).permutation(30)  # rows in a scrambled order
    influence = [influence[i] for i in order]
    return Dataset.from_dict({"example_id": list(range(30)), "influence": influence, "effort": [0.0] * 30})


def test_select_dealrec_counts_by_hand():
    users = _users()
    selected, report = select_dealrec(users, budget=12, lam=1.0, k=3, hard_prune=0.1, normalize="none",
                                      return_report=True)
    assert len(selected) == 12
    values = np.asarray(selected["dealrec"])
    assert values.max() <= 1.0 + 1e-6  # the hard-pruned top 10% is never selected
    # smallest group first: min(2, 12 // 3) = 2; then min(5, 10 // 2) = 5; then min(20, 5 // 1) = 5
    assert int((values <= 1 / 3).sum()) == 2
    assert int(((values > 1 / 3) & (values <= 2 / 3)).sum()) == 5
    assert int((values > 2 / 3).sum()) == 5
    assert [s["after"] for s in report.strata] == [2, 5, 5]
    assert len(set(selected["example_id"])) == 12
    # the draw within groups is seeded: the same call selects the same users
    again = select_dealrec(users, budget=12, lam=1.0, k=3, hard_prune=0.1, normalize="none")
    assert again["example_id"] == selected["example_id"]


def test_select_dealrec_budget_errors():
    users = _users()
    with pytest.raises(ValueError, match="larger than the number of users"):
        select_dealrec(users, budget=31)
    with pytest.raises(ValueError, match="hard_prune"):
        select_dealrec(users, budget=28, hard_prune=0.1)
    assert len(select_dealrec(users, budget=30, k=4)) == 30  # the paper's default: no hard cut
    with pytest.raises(ValueError, match="InfluenceScorer and EffortScorer"):
        select_dealrec(users.remove_columns("effort"), budget=5)


def test_surrogate_grand_matches_naive_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x, y = torch.randn(22, 5), torch.randint(0, 3, (22,))
    data = Dataset.from_dict({"x": x.tolist(), "y": y.tolist()})

    def per_sample_loss(m, batch):
        return torch.nn.functional.cross_entropy(m(batch["x"]), batch["y"], reduction="none")

    def collate(rows):
        return {"x": torch.tensor([r["x"] for r in rows]), "y": torch.tensor([r["y"] for r in rows])}

    got = surrogate_grand(model, data, per_sample_loss, collate, batch_size=4, progress=False)
    reference = []
    for i in range(22):  # naive: one example, one backward
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        reference.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))))
    np.testing.assert_allclose(got, reference, rtol=1e-5)


def test_surrogate_el2n_and_grand_on_sasrec_match_per_user_references():
    from hf_influence.rec.dealrec import surrogate_el2n
    from hf_influence.rec.sasrec import (
        SASRecCollator,
        SASRecConfig,
        SASRecModel,
        build_sasrec_dataset,
        sasrec_per_sample_loss,
    )

    torch.manual_seed(0)
    model = SASRecModel(SASRecConfig(num_items=25, hidden_size=8, intermediate_size=8, max_seq_length=6)).eval()
    g = torch.Generator().manual_seed(1)
    histories = [torch.randint(1, 26, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(22)]
    rows = Dataset.from_dict({"example_id": list(range(22)), "history_item_ids": histories,
                              "target_item_ids": [[int(torch.randint(1, 26, (1,), generator=g))] for _ in range(22)]})
    features = build_sasrec_dataset(rows, model.config)
    collator = SASRecCollator(num_items=25, max_len=6, seed=0, resample=False)
    got = surrogate_el2n(model, features, collator, batch_size=4, progress=False)
    grand = surrogate_grand(model, features, sasrec_per_sample_loss, collator, batch_size=4, progress=False)
    grand_reference = []
    reference = []
    for row in features:  # one user at a time, numpy formula
        batch = collator([row])
        with torch.no_grad():
            out = model(**{k: batch[k] for k in ("input_ids", "labels", "neg_ids")}, return_dict=True)
        mask = batch["labels"][0].numpy() > 0
        p = 1 / (1 + np.exp(-out.pos_logits[0].numpy()[mask]))
        n = 1 / (1 + np.exp(-out.neg_logits[0].numpy()[mask]))
        reference.append(np.mean(np.sqrt((1 - p) ** 2 + n**2)))
        grads = torch.autograd.grad(sasrec_per_sample_loss(model, batch)[0], list(model.parameters()),
                                    allow_unused=True)
        grand_reference.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))))
    np.testing.assert_allclose(got, reference, rtol=1e-5)
    np.testing.assert_allclose(grand, grand_reference, rtol=1e-5)
