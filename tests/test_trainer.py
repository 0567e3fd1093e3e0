"""ScoringTrainer: recorded signals equal an independent per-example forward pass (learning_rate=0, dropout off),
under gradient accumulation, group_by_length, bf16 autocast, LoRA and causal LM; training is unchanged; bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import hand_signals, random_classification_dataset, tiny_bert_config, tiny_llama_config
from transformers import BertForSequenceClassification, LlamaForCausalLM, Trainer, TrainerCallback

from hf_influence.config import ScoringConfig
from hf_influence.data import add_example_ids
from hf_influence.store import SignalStore
from hf_influence.trainer import ScoringTrainer

SIGNALS = ("loss", "prob_gold", "margin", "correct", "el2n", "entropy")


class PadCollator:
    """Right-pads `input_ids`, builds `attention_mask`; `label` -> `labels` (classification) or padded `labels`."""

    def __init__(self, causal: bool = False):
        self.causal = causal

    def __call__(self, features):
        length = max(len(f["input_ids"]) for f in features)
        input_ids = torch.zeros(len(features), length, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for i, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[i, :n] = torch.tensor(feature["input_ids"])
            mask[i, :n] = 1
            if self.causal:
                labels[i, :n] = torch.tensor(feature["labels"])
        batch = {"input_ids": input_ids, "attention_mask": mask}
        batch["labels"] = labels if self.causal else torch.tensor([f["label"] for f in features])
        return batch


def make_args(tmp_path, **kwargs) -> ScoringConfig:
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=2,
                    learning_rate=0.0, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                    seed=0, disable_tqdm=True)
    defaults.update(kwargs)
    return ScoringConfig(**defaults)


@torch.no_grad()
def reference_classification(model, dataset) -> dict[int, dict[str, float]]:
    model.eval()
    out = {}
    for row in dataset:
        ids = torch.tensor([row["input_ids"]])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        out[row["example_id"]] = hand_signals(logits, row["label"])
    return out


@torch.no_grad()
def reference_causal_lm(model, dataset) -> dict[int, dict[str, float]]:
    """Hand loop: each label token t>0 (label != -100) is predicted by position t-1; mean over those tokens."""
    model.eval()
    out = {}
    for row in dataset:
        ids = torch.tensor([row["input_ids"]])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        per_token = [hand_signals(logits[t - 1], row["labels"][t]) for t in range(1, len(row["labels"]))
                     if row["labels"][t] != -100]
        out[row["example_id"]] = {k: sum(s[k] for s in per_token) / len(per_token) for k in SIGNALS}
    return out


def check_records(records, reference, epochs: int, n: int, atol: float):
    counts = records.groupby(["example_id", "epoch"]).size()
    assert len(counts) == n * epochs and (counts == 1).all(), "every example exactly once per epoch"
    assert sorted(records["epoch"].unique()) == list(range(epochs))
    for row in records.itertuples():
        expected = reference[row.example_id]
        for name in SIGNALS:
            assert getattr(row, name) == pytest.approx(expected[name], abs=atol, rel=atol), (row.example_id, name)


def bert(seed: int = 0, **config):
    """Tiny random BERT classifier; the head is scaled up so that predictions are not all near-ties."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(**config))
    with torch.no_grad():
        model.classifier.weight.mul_(40)
    return model


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"gradient_accumulation_steps": 3},
        {"train_sampling_strategy": "group_by_length", "per_device_train_batch_size": 5},
        {"bf16": True},
    ],
    ids=["plain", "grad_accum_3", "group_by_length", "bf16_autocast"],
)
def test_classification_signals_equal_single_example_forward(tmp_path, options):
    dataset = add_example_ids(random_classification_dataset(n=22))
    model = bert()
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, **options), train_dataset=dataset,
                             data_collator=PadCollator())
    trainer.train()
    reference = reference_classification(model, dataset)
    # bf16 autocast rounds the logits: looser tolerance there
    atol = 5e-2 if options.get("bf16") else 1e-5
    records = trainer.signal_store.records()
    if options.get("bf16"):
        # near-ties of the argmax may flip under bf16 rounding; compare everything else
        close = {k: v for k, v in reference.items() if abs(v["margin"]) > 0.05}
        records = records[records.example_id.isin(list(close))]
        assert len(records) > 20
        for row in records.itertuples():
            for name in SIGNALS:
                assert getattr(row, name) == pytest.approx(close[row.example_id][name], abs=atol)
    else:
        check_records(records, reference, epochs=2, n=22, atol=atol)
    # the store on disk is the same as in memory
    loaded = SignalStore.load(tmp_path / "out" / "signals")
    assert len(loaded) == len(trainer.signal_store)
    assert loaded.metadata["num_examples"] == 22
    assert loaded.metadata["model_class"] == "BertForSequenceClassification"


def test_deferred_classification_signals_are_materialized_at_any_cadence(tmp_path, monkeypatch):
    """Logits wait on the device and become signals at a flush, or earlier once the byte bound is passed (here after
    every step, and with a save every 3 steps in between): the records equal the single-example reference each time."""
    import hf_influence.recorder as recorder_module

    dataset = add_example_ids(random_classification_dataset(n=22))
    model = bert()
    reference = reference_classification(model, dataset)
    for bound, extra in [(1, {}), (1 << 40, {"save_strategy": "steps", "save_steps": 3})]:
        monkeypatch.setattr(recorder_module, "DEFERRED_LOGITS_BYTES", bound)
        out = tmp_path / f"bound{bound}"
        trainer = ScoringTrainer(model=model, args=make_args(out, **extra), train_dataset=dataset,
                                 data_collator=PadCollator())
        steps_with_logits: list[int] = []

        def spy(*args, _original=trainer.compute_loss, _trainer=trainer, _seen=steps_with_logits, **kwargs):
            result = _original(*args, **kwargs)
            _seen.append(sum("logits" in e for e in _trainer.signal_recorder.buffers["presentations"]))
            return result

        trainer.compute_loss = spy
        trainer.train()
        waiting = max(steps_with_logits)
        assert waiting == 0 if bound == 1 else waiting > 1  # materialized at once vs kept for several steps
        check_records(trainer.signal_store.records(), reference, epochs=2, n=22, atol=1e-5)


def test_lora_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    dataset = add_example_ids(random_classification_dataset(n=22))
    model = get_peft_model(bert(), LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS",
                                              lora_dropout=0.0))
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, num_train_epochs=1), train_dataset=dataset,
                             data_collator=PadCollator())
    trainer.train()
    check_records(trainer.signal_store.records(), reference_classification(model, dataset), 1, 22, 1e-5)


def causal_dataset(n: int = 22, vocab: int = 101, seed: int = 1):
    """Random token sequences; the first 1-3 tokens are an unlabelled prompt (-100)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "labels": []}
    for _ in range(n):
        length = int(torch.randint(4, 13, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, 4, (1,), generator=g))
        rows["input_ids"].append(ids)
        rows["labels"].append([-100] * prompt + ids[prompt:])
    return add_example_ids(Dataset.from_dict(rows))


def test_causal_lm_per_token_average_under_grad_accumulation(tmp_path):
    dataset = causal_dataset()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, gradient_accumulation_steps=2),
                             train_dataset=dataset, data_collator=PadCollator(causal=True))
    trainer.train()
    assert trainer.signal_store.metadata["config"]["task"] == "causal_lm"
    check_records(trainer.signal_store.records(), reference_causal_lm(model, dataset), 2, 22, 1e-5)


def test_training_is_unchanged(tmp_path):
    """Same seed and data: bit-identical weights to a plain Trainer, with dropout on and dense evaluations."""
    dataset = add_example_ids(random_classification_dataset(n=22))
    common = dict(learning_rate=5e-2, num_train_epochs=2, gradient_accumulation_steps=2, seed=3)
    config = dict(hidden_dropout_prob=0.2)
    plain = Trainer(model=bert(1, **config), args=make_args(tmp_path / "a", **common), train_dataset=dataset,
                    data_collator=PadCollator())
    plain.train()
    scoring = ScoringTrainer(model=bert(1, **config), args=make_args(tmp_path / "b", dense_eval_steps=2, **common),
                             train_dataset=dataset, data_collator=PadCollator())
    scoring.train()
    assert len(scoring.signal_store.dense_records()) == 22 * 3  # 6 optimizer steps, an evaluation every 2
    a, b = plain.model.state_dict(), scoring.model.state_dict()
    changed = 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
        changed += not torch.equal(a[name], bert(1, **config).state_dict()[name])
    assert changed > 0  # the test trained something


def test_dense_evaluation_matches_eval_forward(tmp_path):
    dataset = add_example_ids(random_classification_dataset(n=22))
    model = bert()
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, num_train_epochs=3, dense_eval_steps=4,
                                                         dense_eval_max_epoch=2),
                             train_dataset=dataset, data_collator=PadCollator())
    trainer.train()
    dense = trainer.signal_store.dense_records()
    # 6 steps per epoch: evaluations after steps 4, 8, 12 (epochs 0-1); none in epoch 2 (steps 13-18)
    assert sorted(dense["step"].unique()) == [4, 8, 12]
    assert (dense.groupby("step").example_id.nunique() == 22).all()
    reference = reference_classification(model, dataset)
    for row in dense.itertuples():
        assert row.loss == pytest.approx(reference[row.example_id]["loss"], abs=1e-5)
    summary = trainer.signal_store.summary()
    assert list(summary.columns[:6]) == ["forgetting", "aum", "confidence", "variability", "correctness",
                                         "mean_loss"]
    assert [c for c in summary.columns if c.startswith("el2n_epoch_")] == ["el2n_epoch_0", "el2n_epoch_1",
                                                                          "el2n_epoch_2"]


def test_minilm_snli_pairs(tmp_path, minilm_path, shared_dir):
    import json

    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    with open(shared_dir / "data" / "snli" / "train.jsonl") as handle:
        rows = [json.loads(next(handle)) for _ in range(14)]
    rows = [r for r in rows if r["label"] in (0, 1, 2)][:11]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    encoded = tokenizer([r["premise"] for r in rows], [r["hypothesis"] for r in rows], truncation=True,
                        max_length=64)
    dataset = add_example_ids(Dataset.from_dict({**encoded, "label": [r["label"] for r in rows]}))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, num_train_epochs=1), train_dataset=dataset,
                             data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    trainer.train()
    model.eval()
    reference = {}
    with torch.no_grad():
        for row in dataset:
            inputs = {k: torch.tensor([row[k]]) for k in ("input_ids", "attention_mask", "token_type_ids")}
            reference[row["example_id"]] = hand_signals(model(**inputs).logits[0], row["label"])
    check_records(trainer.signal_store.records(), reference, 1, len(rows), 1e-5)


class CrashAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated kill")


def test_resume_continues_store_without_loss_or_duplicates(tmp_path):
    dataset = add_example_ids(random_classification_dataset(n=22))
    options = dict(learning_rate=3e-2, num_train_epochs=3, save_strategy="steps", save_steps=5, seed=7)
    # uninterrupted run
    full = ScoringTrainer(model=bert(2), args=make_args(tmp_path / "full", **options), train_dataset=dataset,
                          data_collator=PadCollator())
    full.train()
    # a run killed at step 13 (6 steps per epoch): checkpoint-10 exists, and the epoch-end flush at step 12 wrote
    # presentations from after that checkpoint
    args = make_args(tmp_path / "killed", **options)
    killed = ScoringTrainer(model=bert(2), args=args, train_dataset=dataset, data_collator=PadCollator(),
                            callbacks=[CrashAt(13)])
    with pytest.raises(RuntimeError, match="simulated kill"):
        killed.train()
    on_disk = SignalStore.load(tmp_path / "killed" / "out" / "signals").records()
    assert (on_disk["step"] >= 10).any() and on_disk["step"].max() < 13
    resumed = ScoringTrainer(model=bert(2), args=args, train_dataset=dataset, data_collator=PadCollator())
    resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / "out" / "checkpoint-10"))
    key = ["example_id", "epoch"]
    a = full.signal_store.records().sort_values(key).reset_index(drop=True)
    b = SignalStore.load(tmp_path / "killed" / "out" / "signals").records().sort_values(key).reset_index(drop=True)
    assert len(b) == 66 and not b.duplicated(key).any()
    import pandas as pd

    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(full.signal_store.summary(), resumed.signal_store.summary())


def test_resume_refuses_other_dataset_or_arguments(tmp_path):
    dataset = add_example_ids(random_classification_dataset(n=22))
    options = dict(learning_rate=1e-2, num_train_epochs=2, save_strategy="steps", save_steps=3)
    args = make_args(tmp_path, **options)
    ScoringTrainer(model=bert(), args=args, train_dataset=dataset, data_collator=PadCollator()).train()
    checkpoint = str(tmp_path / "out" / "checkpoint-3")
    other = add_example_ids(random_classification_dataset(n=22, seed=5))
    with pytest.raises(ValueError, match="different dataset.*dataset_fingerprint"):
        ScoringTrainer(model=bert(), args=args, train_dataset=other,
                       data_collator=PadCollator()).train(resume_from_checkpoint=checkpoint)
    with pytest.raises(ValueError, match="config.learning_rate"):
        ScoringTrainer(model=bert(), args=make_args(tmp_path, **{**options, "learning_rate": 0.5}),
                       train_dataset=dataset, data_collator=PadCollator()).train(resume_from_checkpoint=checkpoint)
    # a fresh run into a folder that holds a store is refused; nothing was deleted
    with pytest.raises(ValueError, match="already holds a signal store"):
        ScoringTrainer(model=bert(), args=args, train_dataset=dataset, data_collator=PadCollator()).train()
    assert len(SignalStore.load(tmp_path / "out" / "signals")) == 44
    fresh = ScoringTrainer(model=bert(), args=make_args(tmp_path, **options, overwrite_signals=True),
                           train_dataset=dataset, data_collator=PadCollator())
    fresh.train()
    assert len(SignalStore.load(tmp_path / "out" / "signals")) == 44


def test_ids_added_automatically_and_kept_out_of_the_model(tmp_path):
    dataset = random_classification_dataset(n=22)
    seen = []

    class Spy(BertForSequenceClassification):
        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            seen.append(set(kwargs))
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    torch.manual_seed(0)
    trainer = ScoringTrainer(model=Spy(tiny_bert_config()), args=make_args(tmp_path, num_train_epochs=1),
                             train_dataset=dataset, data_collator=PadCollator())
    assert "example_id" in trainer.train_dataset.column_names
    trainer.train()
    assert seen and all("example_id" not in keys for keys in seen)
    assert sorted(trainer.signal_store.records()["example_id"]) == list(range(22))
    # evaluation goes through compute_loss too, and records nothing
    before = len(trainer.signal_store)
    metrics = trainer.evaluate(trainer.train_dataset)
    assert math.isfinite(metrics["eval_loss"]) and len(trainer.signal_store) == before


def test_bad_inputs(tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorWithFlattening

    dataset = add_example_ids(random_classification_dataset(n=22))
    with pytest.raises(ValueError, match="empty"):
        ScoringTrainer(model=bert(), args=make_args(tmp_path), train_dataset=Dataset.from_dict({"input_ids": []}),
                       data_collator=PadCollator())
    with pytest.raises(ValueError, match="no label column"):
        ScoringTrainer(model=bert(), args=make_args(tmp_path, remove_unused_columns=False),
                       train_dataset=dataset.remove_columns("label"), data_collator=PadCollator()).train()
    out_of_range = dataset.map(lambda row: {"label": 3 if row["example_id"] == 4 else row["label"]})
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        ScoringTrainer(model=bert(), args=make_args(tmp_path), train_dataset=out_of_range,
                       data_collator=PadCollator()).train()
    with pytest.raises(ValueError, match="padding-free"):
        ScoringTrainer(model=bert(), args=make_args(tmp_path), train_dataset=dataset,
                       data_collator=DataCollatorWithFlattening())
    with pytest.raises(ValueError, match="task="):
        make_args(tmp_path, task="regression")
    with pytest.raises(ValueError, match="dense_eval_steps"):
        make_args(tmp_path, dense_eval_steps=0)

    class NoLogits(BertForSequenceClassification):
        def forward(self, **kwargs):
            from transformers.modeling_outputs import SequenceClassifierOutput

            return SequenceClassifierOutput(loss=super().forward(**kwargs).loss)  # like fused-loss kernels

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="no logits"):
        ScoringTrainer(model=NoLogits(tiny_bert_config()),
                       args=make_args(tmp_path, overwrite_signals=True, remove_unused_columns=False),
                       train_dataset=dataset, data_collator=PadCollator()).train()


def test_nan_loss_recorded_with_one_warning(tmp_path, monkeypatch):
    import hf_influence.recorder as recorder_module

    dataset = add_example_ids(random_classification_dataset(n=22))
    # token 2 never occurs in the random data; give example 5 that token and a NaN embedding for it
    dataset = dataset.map(lambda row: {"input_ids": [2] + row["input_ids"][1:] if row["example_id"] == 5
                                       else row["input_ids"]})
    model = bert()
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[2] = float("nan")
    warnings = []
    monkeypatch.setattr(recorder_module.logger, "warning", lambda message, *a, **k: warnings.append(message))
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, num_train_epochs=2), train_dataset=dataset,
                             data_collator=PadCollator())
    trainer.train()
    records = trainer.signal_store.records()
    assert records.loc[records.example_id == 5, "loss"].isna().all()
    assert len([w for w in warnings if "NaN loss" in w]) == 1


def test_config_from_command_line(tmp_path):
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(ScoringConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--task", "causal_lm", "--dense_eval_steps", "50",
         "--dense_eval_max_epoch", "1", "--record_grad_norm", "true"])
    assert (config.task, config.dense_eval_steps, config.dense_eval_max_epoch, config.record_grad_norm) == (
        "causal_lm", 50, 1, True)
    assert config.signals_dir is None and config.example_id_column == "example_id"
    with pytest.raises(SystemExit):
        HfArgumentParser(ScoringConfig).parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--task", "ner"])


def test_auto_find_batch_size_restart_keeps_no_partial_records(tmp_path):
    """A simulated out-of-memory error in the third step makes `auto_find_batch_size` restart the loop at a smaller
    batch size (accelerate takes 90%: 4 -> 3). The records flushed before the failure (a save every step) are
    truncated, the buffered ones dropped, and the final store holds every example once per epoch with the
    single-example reference signals."""
    dataset = add_example_ids(random_classification_dataset(n=22))
    model = bert()
    reference = reference_classification(model, dataset)
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, auto_find_batch_size=True, save_strategy="steps",
                                                         save_steps=1), train_dataset=dataset,
                             data_collator=PadCollator())
    calls = {"n": 0}

    def failing_step(*args, _original=trainer.training_step, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return _original(*args, **kwargs)

    trainer.training_step = failing_step
    trainer.train()
    assert calls["n"] == 2 + 1 + 16 and trainer._train_batch_size == 3  # restarted: 2 epochs x ceil(22 / 3) steps
    records = trainer.signal_store.records()
    check_records(records, reference, epochs=2, n=22, atol=1e-5)
    assert set(records["step"]) == set(range(16))  # 8 steps of 3 per epoch, counted from the restart
    assert len(SignalStore.load(tmp_path / "out" / "signals")) == 44
