"""Per-example signals from logits against a hand loop over examples and tokens (independent formulas)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import count_sync_ops, hand_signals

from hf_influence import signals as signals_module
from hf_influence.signals import SIGNAL_NAMES, causal_lm_signals, classification_signals, token_signals


def test_token_signals_match_hand_formulas_with_ties_and_masked_vocabulary():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    logits[1, 3] = logits[1, 1]  # gold tied with the best other class: margin 0
    logits[2, :] = 1.0  # all tied
    logits[4, 0] = float("-inf")  # a masked vocabulary entry (not gold)
    logits[5, 0] = logits[5].max() + 5  # gold is the clear argmax: runner-up is the second largest
    ours = token_signals(logits, labels)
    for i in range(7):
        expected = hand_signals(logits[i], int(labels[i]))
        for name in SIGNAL_NAMES:
            assert float(ours[name][i]) == pytest.approx(expected[name], rel=1e-5, abs=1e-6), (i, name)
    single = token_signals(torch.randn(3, 1, generator=g), torch.zeros(3, dtype=torch.long))
    assert torch.isinf(single["margin"]).all() and (single["correct"] == 1).all()


@pytest.mark.parametrize("chunk_bytes", [1, 256 * 2**20])
def test_causal_lm_signals_average_label_tokens_in_chunks(monkeypatch, chunk_bytes):
    monkeypatch.setattr(signals_module, "_CAUSAL_LM_CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 11, generator=g) * 2
    labels = torch.randint(0, 11, (4, 6), generator=g)
    labels[0, :3] = -100  # a masked prompt
    labels[1, 4:] = -100  # padding
    labels[2, 1:] = -100  # no label token at all: NaN
    logits[1, 4:] = float("nan")  # garbage at ignored positions must not leak into the mean
    ours = causal_lm_signals(logits, labels)
    assert ours["num_tokens"].tolist() == [3, 3, 0, 5]
    for i in range(4):
        tokens = [hand_signals(logits[i, t - 1], int(labels[i, t])) for t in range(1, 6) if labels[i, t] != -100]
        for name in SIGNAL_NAMES:
            if not tokens:
                assert math.isnan(float(ours[name][i]))
                continue
            expected = sum(token[name] for token in tokens) / len(tokens)
            assert float(ours[name][i]) == pytest.approx(expected, rel=1e-5, abs=1e-6), (i, name)


def test_label_range_errors():
    with pytest.raises(ValueError, match=r"Label token ids must lie in \[0, 11\)"):
        causal_lm_signals(torch.zeros(1, 3, 11), torch.tensor([[-100, 4, 11]]))
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\)"):
        classification_signals(torch.zeros(2, 3), torch.tensor([0, -1]))


def test_causal_lm_signals_without_check_add_no_host_sync():
    """Inside the training loop the signals must not stall a GPU queue (no nonzero/item/boolean indexing)."""
    logits, labels = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    labels[0, :2] = -100

    def unchecked():
        causal_lm_signals(logits, labels, check=False)
        token_signals(logits[:, 0], labels[:, 0].clamp_min(0))

    assert count_sync_ops(unchecked) == 0
    assert count_sync_ops(lambda: causal_lm_signals(logits, labels)) > 0  # the checked form syncs for its range test
