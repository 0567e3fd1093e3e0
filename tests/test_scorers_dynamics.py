"""DynamicsScorer: joins summary columns by example_id (not by position), NaN + warning for missing ids, cache."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from conftest import random_classification_dataset
from datasets import load_from_disk

from hf_influence.data import add_example_ids
from hf_influence.scorers import DynamicsScorer, get_scorer


def _summary(ids):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "forgetting": rng.integers(0, 4, len(ids)).astype(float),
            "aum": rng.normal(size=len(ids)),
            "confidence": rng.uniform(size=len(ids)),
            "el2n_epoch_0": rng.uniform(size=len(ids)),
        },
        index=pd.Index(ids, name="example_id"),
    )
    frame.loc[ids[0], "forgetting"] = math.inf  # never learned
    return frame


def test_join_by_id_after_shuffle_with_missing_ids(caplog):
    ds = add_example_ids(random_classification_dataset(n=22)).shuffle(seed=3).select(range(15))
    summary = _summary(list(range(22))[::-1]).drop(index=[int(ds["example_id"][2]), int(ds["example_id"][7])])
    with caplog.at_level(logging.WARNING):
        out = DynamicsScorer(summary, batch_size=4)(ds)
    assert "2 of 15 example ids have no training-dynamics summary" in caplog.text
    assert out.column_names == ds.column_names + ["forgetting", "aum", "confidence", "el2n_epoch_0"]
    assert all(out.features[c].dtype == "float32" for c in ("forgetting", "aum"))
    for row in out:
        i = row["example_id"]
        if i not in summary.index:
            assert all(math.isnan(row[c]) for c in summary.columns)
            continue
        for c in summary.columns:
            assert row[c] == pytest.approx(np.float32(summary.loc[i, c])) or (
                math.isinf(row[c]) and math.isinf(summary.loc[i, c])
            )


def test_columns_prefix_card_entries_and_errors():
    ds = add_example_ids(random_classification_dataset(n=9))
    summary = _summary(list(range(9))).reset_index()  # example_id as a column is accepted
    scorer = get_scorer("dynamics", store_or_summary=summary, columns=["aum", "el2n_epoch_0"], prefix="s0_")
    out = scorer(ds)
    assert out.column_names[-2:] == ["s0_aum", "s0_el2n_epoch_0"]
    entries = scorer.card_entries()
    assert [(e["column"], e["polarity"]) for e in entries] == [
        ("s0_aum", "higher_is_easier"),
        ("s0_el2n_epoch_0", "higher_is_harder"),
    ]
    assert "Pleiss" in entries[0]["paper"] and "epoch 0" in entries[1]["definition"]
    with pytest.raises(ValueError, match="valid numeric columns"):
        DynamicsScorer(summary, columns=["vog"])
    with pytest.raises(ValueError, match="add_example_ids"):
        DynamicsScorer(summary)(random_classification_dataset(n=9))
    with pytest.raises(ValueError, match="duplicated"):
        DynamicsScorer(pd.concat([summary, summary]))
    with pytest.raises(TypeError, match="SignalStore"):
        DynamicsScorer([1, 2, 3])


def test_signal_store_summary_and_cache(tmp_path):
    from hf_influence.store import SignalStore

    records = pd.DataFrame(
        {
            "example_id": [0, 1, 2, 0, 1, 2],
            "epoch": [0, 0, 0, 1, 1, 1],
            "step": [0, 0, 1, 2, 2, 3],
            "loss": [0.5, 1.0, 2.0, 0.25, 1.5, 2.0],
            "prob_gold": [0.6, 0.4, 0.1, 0.8, 0.2, 0.1],
            "margin": [1.0, -0.5, -2.0, 2.0, -1.0, -2.0],
            "correct": [1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
            "el2n": [0.5, 0.8, 1.2, 0.3, 1.0, 1.2],
            "entropy": [0.9, 1.0, 0.5, 0.6, 1.0, 0.5],
        }
    )
    store = SignalStore.from_records(records)
    add_example_ids(random_classification_dataset(n=4)).save_to_disk(str(tmp_path / "ds"))
    ds = load_from_disk(str(tmp_path / "ds"))
    out = DynamicsScorer(store, columns=["aum", "confidence", "mean_loss"])(ds)
    # hand computation: AUM = mean margin, confidence = mean over epochs of prob_gold
    np.testing.assert_allclose(out["aum"][:3], [1.5, -0.75, -2.0])
    np.testing.assert_allclose(out["confidence"][:3], [0.7, 0.3, 0.1], rtol=1e-6)
    np.testing.assert_allclose(out["mean_loss"][:3], [0.375, 1.25, 2.0])
    assert math.isnan(out["aum"][3])  # id 3 never presented

    calls = []

    class Counting(DynamicsScorer):
        def score_batch(self, batch):
            calls.append(1)
            return super().score_batch(batch)

    Counting(store, columns=["aum", "confidence", "mean_loss"])(ds)
    assert calls  # the class is part of the fingerprint: a subclass may compute differently
    calls.clear()
    Counting(store, columns=["aum", "confidence", "mean_loss"])(ds)
    assert not calls  # same summary -> cache hit
    changed = records.assign(margin=records["margin"] + 1)
    Counting(SignalStore.from_records(changed), columns=["aum", "confidence", "mean_loss"])(ds)
    assert calls  # changed summary -> recomputed
