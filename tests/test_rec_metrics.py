"""Recall@K / NDCG@K: hand-computed cases (METHODS.md C.5), plain functions and the local evaluate module."""

from __future__ import annotations

import math

import pytest

from hf_influence.rec.metrics import RECALL_NDCG_PATH, load_recall_ndcg, ndcg_at_k, ranking_metrics, recall_at_k

L2 = math.log2


@pytest.mark.parametrize(
    "predictions, targets, k, recall, ndcg",
    [
        # one hit at rank 2 of 2 targets, K=2: IDCG over min(2, 2) = 2 positions
        ([5, 3, 9, 1], [3, 1], 2, 1 / 2, (1 / L2(3)) / (1 + 1 / L2(3))),
        # both hits (ranks 2 and 4), K=4
        ([5, 3, 9, 1], [3, 1], 4, 1.0, (1 / L2(3) + 1 / L2(5)) / (1 + 1 / L2(3))),
        # single target at rank 1
        ([7, 8, 9], [7], 3, 1.0, 1.0),
        # no hit
        ([7, 8, 9], [1], 3, 0.0, 0.0),
        # K larger than the item count (only 2 items are ranked): hit at rank 2
        ([2, 1], [1], 10, 1.0, 1 / L2(3)),
        # more targets than K: recall over |T| = 3, IDCG over min(3, 2) = 2 -> perfect NDCG
        ([1, 2, 4], [1, 2, 3], 2, 2 / 3, 1.0),
        # three targets, K=5, hits at ranks 1 and 5; IDCG over 3 positions
        ([1, 9, 8, 7, 3], [1, 2, 3], 5, 2 / 3, (1 + 1 / L2(6)) / (1 + 1 / L2(3) + 1 / L2(4))),
        # duplicated prediction: second copy is a miss at its rank (no double credit)
        ([1, 1, 2], [1, 2], 2, 1 / 2, 1 / (1 + 1 / L2(3))),
        ([1, 1, 2], [1, 2], 3, 1.0, (1 + 1 / L2(4)) / (1 + 1 / L2(3))),
        # duplicated targets count once
        ([4, 1], [1, 1], 2, 1.0, 1 / L2(3)),
    ],
)
def test_hand_computed_cases(predictions, targets, k, recall, ndcg):
    assert recall_at_k(predictions, targets, k) == pytest.approx(recall, abs=1e-12)
    assert ndcg_at_k(predictions, targets, k) == pytest.approx(ndcg, abs=1e-12)


def test_mean_over_users_and_bounds():
    predictions = [[5, 3, 9, 1], [7, 8, 9], [1, 1, 2]]
    references = [[3, 1], [1], [1, 2]]
    result = ranking_metrics(predictions, references, ks=[2, 4])
    assert result["recall@2"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    expected_ndcg4 = ((1 / L2(3) + 1 / L2(5)) / (1 + 1 / L2(3)) + 0.0 + (1 + 1 / L2(4)) / (1 + 1 / L2(3))) / 3
    assert result["ndcg@4"] == pytest.approx(expected_ndcg4)
    assert set(result) == {"recall@2", "ndcg@2", "recall@4", "ndcg@4"}
    assert all(0.0 <= v <= 1.0 for v in result.values())


def test_errors_are_clear():
    with pytest.raises(ValueError, match="empty target"):
        recall_at_k([1, 2], [], 2)
    with pytest.raises(ValueError, match="empty target"):
        ndcg_at_k([1, 2], [], 2)
    with pytest.raises(ValueError, match="positive integer"):
        recall_at_k([1, 2], [1], 0)
    with pytest.raises(ValueError, match="position 1"):
        ranking_metrics([[1], [2]], [[1], []], ks=[1])
    with pytest.raises(ValueError, match="2 prediction lists but 1"):
        ranking_metrics([[1], [2]], [[1]], ks=[1])


def test_evaluate_module_matches_hand_values():
    assert RECALL_NDCG_PATH.endswith("recall_ndcg.py")
    metric = load_recall_ndcg()
    predictions = [[5, 3, 9, 1], [2, 1], [1, 1, 2]]
    references = [[3, 1], [1], [1, 2]]
    result = metric.compute(predictions=predictions, references=references, ks=[2, 10])
    assert result["recall@2"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert result["recall@10"] == pytest.approx(1.0)
    expected = ((1 / L2(3) + 1 / L2(5)) / (1 + 1 / L2(3)) + 1 / L2(3) + (1 + 1 / L2(4)) / (1 + 1 / L2(3))) / 3
    assert result["ndcg@10"] == pytest.approx(expected)
    # incremental use (add_batch) gives the same numbers
    for p, r in zip(predictions, references):
        metric.add(predictions=p, references=r)
    assert metric.compute(ks=[2, 10]) == pytest.approx(result)
    with pytest.raises(ValueError, match="empty target"):
        metric.compute(predictions=[[1]], references=[[]], ks=[1])
