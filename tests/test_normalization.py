"""Dataset- and class-normalised z-scores against hand computations and a per-class loop on real SNLI rows."""

from __future__ import annotations

import json
import logging
import math
import statistics

import numpy as np
import pytest
from datasets import Dataset

from hf_influence.normalization import (
    add_normalized_column,
    class_zscore,
    class_zscore_column,
    dataset_zscore,
    dataset_zscore_column,
    minmax_scale,
)


@pytest.fixture(scope="module")
def snli(shared_dir):
    lines = (shared_dir / "data" / "snli" / "train.jsonl").read_text().splitlines()[:200]
    rows = [json.loads(line) for line in lines]
    return Dataset.from_dict(
        {"hyp_len": [float(len(r["hypothesis"].split())) for r in rows], "label": [r["label"] for r in rows]}
    )


def test_hand_cases():
    # mean 2, population std sqrt(2/3)
    np.testing.assert_allclose(dataset_zscore([1, 2, 3]), np.array([-1, 0, 1]) / math.sqrt(2 / 3))
    np.testing.assert_allclose(class_zscore([1, 3, 10, 20, 7], [0, 0, 1, 1, 2]), [-1, 1, -1, 1, 0])
    out = dataset_zscore([1.0, float("nan"), 3.0])
    assert out[0] == -1 and math.isnan(out[1]) and out[2] == 1
    np.testing.assert_allclose(minmax_scale([2, 4, 10]), [0, 0.25, 1])


def test_zero_std_class_warns_and_gives_zeros(caplog):
    with caplog.at_level(logging.WARNING):
        out = class_zscore([5.0, 5.0, 1.0, 2.0], ["a", "a", "b", "b"])
    assert "Class 'a' has zero standard deviation" in caplog.text
    np.testing.assert_allclose(out, [0, 0, -1, 1])
    with pytest.raises(ValueError, match="infinite"):
        dataset_zscore([1.0, float("inf")])
    with pytest.raises(ValueError, match="all NaN"):
        dataset_zscore([float("nan")])
    with pytest.raises(ValueError, match="one label per value"):
        class_zscore([1.0, 2.0], [0])


def test_snli_columns_match_statistics_module(snli):
    values = list(snli["hyp_len"])
    labels = list(snli["label"])
    out = class_zscore_column(dataset_zscore_column(snli, "hyp_len"), "hyp_len")
    assert out.features["hyp_len_dataset_z"].dtype == "float32"
    mu, sd = statistics.fmean(values), statistics.pstdev(values)
    np.testing.assert_allclose(out["hyp_len_dataset_z"], [(v - mu) / sd for v in values], rtol=1e-5)
    expected = []
    for v, y in zip(values, labels):
        members = [w for w, z in zip(values, labels) if z == y]
        expected.append((v - statistics.fmean(members)) / statistics.pstdev(members))
    np.testing.assert_allclose(out["hyp_len_class_z"], expected, rtol=1e-5, atol=1e-6)
    # per class: mean 0, population std 1
    z = np.asarray(out["hyp_len_class_z"], dtype=np.float64)
    for y in set(labels):
        members = z[np.asarray(labels) == y]
        assert abs(members.mean()) < 1e-5 and members.std() == pytest.approx(1.0, rel=1e-5)


def test_add_column_errors(snli):
    with pytest.raises(ValueError, match="valid values are dataset, class, minmax"):
        add_normalized_column(snli, "hyp_len", by="rank")
    with pytest.raises(ValueError, match="not in the dataset"):
        add_normalized_column(snli, "vog")
    with pytest.raises(ValueError, match="label column 'gold'"):
        add_normalized_column(snli, "hyp_len", by="class", label_column="gold")
    once = add_normalized_column(snli, "hyp_len", by="minmax")
    with pytest.raises(ValueError, match="already exists"):
        add_normalized_column(once, "hyp_len", by="minmax")
    twice = add_normalized_column(once, "hyp_len", by="minmax", overwrite=True)
    assert twice.column_names == once.column_names
