"""record_grad_norm: the recorded norm is that of each example's OWN loss gradient, checked against a naive loop
(one example alone, backward of its own loss), under gradient accumulation and for causal LM (num_items_in_batch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_classification_dataset, tiny_llama_config
from test_trainer import PadCollator, bert, causal_dataset, make_args
from transformers import LlamaForCausalLM

from hf_influence.data import add_example_ids
from hf_influence.trainer import ScoringTrainer


def own_gradient_norm(model, loss: torch.Tensor) -> float:
    model.zero_grad()
    loss.backward()
    squared = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
    model.zero_grad()
    return squared ** 0.5


@pytest.mark.parametrize("options", [{"gradient_accumulation_steps": 3}, {"bf16": True}],
                         ids=["grad_accum_3", "bf16_autocast"])
def test_classification_grad_norm(tmp_path, options):
    """Under gradient accumulation the norms are exact; under bf16 autocast the hooks see bf16 activations and
    gradients, so they match the float32 reference to bf16 rounding (and the hook check must not mistake that
    rounding for a missed weight)."""
    dataset = add_example_ids(random_classification_dataset(n=22))
    model = bert()
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, num_train_epochs=1, record_grad_norm=True,
                                                         **options),
                             train_dataset=dataset, data_collator=PadCollator())
    trainer.train()
    records = trainer.signal_store.records()
    assert records["grad_norm"].notna().all()
    model.train()
    for row in dataset:
        ids = torch.tensor([row["input_ids"]])
        expected = own_gradient_norm(model, F.cross_entropy(model(input_ids=ids).logits, torch.tensor([row["label"]])))
        got = records.loc[records.example_id == row["example_id"], "grad_norm"].item()
        assert got == pytest.approx(expected, rel=1e-2 if options.get("bf16") else 1e-4)
    assert "mean_grad_norm" in trainer.signal_store.summary().columns
    assert "mean_grad_norm" in trainer.signal_store.summary().columns


def test_causal_lm_grad_norm_token_weighting(tmp_path):
    dataset = causal_dataset()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, num_train_epochs=1, gradient_accumulation_steps=2,
                                                         record_grad_norm=True),
                             train_dataset=dataset, data_collator=PadCollator(causal=True))
    trainer.train()
    records = trainer.signal_store.records()
    model.train()
    for row in dataset:
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
        # the example's own loss: mean over its own label tokens
        expected = own_gradient_norm(model, model(input_ids=ids, labels=labels).loss)
        got = records.loc[records.example_id == row["example_id"], "grad_norm"].item()
        assert got == pytest.approx(expected, rel=1e-4)


def test_lora_grad_norm_over_adapter_parameters(tmp_path):
    from peft import LoraConfig, get_peft_model

    dataset = add_example_ids(random_classification_dataset(n=22))
    model = get_peft_model(bert(), LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS",
                                              lora_dropout=0.0, init_lora_weights=False))
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, num_train_epochs=1, record_grad_norm=True),
                             train_dataset=dataset, data_collator=PadCollator())
    trainer.train()
    records = trainer.signal_store.records()
    model.train()
    for row in dataset.select(range(8)):
        ids = torch.tensor([row["input_ids"]])
        # only trainable (adapter + classifier head) parameters get gradients
        expected = own_gradient_norm(model, F.cross_entropy(model(input_ids=ids).logits, torch.tensor([row["label"]])))
        got = records.loc[records.example_id == row["example_id"], "grad_norm"].item()
        assert got == pytest.approx(expected, rel=1e-4)


class SideReadHead(torch.nn.Module):
    """A classification head whose own forward also reads its Linear's weight directly (invisible to the hooks)."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, classes)

    def forward(self, x):
        return self.proj(x) + F.linear(x, self.proj.weight)


def test_grad_norm_hooks_are_checked_once_before_training(tmp_path, monkeypatch):
    """A selected weight read outside its layer's forward stops training at the first step with the layer named
    (instead of recording norms that miss it); a model without one is checked on the first step only."""
    from hf_influence.grads import hook_check

    dataset = add_example_ids(random_classification_dataset(n=12))
    model = bert()
    model.classifier = SideReadHead(model.config.hidden_size, 3)
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path / "bad", num_train_epochs=1,
                                                         record_grad_norm=True),
                             train_dataset=dataset, data_collator=PadCollator())
    with pytest.raises(ValueError, match=r"'classifier\.proj' \(Linear\): hooks"):
        trainer.train()

    calls = []
    original = hook_check.check_hooks_against_autograd
    monkeypatch.setattr(hook_check, "check_hooks_against_autograd",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    trainer = ScoringTrainer(model=bert(), args=make_args(tmp_path / "good", num_train_epochs=2,
                                                          record_grad_norm=True),
                             train_dataset=dataset, data_collator=PadCollator())
    trainer.train()
    assert trainer.state.global_step > 2 and len(calls) == 1
