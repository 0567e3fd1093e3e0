"""hf_influence.testing_utils: compute ops (not views) and host-sync ops counted on hand-written cases."""

from __future__ import annotations

import torch

from hf_influence.testing_utils import OpCounter, count_ops


def test_counts_compute_views_and_syncs_by_hand():
    x = torch.arange(6.0)

    def work():
        y = x.view(2, 3).t()  # two views: no kernel
        z = (y + 1).sum()  # add, sum: two kernels
        return z.item()  # a device-to-host read: a sync (and a compute op)

    compute, syncs = count_ops(work)
    assert (compute, syncs) == (3, 1)
    with OpCounter() as counter:
        work()
    assert counter.by_name["view"] == 1 and counter.by_name["t"] == 1 and counter.by_name["add"] == 1
    assert count_ops(lambda: x[x > 2], sync_ops={"index"})[1] == 1  # a custom set of ops to flag
    assert count_ops(lambda: None) == (0, 0)
