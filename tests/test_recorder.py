"""SignalRecorder on its own (no Trainer): buffering, deferred signals, gathering, de-duplication, the store's life
cycle. Signals are checked against `conftest.hand_signals` (float64, from the definitions)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import hand_signals

import hf_influence.recorder as recorder_module
from hf_influence.recorder import SignalRecorder, drop_repeated_records
from hf_influence.signals import SIGNAL_NAMES
from hf_influence.store import DENSE, PRESENTATIONS, SignalStore


def classification_batches(num_batches: int = 3, batch: int = 4, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(num_batches):
        ids = torch.arange(b * batch, (b + 1) * batch)
        logits = torch.randn(batch, classes, generator=g) * 3
        out.append((ids, logits, torch.randint(0, classes, (batch,), generator=g)))
    return out


def expected_rows(batches, epoch: int, first_step: int = 0) -> pd.DataFrame:
    rows = []
    for step, (ids, logits, labels) in enumerate(batches, start=first_step):
        for i in range(ids.shape[0]):
            rows.append({"example_id": int(ids[i]), "epoch": epoch, "step": step,
                         **hand_signals(logits[i], int(labels[i]))})
    return pd.DataFrame(rows)


def assert_records(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    got = got.sort_values(["epoch", "example_id", "step"]).reset_index(drop=True)
    expected = expected.sort_values(["epoch", "example_id", "step"]).reset_index(drop=True)
    for column in ("example_id", "epoch", "step"):
        np.testing.assert_array_equal(got[column].to_numpy(), expected[column].to_numpy())
    for name in SIGNAL_NAMES:
        np.testing.assert_allclose(got[name].to_numpy(np.float64), expected[name].to_numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bound", [1, 1 << 40])
def test_classification_presentations_deferred_or_not_equal_hand_signals(monkeypatch, bound):
    """Logits wait in the buffer until a flush (or until the byte bound is passed, here at every record): the stored
    records equal the hand-computed signals either way, with ids, epochs and steps as recorded."""
    monkeypatch.setattr(recorder_module, "DEFERRED_LOGITS_BYTES", bound)
    recorder = SignalRecorder("sequence_classification")
    store = SignalStore()
    batches = classification_batches()
    for step, (ids, logits, labels) in enumerate(batches):
        recorder.record_presentation(ids, logits, labels, step=step, epoch=1)
        waiting = sum("logits" in entry for entry in recorder.buffers[PRESENTATIONS])
        assert waiting == (0 if bound == 1 else step + 1)
    recorder.flush(store)
    assert recorder.buffers == {PRESENTATIONS: [], DENSE: []}
    assert_records(store.records(), expected_rows(batches, epoch=1))
    assert len(store.dense_records()) == 0


def test_immediate_presentation_exposes_values_and_causal_lm_is_per_example_token_mean():
    recorder = SignalRecorder("sequence_classification")
    (ids, logits, labels), = classification_batches(1)
    entry = recorder.record_presentation(ids, logits, labels, step=0, epoch=0, immediate=True)
    losses = entry["values"][:, SIGNAL_NAMES.index("loss")]
    torch.testing.assert_close(losses, F.cross_entropy(logits.double(), labels, reduction="none").float())

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 7, generator=g)
    labels = torch.randint(0, 7, (3, 5), generator=g)
    labels[1, 2:] = -100  # a shorter example
    labels[2, 1:] = -100  # no label token after the shift: NaN
    lm = SignalRecorder("causal_lm")
    entry = lm.record_presentation(torch.tensor([7, 8, 9]), logits, labels, step=3, epoch=0)
    assert "logits" not in entry  # reduced at once (causal-LM logits are large)
    assert entry["num_tokens"].tolist() == [4, 1, 0]
    store = SignalStore()
    lm.flush(store)
    records = store.records().sort_values("example_id")
    for row, example in zip(records.itertuples(), range(3)):
        tokens = [(t, int(labels[example, t + 1])) for t in range(4) if labels[example, t + 1] != -100]
        if not tokens:
            assert math.isnan(row.loss)
            continue
        expected = np.mean([hand_signals(logits[example, t], gold)["loss"] for t, gold in tokens])
        assert row.loss == pytest.approx(expected, rel=1e-5)


def test_grad_norm_column_and_dense_records():
    recorder = SignalRecorder("sequence_classification", record_grad_norm=True)
    batches = classification_batches(2)
    entries = [recorder.record_presentation(ids, logits, labels, step=s, epoch=0, immediate=True)
               for s, (ids, logits, labels) in enumerate(batches)]
    recorder.set_grad_norm(entries[0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    for step, (ids, logits, labels) in enumerate(batches):
        recorder.record_dense(ids, logits, labels, step=10 + step, epoch=0)
    store = SignalStore()
    recorder.flush(store)
    records = store.records().sort_values("example_id")
    np.testing.assert_array_equal(records["grad_norm"].to_numpy()[:4], [1.0, 2.0, 3.0, 4.0])
    assert records["grad_norm"].iloc[4:].isna().all()
    assert_records(store.dense_records(), expected_rows(batches, epoch=0, first_step=10))


def test_drop_repeated_records_keeps_first_presentation_and_skips_stored_keys():
    frame = pd.DataFrame({"example_id": [3, 1, 3, 2, 1], "epoch": [0, 0, 0, 0, 1], "step": [5, 4, 2, 4, 9],
                          "loss": [0.5, 0.1, 0.3, 0.2, 0.9]})
    kept = drop_repeated_records(frame, ("example_id", "epoch"))
    assert list(zip(kept.example_id, kept.epoch, kept.step)) == [(3, 0, 2), (1, 0, 4), (2, 0, 4), (1, 1, 9)]
    seen = pd.MultiIndex.from_tuples([(1, 0), (2, 5)], names=["example_id", "epoch"])
    kept = drop_repeated_records(frame, ("example_id", "epoch"), seen)
    assert list(zip(kept.example_id, kept.epoch)) == [(3, 0), (2, 0), (1, 1)]


def test_flush_gathers_over_processes_and_records_ddp_repeats_once():
    """Two simulated processes: the other one's tables arrive through `gather`; the samples DDP repeated to even out
    the last batch (here example 0 again, at a later step) and keys already stored are recorded once."""
    batches = classification_batches(2, batch=2)
    other = SignalRecorder("sequence_classification")
    other.record_presentation(torch.tensor([4, 0]), batches[1][1], batches[1][2], step=1, epoch=0)
    other.record_dense(torch.tensor([4, 0]), batches[1][1], batches[1][2], step=1, epoch=0)
    other.record_dense(torch.tensor([0]), batches[1][1][:1], batches[1][2][:1], step=1, epoch=0)  # repeated
    other_tables = [other.drain(PRESENTATIONS), other.drain(DENSE)]  # in the order the recorder flushes them
    calls = []

    def gather(objects: list) -> list:
        calls.append(len(objects))
        return objects + [other_tables.pop(0) if other_tables else objects[0].iloc[0:0]]

    recorder = SignalRecorder("sequence_classification", gather=gather)
    store = SignalStore()
    recorder.record_presentation(torch.tensor([0, 1]), batches[0][1], batches[0][2], step=0, epoch=0)
    recorder.flush(store)
    records = store.records()
    assert sorted(records.example_id) == [0, 1, 4]
    assert int(records.loc[records.example_id == 0, "step"].iloc[0]) == 0  # the first presentation wins
    assert sorted(store.dense_records().example_id) == [0, 4]  # (example, step) once
    assert calls == [1, 1]  # one gather per kind, on every process alike
    # a later flush meeting an already stored (example, epoch) does not add it again
    recorder.record_presentation(torch.tensor([1, 2]), batches[0][1], batches[0][2], step=2, epoch=0)
    recorder.flush(store)
    assert sorted(store.records().example_id) == [0, 1, 2, 4]


def test_nan_loss_warned_once(monkeypatch):
    warnings = []
    monkeypatch.setattr(recorder_module.logger, "warning", lambda message, *a, **k: warnings.append(message))
    recorder = SignalRecorder("sequence_classification")
    store = SignalStore()
    logits = torch.tensor([[float("nan"), 0.0], [1.0, 0.0]])
    for epoch in range(2):
        recorder.record_presentation(torch.tensor([0, 1]), logits, torch.tensor([0, 1]), step=epoch, epoch=epoch)
        recorder.flush(store)
    assert store.records().loc[lambda f: f.example_id == 0, "loss"].isna().all()
    assert len([w for w in warnings if "NaN loss" in w]) == 1


def test_store_life_cycle(tmp_path):
    path = str(tmp_path / "signals")
    batches = classification_batches(3, batch=2)
    barriers = []

    def run(recorder: SignalRecorder, first_step: int, **kwargs) -> SignalStore:
        store = recorder.open_store(path, {"config": {"seed": 1}}, first_step, resume_keys=("seed",),
                                    barrier=lambda: barriers.append(1), **kwargs)
        for step, (ids, logits, labels) in enumerate(batches[first_step:], start=first_step):
            recorder.record_presentation(ids, logits, labels, step=step, epoch=0)
        recorder.flush()
        return store

    store = run(SignalRecorder("sequence_classification"), 0)
    assert len(store) == 6 and len(SignalStore.load(path)) == 6 and barriers == [1, 1]
    with pytest.raises(ValueError, match="already holds a signal store"):
        SignalRecorder("sequence_classification").open_store(path, {}, 0)
    # resumed from the checkpoint at step 1: the presentations of steps >= 1 are recorded again, not twice
    resumed = run(SignalRecorder("sequence_classification"), 1)
    assert sorted(resumed.records().step) == [0, 0, 1, 1, 2, 2]
    assert_records(SignalStore.load(path).records(), expected_rows(batches, epoch=0))
    with pytest.raises(ValueError):
        SignalRecorder("sequence_classification").open_store(path, {"config": {"seed": 2}}, 1, resume_keys=("seed",))
    # the loop restarted within one run: the current store drops steps >= 2 and buffers are cleared
    recorder = SignalRecorder("sequence_classification")
    run(recorder, 0, overwrite=True)
    recorder.record_presentation(*batches[0], step=5, epoch=0)
    same = recorder.open_store(path, {}, 2, restarted=True)
    assert same is recorder.store and sorted(same.records().step) == [0, 0, 1, 1]
    assert recorder.buffers[PRESENTATIONS] == []
    with pytest.raises(RuntimeError, match="needs a store"):
        SignalRecorder("sequence_classification").flush()
