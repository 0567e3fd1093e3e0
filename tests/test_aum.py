"""hf_influence.aum (AUM threshold samples): count floor(N/(C+1)), fake class C, disjoint second set, cutoff."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import random_classification_dataset

from hf_influence.aum import add_threshold_samples, aum_threshold, flag_mislabeled
from hf_influence.data import add_example_ids


def test_threshold_samples_count_and_relabel():
    ds = add_example_ids(random_classification_dataset(n=22, num_labels=3))
    out, ids = add_threshold_samples(ds, num_labels=3, seed=1)
    assert len(ids) == 22 // 4 == 5 and ids == sorted(set(ids))
    labels, old = np.asarray(out["label"]), np.asarray(ds["label"])
    chosen = np.isin(np.asarray(out["example_id"]), ids)
    assert (labels[chosen] == 3).all() and (labels[~chosen] == old[~chosen]).all()
    assert list(out["is_threshold_sample"]) == chosen.tolist()
    again, ids_again = add_threshold_samples(ds, num_labels=3, seed=1)
    assert ids_again == ids
    second, ids2 = add_threshold_samples(ds, num_labels=3, seed=1, exclude_ids=ids)
    assert len(ids2) == 5 and not set(ids) & set(ids2)
    with pytest.raises(ValueError, match="add_example_ids"):
        add_threshold_samples(random_classification_dataset(n=22), num_labels=3)
    with pytest.raises(ValueError, match="already has"):
        add_threshold_samples(out, num_labels=3)
    with pytest.raises(ValueError, match="outside"):
        add_threshold_samples(ds, num_labels=2)


def test_flag_mislabeled_percentile_by_hand():
    # threshold samples 100..104 with AUM -3, -2, -1, 0, 1: numpy linear 99th percentile = 0 + 0.96 * 1 = 0.96
    aum = pd.Series({0: 2.5, 1: 0.5, 2: 0.96, 3: -4.0, 4: float("nan"), 100: -3, 101: -2, 102: -1, 103: 0, 104: 1})
    assert aum_threshold(aum, [100, 101, 102, 103, 104]) == pytest.approx(0.96)
    assert aum_threshold(aum, [100, 101, 102, 103, 104], percentile=50) == pytest.approx(-1.0)
    flags = flag_mislabeled(aum.rename("aum").to_frame(), [100, 101, 102, 103, 104])
    assert flags.to_dict() == {0: False, 1: True, 2: False, 3: True, 4: False}
    assert flags.attrs["aum_threshold"] == pytest.approx(0.96)
    with pytest.raises(ValueError, match="threshold ids have no AUM"):
        flag_mislabeled(aum, [100, 999])
    with pytest.raises(ValueError, match="percentile"):
        aum_threshold(aum, [100], percentile=101)
    with pytest.raises(TypeError, match="aum_by_id"):
        flag_mislabeled([1, 2], [0])


def test_aum_helpers_stay_importable_from_their_old_homes():
    import hf_influence
    from hf_influence import scorers

    assert scorers.add_threshold_samples is add_threshold_samples and scorers.flag_mislabeled is flag_mislabeled
    assert hf_influence.add_threshold_samples is add_threshold_samples
    assert hf_influence.flag_mislabeled is flag_mislabeled
