"""SignalStore: summary formulas against hand computations, combine + Spearman, on-disk chunks, truncate, refusal."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from hf_influence.store import SignalStore

# (example_id, epoch, step, correct, prob_gold, margin, loss, el2n)
ROWS = [
    (0, 0, 0, 1.0, 0.6, 0.5, 0.51, 0.40),
    (0, 0, 3, 0.0, 0.3, -0.2, 1.20, 0.90),
    (0, 1, 5, 1.0, 0.8, 1.0, 0.22, 0.20),
    (1, 0, 1, 0.0, 0.1, -1.0, 2.30, 1.20),
    (1, 1, 4, 0.0, 0.2, -0.5, 1.61, 1.00),
    (2, 0, 2, 1.0, 0.9, 2.0, 0.10, 0.10),
    (2, 1, 6, 1.0, 0.95, 3.0, 0.05, 0.05),
    # example 3: learned, forgotten, relearned, forgotten (presented out of step order in the frame)
    (3, 1, 9, 0.0, 0.4, -0.1, 0.9, 0.7),
    (3, 0, 1, 1.0, 0.7, 0.3, 0.35, 0.3),
    (3, 0, 2, 0.0, 0.45, -0.05, 0.8, 0.6),
    (3, 1, 8, 1.0, 0.6, 0.2, 0.5, 0.5),
]


def _frame(rows=ROWS, entropy=0.5):
    columns = ["example_id", "epoch", "step", "correct", "prob_gold", "margin", "loss", "el2n"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["entropy"] = entropy
    return frame


def _hand_summary(rows, burn_out=None, ddof=0):
    """Straight loops over the rows, following Toneva / Pleiss / Swayamdipta / Paul (cartography over the first
    `burn_out` epochs, std with `ddof`)."""
    out = {}
    for example in sorted({r[0] for r in rows}):
        own = sorted([r for r in rows if r[0] == example], key=lambda r: r[2])
        correct = [r[3] for r in own]
        events = sum(1 for a, b in zip(correct, correct[1:]) if a > b)
        forgetting = events if max(correct) > 0 else math.inf
        epochs = sorted({r[1] for r in own})
        prob_by_epoch = [np.mean([r[4] for r in own if r[1] == e]) for e in epochs]
        correct_by_epoch = [np.mean([r[3] for r in own if r[1] == e]) for e in epochs]
        kept = [i for i, e in enumerate(epochs) if burn_out is None or e < burn_out]
        prob_kept = [prob_by_epoch[i] for i in kept]
        mu = sum(prob_kept) / len(kept)
        sigma = math.sqrt(sum((p - mu) ** 2 for p in prob_kept) / (len(kept) - ddof))
        entry = {
            "forgetting": forgetting,
            "aum": sum(r[5] for r in own) / len(own),
            "confidence": mu,
            "variability": sigma,
            "correctness": sum(correct_by_epoch[i] for i in kept) / len(kept),
            "mean_loss": sum(r[6] for r in own) / len(own),
        }
        for e in epochs:
            entry[f"el2n_epoch_{e}"] = np.mean([r[7] for r in own if r[1] == e])
        out[example] = entry
    return out


def test_summary_matches_hand_computation():
    summary = SignalStore.from_records(_frame()).summary()
    expected = _hand_summary(ROWS)
    assert list(summary.index) == [0, 1, 2, 3]
    assert summary.index.name == "example_id"
    for example, entry in expected.items():
        for column, value in entry.items():
            got = summary.loc[example, column]
            if math.isinf(value):
                assert math.isinf(got), (example, column, got)
            else:
                assert got == pytest.approx(value, abs=1e-6), (example, column)
    # spot checks of the hand numbers themselves
    assert summary.loc[0, "forgetting"] == 1 and summary.loc[3, "forgetting"] == 2
    assert summary.loc[2, "forgetting"] == 0
    assert math.isinf(summary.loc[1, "forgetting"])
    assert summary.loc[0, "confidence"] == pytest.approx((0.45 + 0.8) / 2, abs=1e-6)
    assert summary.loc[0, "variability"] == pytest.approx(0.175, abs=1e-6)
    assert summary.loc[0, "correctness"] == pytest.approx(0.75)


@pytest.mark.parametrize(("burn_out", "ddof"), [(1, 0), (None, 1), (2, 1)])
def test_cartography_burn_out_and_bias_corrected_variability(burn_out, ddof):
    """The cartography code's options: dynamics of the first `burn_out` epochs only, bias-corrected std; the other
    columns keep every epoch; the options reach the dataset card through DynamicsScorer."""
    from hf_influence.scorers import DynamicsScorer

    summary = SignalStore.from_records(_frame()).summary(burn_out=burn_out, variability_ddof=ddof)
    for example, entry in _hand_summary(ROWS, burn_out=burn_out, ddof=ddof).items():
        for column, value in entry.items():
            if not math.isinf(value):
                assert summary.loc[example, column] == pytest.approx(value, abs=1e-6), (example, column)
    assert summary.attrs["cartography"] == {"burn_out": burn_out, "variability_ddof": ddof}
    entries = {e["name"]: e for e in DynamicsScorer(summary, ["variability", "aum"]).card_entries()}
    assert ("bias-corrected" in entries["variability"]["definition"]) == (ddof == 1)
    assert ("burn_out" in entries["variability"]["definition"]) == (burn_out is not None)
    assert "burn_out" not in entries["aum"]["definition"]


def test_accumulated_el2n_sums_the_first_epochs_presentations():
    """The CCS code's EL2N: a sum over training presentations of the first k epochs (hand sums over ROWS)."""
    summary = SignalStore.from_records(_frame()).summary(accumulated_el2n_epochs=1)
    for example in sorted({r[0] for r in ROWS}):
        expected = sum(r[7] for r in ROWS if r[0] == example and r[1] < 1)
        assert summary.loc[example, "el2n_accumulated"] == pytest.approx(expected, abs=1e-6)  # float32 store
    both = SignalStore.from_records(_frame()).summary(accumulated_el2n_epochs=2)
    assert both.loc[3, "el2n_accumulated"] == pytest.approx(0.7 + 0.3 + 0.6 + 0.5, abs=1e-6)
    assert "el2n_accumulated" not in SignalStore.from_records(_frame()).summary().columns
    with pytest.raises(ValueError, match="accumulated_el2n_epochs must be a positive number of epochs"):
        SignalStore.from_records(_frame()).summary(accumulated_el2n_epochs=0)


def test_accumulated_probability_margin_matches_softmax_of_the_logits():
    """The CCS code's accumulated_margin, sum of p_y - max_{k!=y} p_k, recovered from the stored loss and logit margin
    equals the same sum from a softmax of the logits (including a confidently wrong presentation whose p_y underflows
    float32, where the margin is about -1)."""
    import torch

    from hf_influence.scorers import DynamicsScorer
    from hf_influence.signals import token_signals

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 5, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (12,), generator=generator)
    logits[7] = 0.0
    logits[7, (labels[7] + 1) % 5] = 150.0  # p_y = e^-150: 0 in float32
    signals = token_signals(logits.float(), labels)
    frame = pd.DataFrame({"example_id": np.arange(12) % 4, "epoch": np.arange(12) // 4 % 2, "step": np.arange(12),
                          **{name: values.numpy() for name, values in signals.items()}})
    assert frame.loc[7, "prob_gold"] == 0.0
    probs = logits.softmax(-1)
    gold = probs.gather(1, labels[:, None]).squeeze(1)
    runner_up = probs.scatter(1, labels[:, None], -1.0).max(dim=1).values
    direct = (gold - runner_up).numpy()
    for epochs in (1, 2):
        summary = SignalStore.from_records(frame).summary(accumulated_margin_epochs=epochs)
        for example in range(4):
            rows = (frame["example_id"] == example) & (frame["epoch"] < epochs)
            assert summary.loc[example, "prob_margin_accumulated"] == pytest.approx(direct[rows].sum(), abs=1e-5)
        assert summary.attrs["accumulated_epochs"] == {"prob_margin_accumulated": epochs}
    assert direct[7] == pytest.approx(-1.0)
    entry = DynamicsScorer(summary, ["prob_margin_accumulated"]).card_entries()[0]
    assert "first 2 epoch(s)" in entry["definition"] and entry["polarity"] == "higher_is_easier"
    assert "prob_margin_accumulated" not in SignalStore.from_records(frame).summary().columns
    with pytest.raises(ValueError, match="accumulated_margin_epochs must be a positive number of epochs"):
        SignalStore.from_records(frame).summary(accumulated_margin_epochs=0)
    causal = SignalStore.from_records(frame, metadata={"config": {"task": "causal_lm"}})
    with pytest.raises(ValueError, match="causal LM"):
        causal.summary(accumulated_margin_epochs=1)


def test_cartography_option_errors():
    store = SignalStore.from_records(_frame())
    with pytest.raises(ValueError, match="burn_out must be a positive number of epochs"):
        store.summary(burn_out=0)
    with pytest.raises(ValueError, match="variability_ddof must be 0"):
        store.summary(variability_ddof=2)


def test_dense_forgetting_is_default_when_present():
    dense_rows = [(0, 0, 2, 1.0), (0, 0, 4, 0.0), (0, 0, 6, 1.0), (0, 1, 8, 0.0),
                  (1, 0, 2, 0.0), (1, 0, 4, 0.0), (2, 0, 2, 1.0), (2, 0, 4, 1.0), (3, 0, 2, 0.0), (3, 0, 4, 1.0)]
    dense = pd.DataFrame(dense_rows, columns=["example_id", "epoch", "step", "correct"])
    for name in ("prob_gold", "margin", "loss", "el2n", "entropy"):
        dense[name] = 0.0
    store = SignalStore.from_records(_frame(), dense=dense)
    default = store.summary()
    assert default.loc[0, "forgetting"] == 2  # 1,0,1,0
    assert math.isinf(default.loc[1, "forgetting"])
    assert default.loc[2, "forgetting"] == 0 and default.loc[3, "forgetting"] == 0
    presentations = store.summary(forgetting_source="presentations")
    assert presentations.loc[3, "forgetting"] == 2
    # the other columns do not depend on the forgetting source
    pd.testing.assert_frame_equal(default.drop(columns="forgetting"), presentations.drop(columns="forgetting"))
    with pytest.raises(ValueError, match="forgetting_source"):
        store.summary(forgetting_source="eval")
    with pytest.raises(ValueError, match="no dense table"):
        SignalStore.from_records(_frame()).summary(forgetting_source="dense")


def test_nan_signals_are_skipped_by_means():
    rows = [list(r) for r in ROWS]
    rows[0][6] = float("nan")  # NaN loss of example 0 at step 0
    summary = SignalStore.from_records(_frame(rows)).summary()
    assert summary.loc[0, "mean_loss"] == pytest.approx((1.20 + 0.22) / 2)


def test_combine_mean_and_spearman():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        rows = [(i, e, 10 * e + i, float(rng.integers(0, 2)), float(rng.uniform()), float(rng.normal()),
                 float(rng.uniform(0, 3)), float(rng.uniform())) for i in range(9) for e in range(2)]
        frames.append(_frame(rows))
    stores = [SignalStore.from_records(f, metadata={"num_examples": 9}) for f in frames]
    summaries = [s.summary() for s in stores]
    combined, stability = SignalStore.combine(stores)
    for column in ("aum", "confidence", "mean_loss", "el2n_epoch_1"):
        np.testing.assert_allclose(combined[column], np.mean([s[column] for s in summaries], axis=0), atol=1e-9)

        def rank(x):
            return pd.Series(x).rank().to_numpy()

        pairs = [(0, 1), (0, 2), (1, 2)]
        expected = np.mean([np.corrcoef(rank(summaries[a][column]), rank(summaries[b][column]))[0, 1]
                            for a, b in pairs])
        assert stability[column] == pytest.approx(expected, abs=1e-9)
    # identical runs are perfectly stable
    _, same = SignalStore.combine([stores[0], SignalStore.from_records(frames[0])])
    assert same["aum"] == pytest.approx(1.0)
    # a single run: mean = itself, stability undefined
    alone, single = SignalStore.combine([stores[0]])
    pd.testing.assert_series_equal(alone["aum"], summaries[0]["aum"], check_names=False)
    assert math.isnan(single["aum"])


def test_combine_refuses_different_datasets():
    a = SignalStore.from_records(_frame(), metadata={"dataset_fingerprint": "abc", "num_examples": 4})
    b = SignalStore.from_records(_frame(), metadata={"dataset_fingerprint": "xyz", "num_examples": 4})
    with pytest.raises(ValueError, match="different datasets"):
        SignalStore.combine([a, b])
    with pytest.raises(ValueError, match="at least one"):
        SignalStore.combine([])


def test_on_disk_chunks_reload_and_truncate(tmp_path):
    path = tmp_path / "signals"
    store = SignalStore(path, {"num_examples": 4, "dataset_fingerprint": "f"})
    store.initialize()
    frame = _frame()
    store.append(frame[frame.step <= 3])
    store.append(frame[frame.step > 3])
    dense = frame.assign(step=frame.step + 1)
    store.append(dense, kind="dense")
    assert sorted(os.listdir(path)) == ["dense-000002.parquet", "metadata.json", "presentations-000000.parquet",
                                        "presentations-000001.parquet"]
    loaded = SignalStore.load(path)
    assert loaded.metadata == {"num_examples": 4, "dataset_fingerprint": "f"}
    pd.testing.assert_frame_equal(loaded.records(), store.records())
    assert loaded.records()["example_id"].dtype == np.int64 and loaded.records()["loss"].dtype == np.float32
    # resume at global step 5: presentations at steps >= 5 and dense evaluations after step 5 are dropped
    loaded.write = True
    loaded.truncate(5)
    reloaded = SignalStore.load(path)
    assert sorted(reloaded.records()["step"]) == sorted(s for s in frame.step if s < 5)
    assert sorted(reloaded.dense_records()["step"]) == sorted(s + 1 for s in frame.step if s + 1 <= 5)
    assert not [n for n in os.listdir(path) if ".tmp" in n]
    assert len([n for n in os.listdir(path) if n.startswith("presentations")]) == 1


def test_check_compatible_refuses_with_reason():
    store = SignalStore.from_records(_frame(), metadata={"dataset_fingerprint": "abc", "num_examples": 4,
                                                        "config": {"seed": 1, "learning_rate": 0.1}})
    store.check_compatible({"dataset_fingerprint": "abc", "num_examples": 4, "config": {"seed": 1}}, ("seed",))
    with pytest.raises(ValueError, match="num_examples: store has 4, this run has 5"):
        store.check_compatible({"dataset_fingerprint": "abc", "num_examples": 5})
    with pytest.raises(ValueError, match="config.seed"):
        store.check_compatible({"dataset_fingerprint": "abc", "num_examples": 4, "config": {"seed": 2}}, ("seed",))


def test_bad_inputs():
    with pytest.raises(ValueError, match="lack the columns"):
        SignalStore.from_records(pd.DataFrame({"example_id": [0], "epoch": [0]}))
    with pytest.raises(FileNotFoundError, match="No signal store"):
        SignalStore.load("/nonexistent/signals")
    empty = SignalStore.from_records(_frame().iloc[:0])
    with pytest.raises(ValueError, match="no presentations"):
        empty.summary()


def _dense_evaluations(num_examples=40, steps=(2, 4, 6, 8, 10, 12), seed=0):
    """One dense table per evaluation step: random correctness (some fractional, as causal-LM token means, and
    some NaN), examples in shuffled order, ids not contiguous."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10_000, size=num_examples, replace=False)
    tables = []
    for step in steps:
        correct = rng.choice([0.0, 1.0, 0.5, np.nan], size=num_examples, p=[0.4, 0.45, 0.1, 0.05])
        correct[ids == ids.min()] = 0.0  # an example never learned
        table = pd.DataFrame({"example_id": ids, "epoch": step // 7, "step": step, "correct": correct})
        table = table.sample(frac=1, random_state=step)
        for name in ("prob_gold", "margin", "loss", "el2n", "entropy"):
            table[name] = rng.random(num_examples)
        tables.append(table)
    return ids, tables


def _presentations(ids, seed=1):
    rng = np.random.default_rng(seed)
    rows = [(int(i), e, 3 * e + k, float(rng.integers(0, 2)), rng.random(), rng.normal(), rng.random(), rng.random())
            for e in range(2) for k, i in enumerate(ids)]
    return _frame(rows)


def test_streamed_dense_forgetting_equals_the_table_computation(tmp_path):
    from hf_influence.store import ForgettingCounter, forgetting_events, summarize_records

    ids, tables = _dense_evaluations()
    table = pd.concat(tables, ignore_index=True)
    reference = forgetting_events(table)
    assert np.isinf(reference).any() and (reference > 1).any()  # never-learned and repeatedly forgotten examples
    # two evaluations per chunk, and a chunk of two evaluations' rows interleaved
    chunks = [pd.concat(tables[i : i + 2]).sample(frac=1, random_state=i) for i in range(0, len(tables), 2)]
    counter = ForgettingCounter()
    for chunk in chunks:
        counter.update(chunk)
    assert counter.in_order
    pd.testing.assert_series_equal(counter.result(), reference)
    counter = ForgettingCounter()  # one evaluation per chunk in id order, as the trainer records them (no sort)
    for one in tables:
        counter.update(one.sort_values("example_id"))
    pd.testing.assert_series_equal(counter.result(), reference)

    records = _presentations(ids)
    store = SignalStore(tmp_path / "signals", {"num_examples": len(ids)})
    store.initialize()
    store.append(records)
    store.append(chunks[0], kind="dense")
    store.summary()  # counts the first chunk; later appends are counted as they come
    for chunk in chunks[1:]:
        store.append(chunk, kind="dense")
    assert not [e for e in store._frames["dense"] if isinstance(e, pd.DataFrame)], "dense rows kept in memory"
    records = store.records()  # as stored (float32)
    expected = summarize_records(records, table)  # today's table-based summary
    pd.testing.assert_frame_equal(store.summary(), expected)
    pd.testing.assert_frame_equal(SignalStore.load(tmp_path / "signals").summary(), expected)
    pd.testing.assert_frame_equal(SignalStore.from_records(records, table).summary(), expected)
    dense = SignalStore.load(tmp_path / "signals").dense_records()
    pd.testing.assert_frame_equal(dense.sort_values(["step", "example_id"]).reset_index(drop=True),
                                  store.dense_records().sort_values(["step", "example_id"]).reset_index(drop=True))
    assert len(dense) == len(table)

    # truncation at step 7, by a store that writes and by one that only reads (files untouched)
    reader = SignalStore.load(tmp_path / "signals")
    reader.truncate(7)
    early = table[table.step <= 7]
    expected_early = summarize_records(records[records.step < 7], early)
    pd.testing.assert_frame_equal(reader.summary(), expected_early)
    assert reader.existing_keys("dense", ["example_id", "step"]).size == len(early)
    keys = reader.existing_keys("dense", ["example_id", "step"], steps=(5, 7))
    assert sorted(keys) == sorted(map(tuple, early[early.step >= 5][["example_id", "step"]].to_numpy()))
    first_step = reader.existing_keys("presentations", ["example_id", "epoch"], steps=(0, 0))
    assert first_step.size == (records.step == 0).sum() > 0
    store.truncate(7)
    pd.testing.assert_frame_equal(store.summary(), expected_early)
    pd.testing.assert_frame_equal(SignalStore.load(tmp_path / "signals").summary(), expected_early)


def test_out_of_order_dense_chunks_fall_back_to_the_table(caplog):
    from hf_influence.store import forgetting_events

    ids, tables = _dense_evaluations(num_examples=12, seed=3)
    store = SignalStore.from_records(_presentations(ids))
    for table in reversed(tables):  # later evaluations recorded first
        store.append(table, kind="dense")
    forgetting = store.dense_forgetting()
    pd.testing.assert_series_equal(forgetting, forgetting_events(pd.concat(tables[::-1], ignore_index=True)))
    assert "out of step order" in caplog.text
