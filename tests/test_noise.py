"""inject_label_noise: counts, modes (paper random relabel vs code permutation), determinism, recorded clean labels."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from datasets import ClassLabel, Dataset

from hf_influence.data import add_example_ids
from hf_influence.noise import inject_label_noise


@pytest.fixture(scope="module")
def snli(shared_dir):
    lines = (shared_dir / "data" / "snli" / "train.jsonl").read_text().splitlines()[:500]
    rows = [json.loads(line) for line in lines]
    ds = Dataset.from_list(rows).cast_column("label", ClassLabel(names=["entailment", "neutral", "contradiction"]))
    return add_example_ids(ds)


def test_permute_keeps_class_marginals_and_records_clean_labels(snli):
    out = inject_label_noise(snli, 0.2, mode="permute", seed=3)
    assert out.column_names == snli.column_names + ["original_label", "is_noisy"]
    assert out.features["label"] == snli.features["label"]  # ClassLabel kept
    assert list(out["original_label"]) == list(snli["label"])
    new, old = np.asarray(out["label"]), np.asarray(snli["label"])
    assert Counter(new.tolist()) == Counter(old.tolist())  # marginals preserved
    changed = new != old
    assert changed.tolist() == list(out["is_noisy"])
    assert 0 < changed.sum() <= 100  # at most floor(0.2 * 500) rows chosen; some keep their label
    assert list(out["premise"]) == list(snli["premise"])


def test_random_mode_counts_and_exclude_original(snli):
    out = inject_label_noise(snli, 0.3, mode="random", seed=0)
    new, old = np.asarray(out["label"]), np.asarray(snli["label"])
    changed = int((new != old).sum())
    # 150 rows relabelled uniformly among 3 classes: about 2/3 of them change (binomial, 5 std = ~29)
    assert abs(changed - 100) < 30
    strict = inject_label_noise(snli, 0.3, mode="random", seed=0, exclude_original=True)
    assert int(np.sum(strict["is_noisy"])) == 150  # floor(0.3 * 500), every one flipped
    assert set(np.asarray(strict["label"]).tolist()) <= {0, 1, 2}
    again = inject_label_noise(snli, 0.3, mode="random", seed=0)
    assert list(again["label"]) == list(out["label"])
    other = inject_label_noise(snli, 0.3, mode="random", seed=1)
    assert list(other["label"]) != list(out["label"])


def test_zero_fraction_and_errors(snli):
    out = inject_label_noise(snli, 0.0)
    assert not any(out["is_noisy"]) and list(out["label"]) == list(snli["label"])
    with pytest.raises(ValueError, match="valid modes are random, permute"):
        inject_label_noise(snli, 0.1, mode="flip")
    with pytest.raises(ValueError, match="fraction"):
        inject_label_noise(snli, 1.5)
    with pytest.raises(ValueError, match="already has"):
        inject_label_noise(out, 0.1)
    with pytest.raises(ValueError, match="Label column 'gold'"):
        inject_label_noise(snli, 0.1, label_column="gold")
    bad = Dataset.from_dict({"label": [0, 1, -1]})
    with pytest.raises(ValueError, match="outside"):
        inject_label_noise(bad, 0.5, num_labels=2)
