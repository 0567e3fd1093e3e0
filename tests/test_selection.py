"""select_by_score: exact counts per class and stratum against hand computations and a plain-Python reference."""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import pytest
from datasets import Dataset

from hf_influence.data import add_example_ids
from hf_influence.paths import shared_data_dir
from hf_influence.polarity import set_polarity
from hf_influence.selection import SelectionReport, list_strategies, sampling_probabilities, select_by_score


def _ds(scores, labels=None):
    data = {"score": [float(s) for s in scores]}
    if labels is not None:
        data["label"] = list(labels)
    return set_polarity(add_example_ids(Dataset.from_dict(data)), "score", "higher_is_harder")


@pytest.fixture(scope="module")
def games():
    """300 real Games users: score = number of training interactions, label = user id mod 3."""
    path = shared_data_dir("dealrec/games") / "sequential_train.txt"
    users, lengths = [], []
    with open(path) as handle:
        for line in handle:
            parts = line.split()
            users.append(int(parts[0]))
            lengths.append(float(len(parts) - 1))
            if len(users) == 300:
                break
    data = Dataset.from_dict({"user": users, "score": lengths, "label": [u % 3 for u in users]})
    return set_polarity(add_example_ids(data), "score", "higher_is_harder")


# ---- plain-Python references (independent of the implementation: loops, no numpy searchsorted) -------------------


def ref_ccs_counts(values, k, m):
    low, high = min(values), max(values)
    upper = high * 1.0001
    width = (upper - low) / k
    sizes = [0] * k
    for v in values:
        sizes[min(int((v - low) / width), k - 1)] += 1
    return sizes, ref_fill(sizes, m)


def ref_coverage_counts(values, k, m):
    low, high = min(values), max(values)
    width = (high - low) / k
    sizes = [0] * k
    for v in values:
        j = 0
        while j < k - 1 and low + (j + 1) * width < v:  # first group whose upper edge >= v
            j += 1
        sizes[j] += 1
    return sizes, ref_fill(sizes, m)


def ref_fill(sizes, m):
    taken = [0] * len(sizes)
    order = sorted(range(len(sizes)), key=lambda j: (sizes[j], j))
    remaining = m
    for visited, j in enumerate(order):
        taken[j] = min(sizes[j], remaining // (len(sizes) - visited))
        remaining -= taken[j]
    return taken


# ---- hand-worked cases -------------------------------------------------------------------------------------------


def test_hardest_easiest_random_window_hand_cases():
    scores = [3, 9, 0, 7, 5, 1, 8, 2, 6, 4]
    ds = _ds(scores)
    assert select_by_score(ds, "score", 3, "hardest")["score"] == [9.0, 7.0, 8.0]  # original order kept
    assert select_by_score(ds, "score", 0.3, "easiest")["score"] == [0.0, 1.0, 2.0]
    # a negated column flips its polarity too: "hardest" still keeps the hardest
    assert select_by_score(ds, "-score", 3, "hardest")["score"] == [9.0, 7.0, 8.0]
    # highest / lowest read raw values and never the polarity
    assert select_by_score(ds, "score", 3, "highest")["score"] == [9.0, 7.0, 8.0]
    assert select_by_score(ds, "-score", 3, "highest")["score"] == [0.0, 1.0, 2.0]
    assert select_by_score(ds, "score", 3, "lowest")["score"] == [0.0, 1.0, 2.0]
    # Data Diet window: skip the 2 highest (9, 8), keep the next 3 (7, 6, 5)
    out = select_by_score(ds, "score", 3, "window", offset=2)
    assert sorted(out["score"]) == [5.0, 6.0, 7.0]
    assert out["example_id"] == [3, 4, 8]
    assert sorted(select_by_score(ds, "score", 3, "window", offset=0.5)["score"]) == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="exceeds"):
        select_by_score(ds, "score", 3, "window", offset=8)
    # Data Diet code's own parameter: ascending ranks [start_rank, start_rank + keep) -> ranks 5, 6, 7 = (5, 6, 7)
    assert sorted(select_by_score(ds, "score", 3, "window", start_rank=5)["score"]) == [5.0, 6.0, 7.0]
    assert sorted(select_by_score(ds, "score", 3, "window", start_rank=0)["score"]) == [0.0, 1.0, 2.0]
    assert sorted(select_by_score(ds, "score", 3, "window", start_rank=0.7)["score"]) == [7.0, 8.0, 9.0]
    with pytest.raises(ValueError, match=r"start_rank \(8\) \+ keep \(3\) exceeds"):
        select_by_score(ds, "score", 3, "window", start_rank=8)
    with pytest.raises(ValueError, match="either offset .* or start_rank"):
        select_by_score(ds, "score", 3, "window", offset=1, start_rank=2)
    # Data Diet code's keep_max_abs / keep_min_abs variants
    signed = _ds([-9, 1, -2, 8, 0, 3])
    assert select_by_score(signed, "score", 2, "hardest", absolute=True)["score"] == [-9.0, 8.0]
    assert select_by_score(signed, "score", 2, "easiest", absolute=True)["score"] == [1.0, 0.0]
    assert select_by_score(signed, "score", 2, "hardest")["score"] == [8.0, 3.0]
    r1 = select_by_score(ds, None, 4, "random", seed=1)["example_id"]
    assert r1 == select_by_score(ds, None, 4, "random", seed=1)["example_id"]
    assert len(set(r1)) == 4 and r1 == sorted(r1)
    seeds = {tuple(select_by_score(ds, None, 4, "random", seed=s)["example_id"]) for s in range(6)}
    assert len(seeds) > 1


def test_ccs_hand_case():
    # beta=0.1 drops the single highest (10); remaining min 1, max 9, upper 9.0009, k=2 -> edges [1, 5.00045, 9.0009]
    # S0 = {1 x6, 2, 5} (8 rows), S1 = {9}; keep 4: S1 takes min(1, 4//2) = 1, then S0 takes min(8, 3//1) = 3
    scores = [1, 1, 1, 10, 1, 1, 1, 2, 5, 9]
    out, report = select_by_score(_ds(scores), "score", 4, "ccs", beta=0.1, k=2, return_report=True, seed=3)
    assert report.num_hard_pruned == 1
    assert [(s["before"], s["after"]) for s in report.strata] == [(8, 3), (1, 1)]
    assert report.strata[1]["high"] == pytest.approx(9.0009)
    assert 9.0 in out["score"] and 10.0 not in out["score"] and len(out) == 4


def test_ccs_hard_cut_by_another_column():
    # the official CCS code cuts the lowest-AUM examples, then stratifies by the chosen score (here "score")
    scores = [1, 1, 1, 10, 1, 1, 1, 2, 5, 9]
    aum = [0.5, -3.0, 0.2, 0.9, 0.1, 0.3, 0.4, 0.6, 0.7, 0.8]  # row 1 has the lowest AUM
    ds = set_polarity(_ds(scores).add_column("aum", aum), "aum", "higher_is_easier")
    out, report = select_by_score(
        ds, "score", 9, "ccs", beta=0.1, k=2, cut_column="aum", return_report=True
    )
    assert report.num_hard_pruned == 1 and 1 not in out["example_id"] and 3 in out["example_id"]
    # remaining scores [1 x5, 10, 2, 5, 9]: edges [1, 5.5005, 10.001] -> S0 = 7 rows, S1 = {10, 9}
    assert [(s["before"], s["after"]) for s in report.strata] == [(7, 7), (2, 2)]
    with pytest.raises(ValueError, match="not in the dataset"):
        select_by_score(ds, "score", 2, "coverage", cut_column="vog", hard_prune=0.1)


def test_coverage_hand_case_paper_and_code_hard_prune():
    # k=3 over [1, 10]: edges 1, 4, 7, 10, right-closed: G0 = {1 x5, 2, 4} (7), G1 = {5, 7} (2), G2 = {9, 10} (2)
    # keep 5: G1 takes min(2, 5//3) = 1, G2 min(2, 4//2) = 2, G0 min(7, 2//1) = 2
    scores = [1, 1, 1, 1, 1, 2, 4, 5, 7, 9, 10]
    out, report = select_by_score(_ds(scores), "score", 5, "coverage", k=3, return_report=True)
    assert [(s["before"], s["after"]) for s in report.strata] == [(7, 2), (2, 1), (2, 2)]
    assert [s["high"] for s in report.strata] == [4.0, 7.0, 10.0]
    kept = Counter(out["score"])
    assert kept[9.0] == 1 and kept[10.0] == 1 and kept[5.0] + kept[7.0] == 1
    # DEALRec code: hard_prune=0.1 drops floor(1.1) = 1 highest (10) first; then [1, 9] -> edges 1, 3.67, 6.33, 9
    # G0 = {1 x5, 2} (6), G1 = {4, 5} (2), G2 = {7, 9} (2)
    _, report = select_by_score(_ds(scores), "score", 5, "coverage", k=3, hard_prune=0.1, return_report=True)
    assert report.num_hard_pruned == 1
    assert [(s["before"], s["after"]) for s in report.strata] == [(6, 2), (2, 1), (2, 2)]


def test_empty_coverage_groups_are_dropped():
    # k=4 over [0, 8]: edges 0, 2, 4, 6, 8 -> G0 = {0, 0, 1, 1, 2} (5), G1 = {} , G2 = {} , G3 = {7, 8} (2)
    # keep 4: empty groups take 0, then G3 min(2, 4//2) = 2, G0 min(5, 2//1) = 2
    _, report = select_by_score(_ds([0, 0, 1, 1, 2, 7, 8]), "score", 4, "coverage", k=4, return_report=True)
    assert [(s["before"], s["after"]) for s in report.strata] == [(5, 2), (0, 0), (0, 0), (2, 2)]


def test_class_balanced_largest_remainder_and_report():
    # classes of sizes 5, 3, 2 and keep 5: exact 2.5, 1.5, 1.0 -> floors 2, 1, 1; one left goes to the tie winner
    # (first class) -> 3, 1, 1
    scores = list(range(10))
    labels = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    out, report = select_by_score(
        _ds(scores, labels), "score", 5, "hardest", class_balanced=True, return_report=True
    )
    assert Counter(out["label"]) == {0: 3, 1: 1, 2: 1}
    assert out["score"] == [2.0, 3.0, 4.0, 7.0, 9.0]
    assert report.per_class_before == {"0": 5, "1": 3, "2": 2}
    assert report.per_class_after == {"0": 3, "1": 1, "2": 1}
    unbalanced, report = select_by_score(_ds(scores, labels), "score", 5, "hardest", return_report=True)
    assert Counter(unbalanced["label"]) == {1: 3, 2: 2}
    assert report.per_class_after == {"0": 0, "1": 3, "2": 2}  # a class wiped out is reported as 0
    # window per class: an int offset is split by the same rule (offset 2 -> 1, 1, 0)
    out = select_by_score(_ds(scores, labels), "score", 5, "window", offset=2, class_balanced=True)
    assert out["score"] == [1.0, 2.0, 3.0, 6.0, 9.0]
    # by start rank: an int start 1 splits as 1, 0, 0 (remainders .5, .3, .2); a fraction 0.2 floors per class to
    # 1, 0, 0 as well -> class 0 ranks [1, 4) = 1, 2, 3; class 1 rank 0 = 5; class 2 rank 0 = 8
    for start in (1, 0.2):
        same = select_by_score(_ds(scores, labels), "score", 5, "window", start_rank=start, class_balanced=True)
        assert same["score"] == [1.0, 2.0, 3.0, 5.0, 8.0]


# ---- real data: 300 Games users --------------------------------------------------------------------------------


@pytest.mark.parametrize("k, keep, beta", [(50, 0.3, 0.0), (10, 100, 0.1), (7, 0.5, 0.2)])
def test_ccs_counts_on_games_match_reference(games, k, keep, beta):
    scores = list(games["score"])
    out, report = select_by_score(games, "score", keep, "ccs", beta=beta, k=k, seed=5, return_report=True)
    n = len(scores)
    m = keep if isinstance(keep, int) else int(keep * n)
    cut = int(beta * n)
    order = sorted(range(n), key=lambda i: (scores[i], i))
    remaining = [scores[i] for i in order[: n - cut]]
    sizes, taken = ref_ccs_counts(remaining, k, m)
    assert [s["before"] for s in report.strata] == sizes
    assert [s["after"] for s in report.strata] == taken
    assert len(out) == m == sum(taken) and report.num_hard_pruned == cut
    # recount the kept rows per stratum from the returned dataset
    recount = Counter()
    for v in out["score"]:
        recount[next(j for j, s in enumerate(report.strata) if s["low"] <= v < s["high"])] += 1
    assert [recount[j] for j in range(k)] == taken
    assert max(out["score"]) <= max(remaining)
    again = select_by_score(games, "score", keep, "ccs", beta=beta, k=k, seed=5)
    assert again["example_id"] == out["example_id"]
    other = select_by_score(games, "score", keep, "ccs", beta=beta, k=k, seed=6)
    assert other["example_id"] != out["example_id"]


def test_coverage_counts_on_games_match_reference(games):
    scores = list(games["score"])
    out, report = select_by_score(games, "score", 64, "coverage", k=25, hard_prune=0.1, seed=1, return_report=True)
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    remaining = [scores[i] for i in order[: len(scores) - 30]]
    sizes, _ = ref_coverage_counts(remaining, 25, 64)
    nonempty = [s for s in sizes if s]
    taken_nonempty = ref_fill(nonempty, 64)
    assert [s["before"] for s in report.strata] == sizes
    assert [s["after"] for s in report.strata if s["before"]] == taken_nonempty
    assert len(out) == 64


def test_class_balanced_ccs_on_games(games):
    out, report = select_by_score(games, "score", 0.2, "ccs", k=5, class_balanced=True, return_report=True)
    labels = list(games["label"])
    before = Counter(labels)
    n, m = len(labels), 60
    exact = {c: m * before[c] / n for c in sorted(before)}
    quota = {c: math.floor(exact[c]) for c in exact}
    for c in sorted(exact, key=lambda c: -(exact[c] - quota[c]))[: m - sum(quota.values())]:
        quota[c] += 1
    assert Counter(out["label"]) == quota
    for c in sorted(before):
        values = [s for s, y in zip(games["score"], labels) if y == c]
        sizes, taken = ref_ccs_counts(values, 5, quota[c])
        strata = [s for s in report.strata if s["label"] == str(c)]
        assert [s["before"] for s in strata] == sizes and [s["after"] for s in strata] == taken


# ---- weighted sampling -------------------------------------------------------------------------------------------


def test_sampling_probabilities_formulas():
    s = np.array([2.0, 4.0, 10.0])
    w = np.array([0.1, 0.1 + 0.9 * 2 / 8, 1.0])  # eps + (1 - eps) (s - min) / (max - min)
    np.testing.assert_allclose(sampling_probabilities(s, eps=0.1), w / w.sum())
    w_easy = np.array([1.0, 0.1 + 0.9 * 6 / 8, 0.1])
    np.testing.assert_allclose(sampling_probabilities(s, eps=0.1, prefer="easy"), w_easy / w_easy.sum())
    e = np.exp(s / 4.0)
    np.testing.assert_allclose(sampling_probabilities(s, mapping="softmax", temperature=4.0), e / e.sum())
    np.testing.assert_allclose(sampling_probabilities(np.array([3.0, 3.0])), [0.5, 0.5])
    with pytest.raises(ValueError, match="valid mappings"):
        sampling_probabilities(s, mapping="cubic")


def test_weighted_first_draw_frequencies_match_probabilities():
    scores = [0.0, 1.0, 3.0, 6.0]
    ds = _ds(scores)
    p = sampling_probabilities(np.array(scores), eps=0.2)
    draws = 1500
    counts = Counter(
        select_by_score(ds, "score", 1, "weighted", eps=0.2, seed=seed)["example_id"][0] for seed in range(draws)
    )
    freq = np.array([counts[i] for i in range(4)]) / draws
    np.testing.assert_allclose(freq, p, atol=4 * math.sqrt(0.25 / draws))  # 4 binomial standard errors
    # keep all but one: the lowest-scored row is dropped most often under prefer="hard", kept under "easy"
    hard = Counter()
    easy = Counter()
    for seed in range(100):
        hard.update(select_by_score(ds, "score", 3, "weighted", eps=0.01, seed=seed)["example_id"])
        easy.update(select_by_score(ds, "score", 3, "weighted", prefer="easy", eps=0.01, seed=seed)["example_id"])
    assert hard[0] < 30 and easy[0] == 100 and easy[3] < 30


def test_weighted_on_games_is_deterministic_and_prefers_high(games):
    a = select_by_score(games, "score", 100, "weighted", mapping="softmax", temperature=20.0, seed=2)
    b = select_by_score(games, "score", 100, "weighted", mapping="softmax", temperature=20.0, seed=2)
    assert a["example_id"] == b["example_id"] and len(a) == 100
    assert np.mean(a["score"]) > np.mean(games["score"])
    with pytest.raises(ValueError, match="non-zero sampling probability"):
        select_by_score(games, "score", 250, "weighted", mapping="softmax", temperature=1e-3)


# ---- NaN, infinities, errors -------------------------------------------------------------------------------------


def test_nan_policy_and_infinities(caplog):
    ds = _ds([1.0, float("nan"), 3.0, float("inf"), 2.0, float("nan")], labels=[0, 1, 0, 1, 0, 1])
    with caplog.at_level(logging.WARNING):
        out, report = select_by_score(ds, "score", 2, "hardest", return_report=True)
    assert "2 of 6 rows have a NaN" in caplog.text
    assert out["score"] == [3.0, float("inf")] and report.num_nan == 2 and report.num_candidates == 4
    assert len(select_by_score(ds, "score", 1.0, "easiest")) == 4  # fraction of the scored rows
    with pytest.raises(ValueError, match="2 NaN scores"):
        select_by_score(ds, "score", 2, "hardest", nan_policy="raise")
    # infinities are clipped for stratification: inf lands in the top stratum
    _, report = select_by_score(ds, "score", 4, "ccs", k=2, return_report=True)
    assert [(s["before"], s["after"]) for s in report.strata] == [(2, 2), (2, 2)]
    assert len(select_by_score(ds, None, 6, "random")) == 6  # random ignores the scores


def test_errors_leave_dataset_untouched():
    ds = _ds([0.5, 0.1, 0.9], labels=[0, 1, 1])
    with pytest.raises(ValueError, match="Valid strategies: hardest, easiest, highest, lowest, random, window, ccs"):
        select_by_score(ds, "score", 1, "top")
    with pytest.raises(ValueError, match="outside"):
        select_by_score(ds, "score", 4, "hardest")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        select_by_score(ds, "score", 1.5, "hardest")
    with pytest.raises(ValueError, match="keeps no row"):
        select_by_score(ds, "score", 0.1, "hardest")
    with pytest.raises(TypeError):
        select_by_score(ds, "score", True, "hardest")
    with pytest.raises(ValueError, match="not in the dataset"):
        select_by_score(ds, "el2n", 1, "hardest")
    with pytest.raises(ValueError, match="all NaN"):
        select_by_score(ds.map(lambda r: {"score": float("nan")}), "score", 1, "hardest")
    with pytest.raises(ValueError, match="needs a label column"):
        select_by_score(ds, "score", 1, "hardest", class_balanced=True, label_column="gold")
    with pytest.raises(ValueError, match="accepts \\['beta', 'k', 'cut_column'\\]"):
        select_by_score(ds, "score", 1, "ccs", offset=3)
    with pytest.raises(ValueError, match="needs a score column"):
        select_by_score(ds, None, 1, "hardest")
    with pytest.raises(ValueError, match="beta must be"):
        select_by_score(ds, "score", 1, "ccs", beta=1.0)
    with pytest.raises(ValueError, match="fewer than keep"):
        select_by_score(ds, "score", 3, "ccs", beta=0.5)
    assert ds["score"] == [0.5, 0.1, 0.9] and len(ds) == 3


def test_report_to_dict_and_strategies():
    assert list_strategies() == ["hardest", "easiest", "highest", "lowest", "random", "window", "ccs", "coverage",
                                 "weighted", "dealrec"]
    _, report = select_by_score(_ds([1, 2, 3, 4], [0, 0, 1, 1]), "score", 2, "ccs", k=2, return_report=True)
    assert isinstance(report, SelectionReport)
    d = report.to_dict()
    assert "indices" not in d and d["params"] == {"beta": 0.0, "k": 2, "cut_column": None} and d["num_kept"] == 2
    assert report.indices == sorted(report.indices)
    import json

    json.dumps(d)


# ---- polarity drives selection -------------------------------------------------------------------------------------


def test_polarity_orients_hard_easy_strategies_and_is_required():
    aum = [0.4, -1.0, 2.0, 0.1, 1.5, -0.3]  # higher = easier: the hardest are the lowest
    plain = add_example_ids(Dataset.from_dict({"aum": aum, "label": [0, 1, 0, 1, 0, 1]}))
    with pytest.raises(ValueError, match="no known polarity.*set_polarity.*'highest' / 'lowest'"):
        select_by_score(plain, "aum", 2, "hardest")
    ds = set_polarity(plain, "aum", "higher_is_easier")
    assert select_by_score(ds, "aum", 2, "hardest")["aum"] == [-1.0, -0.3]
    assert select_by_score(ds, "aum", 2, "easiest")["aum"] == [2.0, 1.5]
    # the explicit argument gives the same selection as the recorded polarity, and overrides it
    assert select_by_score(plain, "aum", 2, "hardest", polarity="higher_is_easier")["aum"] == [-1.0, -0.3]
    assert select_by_score(ds, "aum", 2, "hardest", polarity="higher_is_harder")["aum"] == [2.0, 1.5]
    # window skips the hardest: skip -1.0, keep the next two hardest (-0.3, 0.1)
    assert sorted(select_by_score(ds, "aum", 2, "window", offset=1)["aum"]) == [-0.3, 0.1]
    # weighted sampling prefers hard: the probabilities follow hardness = -aum
    _, report = select_by_score(ds, "aum", 6, "weighted", return_report=True)
    assert report.polarity == "higher_is_easier" and report.num_kept == 6
    with pytest.raises(ValueError, match="Unknown polarity"):
        select_by_score(ds, "aum", 2, "hardest", polarity="up")
    # highest / lowest / random never need a polarity
    assert select_by_score(plain, "aum", 2, "highest")["aum"] == [2.0, 1.5]
    assert len(select_by_score(plain, None, 2, "random")) == 2


def test_polarity_survives_save_load_and_transforms(tmp_path):
    import datasets

    from hf_influence.hub import save_scored_dataset
    from hf_influence.normalization import add_normalized_column
    from hf_influence.polarity import get_polarity

    ds = set_polarity(add_example_ids(Dataset.from_dict({"aum": [0.4, -1.0, 2.0, 0.1], "label": [0, 1, 0, 1]})),
                      "aum", "higher_is_easier")
    ds = add_normalized_column(ds, "aum", by="class", output_column="aum_class")
    assert get_polarity(ds, "aum_class") == "higher_is_easier"  # z-scoring keeps the direction
    entry = {"name": "aum", "column": "aum", "definition": "-", "paper": "-", "polarity": "higher_is_easier",
             "config": {}}
    save_scored_dataset(ds, tmp_path / "scored", scorers=[entry], plots=False)
    for loaded in (datasets.load_from_disk(str(tmp_path / "scored"))["train"],
                   datasets.load_dataset(str(tmp_path / "scored"))["train"]):
        loaded = loaded.select([0, 1, 2, 3]).filter(lambda r: True)
        assert get_polarity(loaded, "aum") == "higher_is_easier"
        assert select_by_score(loaded, "aum", 2, "hardest")["aum"] == [-1.0, 0.1]


def test_register_strategy_and_column_options():
    from hf_influence.selection import StrategyResult, register_strategy

    def middle(scores, m, rng, *, shift_scores=None, skip=0):
        values = scores if shift_scores is None else scores + shift_scores
        order = np.argsort(values, kind="stable")
        start = (len(values) - m) // 2 + skip
        return StrategyResult(order[start:start + m])

    register_strategy("test_middle", middle, defaults={"shift_column": None, "skip": 0},
                      column_options=("shift_column",), overwrite=True)
    ds = _ds([5, 1, 4, 2, 3]).add_column("shift", [0.0, 10.0, 0.0, 0.0, 0.0])
    ds = set_polarity(ds, "shift", "higher_is_harder")
    assert select_by_score(ds, "score", 1, "test_middle")["score"] == [3.0]
    assert select_by_score(ds, "score", 1, "test_middle", shift_column="shift")["score"] == [4.0]  # 1 -> 11
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("test_middle", middle)
    with pytest.raises(ValueError, match="does not take"):
        select_by_score(ds, "score", 1, "test_middle", beta=0.1)
