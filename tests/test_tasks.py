"""The one task list, task resolver and model unwrapper (`hf_influence.tasks`), and that every user shares them."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert_config, tiny_llama_config
from torch import nn
from transformers import BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from hf_influence.tasks import TASKS, resolve_task, task_of_model_class, unwrap_model


class MyClassifier(BertForSequenceClassification):
    pass


class Toy(nn.Module):
    def forward(self, x):
        return x


def test_task_from_model_class_lineage():
    assert resolve_task(BertForSequenceClassification(tiny_bert_config())) == "sequence_classification"
    assert resolve_task(MyClassifier(tiny_bert_config())) == "sequence_classification"  # inherited
    assert resolve_task(LlamaForCausalLM(tiny_llama_config())) == "causal_lm"
    assert task_of_model_class(GPT2LMHeadModel) == "causal_lm"
    assert task_of_model_class(Toy) is None


def test_explicit_task_logits_fallback_and_errors():
    toy = Toy()
    assert resolve_task(toy, "causal_lm") == "causal_lm"  # an explicit task is taken as is
    assert resolve_task(toy, logits=torch.zeros(2, 3)) == "sequence_classification"
    with pytest.raises(ValueError, match=r"Cannot detect the task of a Toy from logits of shape \(2, 3, 4\)"):
        resolve_task(toy, logits=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="Unknown task 'regression'; valid tasks are 'auto', 'sequence_class"):
        resolve_task(toy, "regression")


def test_unwrap_peft_and_ddp_style_wrappers():
    from peft import LoraConfig, get_peft_model

    base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=11, n_positions=8))
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"]))
    assert unwrap_model(peft_model) is base
    assert resolve_task(peft_model) == "causal_lm"

    class DataParallelLike(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    assert unwrap_model(DataParallelLike(peft_model)) is base
    assert unwrap_model(base) is base


def test_one_task_list_everywhere():
    from hf_influence import checkpoints
    from hf_influence.config import TASK_CHOICES
    from hf_influence.grads import core
    from hf_influence.scorers import base
    from hf_influence.scorers.model_outputs import ModelOutputScorer

    assert TASKS == ("sequence_classification", "causal_lm")
    assert TASK_CHOICES == ("auto", *TASKS)
    assert checkpoints.TASKS is TASKS and core.TASKS is TASKS and ModelOutputScorer.supported_tasks is TASKS
    assert base.TASKS is TASKS  # still importable from the scorer base module, as before the split
