"""The CUDA-graph path of PerExampleGradNorms, tested without a GPU: the captured step runs eagerly on its static
buffers (`capture=False`), so everything but the capture call itself is checked against the plain eager path (which
test_grads.py checks against a naive per-example loop): copy-in of new batches, one step per batch signature, the 4-D
mask's causality, no host sync inside the step, weights updated in place or replaced, and the errors.
"""

from __future__ import annotations

import pytest
import torch
from conftest import count_sync_ops, tiny_bert_config, tiny_gpt2_config, tiny_llama_config
from test_grads import assert_close, lm_labels, make_batch
from torch import nn

from hf_influence.grads import PerExampleGradNorms


def graphed(model: nn.Module, **kwargs) -> PerExampleGradNorms:
    grad_norms = PerExampleGradNorms(model, cuda_graph=True, **kwargs)
    grad_norms._graphs.capture = False  # no GPU here: run the static step eagerly instead of replaying a graph
    return grad_norms


def bert_batch(seed: int, lengths=(11, 4, 7, 2, 9, 6)) -> dict[str, torch.Tensor]:
    batch = make_batch(97, seed=seed, lengths=list(lengths), token_types=True)
    batch["labels"] = torch.randint(0, 3, (len(lengths),), generator=torch.Generator().manual_seed(seed))
    return batch


def lm_batch(vocab: int, seed: int) -> dict[str, torch.Tensor]:
    batch = make_batch(vocab, seed=seed)
    batch["labels"] = lm_labels(batch)
    return batch


def test_static_steps_match_the_eager_path_batch_after_batch():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    eager, fast = PerExampleGradNorms(model), graphed(model, max_graphs=2)
    for seed in range(4):  # the first batch is the eager reference; then one static step, refilled per batch
        batch = bert_batch(seed)
        assert_close(fast(batch, squared=True), eager(batch, squared=True))
    assert fast._graphs.causal is False and len(fast._graphs.steps) == 1
    for lengths in [(5, 3, 5), (8, 8), (5, 3, 5)]:  # new signatures: one step each, least recently used evicted
        batch = bert_batch(7, lengths)
        assert_close(fast(batch), eager(batch))
    assert len(fast._graphs.steps) == 2


@pytest.mark.parametrize("kind", ["llama_lora", "gpt2_tied", "llama_classifier"])
def test_causal_models_pick_the_causal_mask(kind):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(1)
    if kind == "llama_lora":
        model = get_peft_model(LlamaForCausalLM(tiny_llama_config()), LoraConfig(r=4, target_modules=["q_proj"]))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(p, std=0.1)
        batches = [lm_batch(101, seed) for seed in range(3)]
    elif kind == "gpt2_tied":
        model = GPT2LMHeadModel(tiny_gpt2_config())
        batches = [lm_batch(89, seed) for seed in range(3)]
    else:  # labels of one dimension, yet a causal model: the first (bidirectional) guess must be rejected
        model = LlamaForSequenceClassification(tiny_llama_config(num_labels=3))
        batches = []
        for seed in range(3):
            batch = make_batch(101, seed=seed)
            batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 0)
            batch["labels"] = torch.tensor([0, 1, 2, 2, 1, 0])
            batches.append(batch)
    model.eval()
    eager, fast = PerExampleGradNorms(model), graphed(model)
    for batch in batches:
        ours, ref = fast(batch, squared=True), eager(batch, squared=True)
        assert_close(ours, ref)
    assert fast._graphs.causal is True


def test_static_step_adds_no_host_sync():
    from transformers import BertForSequenceClassification, LlamaForCausalLM

    torch.manual_seed(2)
    for model, batches in [(BertForSequenceClassification(tiny_bert_config()), [bert_batch(0), bert_batch(1)]),
                           (LlamaForCausalLM(tiny_llama_config()), [lm_batch(101, 0), lm_batch(101, 1)])]:
        fast = graphed(model.eval())
        for batch in batches:
            fast(batch)
        (step,) = fast._graphs.steps.values()
        assert count_sync_ops(step.step) == 0
        # nor tensors made from host data (a host-to-device copy; e.g. a KV cache, which the step turns off)
        assert count_sync_ops(step.step, ops={"lift_fresh", "lift_fresh_copy"}) == 0


def test_weights_updated_in_place_or_replaced():
    from transformers import BertForSequenceClassification

    torch.manual_seed(3)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    eager, fast = PerExampleGradNorms(model), graphed(model)
    batch = bert_batch(0)
    fast(batch), fast(batch)
    with torch.no_grad():
        model.classifier.weight.mul_(3.0)  # in place: same addresses, the step reads the new values
    assert_close(fast(batch), eager(batch))
    (step,) = fast._graphs.steps.values()
    model.to(torch.float64).to(torch.float32)  # new tensors: the captured step must be dropped
    assert_close(fast(batch), eager(batch))
    (new_step,) = fast._graphs.steps.values()
    assert new_step is not step


def test_errors():
    from transformers import BertForSequenceClassification

    from hf_influence.grads import layers as layers_module

    torch.manual_seed(4)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        PerExampleGradNorms(model, cuda_graph=True)(bert_batch(0))
    with pytest.raises(ValueError, match="max_graphs must be at least 1"):
        PerExampleGradNorms(model, cuda_graph=True, max_graphs=0)
    fast = graphed(model)
    fast(bert_batch(0))
    bad = bert_batch(1)
    bad["labels"][2] = 3
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\)"):
        fast(bad)

    class ScaledHead(nn.Module):  # no hand-written rule: torch.func fallback, which cannot be captured
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.scale

    model.classifier = nn.Sequential(nn.Linear(24, 3), ScaledHead())
    with pytest.raises(ValueError, match="cannot capture the torch.func fallback"):
        graphed(model)(bert_batch(0))
    model.classifier = nn.Linear(24, 3)
    fast = graphed(model)
    old = layers_module.EMBEDDING_GRAM_MAX_SEQ
    layers_module.EMBEDDING_GRAM_MAX_SEQ = 4
    try:
        with pytest.raises(ValueError, match="up to 4 tokens"):
            fast(bert_batch(0))
    finally:
        layers_module.EMBEDDING_GRAM_MAX_SEQ = old


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_captured_graphs_replay_exactly_on_cuda():
    """The real capture and replay (GPU sessions only): equal to the eager path on fresh batches of one signature."""
    from transformers import BertForSequenceClassification, LlamaForCausalLM

    torch.manual_seed(5)
    for model, make in [(BertForSequenceClassification(tiny_bert_config()), bert_batch),
                        (LlamaForCausalLM(tiny_llama_config()), lambda seed: lm_batch(101, seed))]:
        model = model.cuda().eval()
        eager, fast = PerExampleGradNorms(model), PerExampleGradNorms(model, cuda_graph=True)
        for seed in range(4):
            batch = {k: v.cuda() for k, v in make(seed).items()}
            ours, ref = fast(batch, squared=True), eager(batch, squared=True)
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
        (step,) = fast._graphs.steps.values()
        assert step.graph is not None
