"""EffortScorer against a naive reference: one example at a time (no padding), the mean next-token cross-entropy over
its label tokens, one backward, the L2 norm of the gradient over the LoRA parameters. Tolerance 1e-5 relative."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import tiny_llama_config
from datasets import Dataset

from hf_influence.scorers import get_scorer
from hf_influence.scorers.effort import EffortScorer, resolve_effort_scope

N = 22


def _lora_model(target_modules=("q_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_llama_config())
    # random LoRA-B (the default zero init makes every LoRA-A gradient vanish)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=list(target_modules),
                        init_lora_weights=False, task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def _dataset(with_labels: bool = False):
    g = torch.Generator().manual_seed(1)
    rows = {"input_ids": [], "labels": []}
    for _ in range(N):
        length = int(torch.randint(3, 15, (1,), generator=g))
        ids = torch.randint(3, 101, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, length - 1, (1,), generator=g))
        rows["input_ids"].append(ids)
        rows["labels"].append([-100] * prompt + ids[prompt:])
    if not with_labels:
        rows.pop("labels")
    return Dataset.from_dict(rows)


def _naive(model, dataset, pattern, response_only=False):
    model.eval()
    params = [p for n, p in model.named_parameters() if re.search(pattern, n)]
    out = []
    for row in dataset:
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor([row["labels"]]) if response_only else ids.clone()
        logits = model(input_ids=ids).logits[0, :-1].float()
        target = labels[0, 1:]
        mask = target != -100
        loss = torch.nn.functional.cross_entropy(logits[mask], target[mask])
        grads = torch.autograd.grad(loss, params)
        out.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))))
    return torch.tensor(out, dtype=torch.float64)


def _assert_rel(got, ref, tol=1e-5):
    got = torch.as_tensor(got, dtype=torch.float64)
    rel = ((got - ref).abs() / ref.abs().clamp_min(1e-12)).max()
    assert rel < tol, f"max relative error {float(rel):.2e}"


def test_effort_full_prompt_matches_naive_loop():
    model = _lora_model()
    data = _dataset()
    scorer = EffortScorer(model, batch_size=4)
    assert scorer.num_scope_parameters == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    scored = scorer(data)
    _assert_rel(scored["effort"], _naive(model, data, scorer.scope_pattern))


def test_effort_with_cuda_graph_steps_matches_naive_loop(monkeypatch):
    """cuda_graph=True (static steps run eagerly here, no GPU): padded to 64 tokens, same norms as the naive loop."""
    from conftest import eager_graph_steps

    eager_graph_steps(monkeypatch)
    model = _lora_model()
    data = _dataset()
    scorer = EffortScorer(model, batch_size=4, cuda_graph=True)
    assert scorer.pad_to_multiple_of == 64
    _assert_rel(scorer(data)["effort"], _naive(model, data, scorer.scope_pattern))
    steps = scorer._grad_norms._graphs.steps
    assert len(steps) == 2 and all(step.static["input_ids"].shape[1] == 64 for step in steps.values())
    with pytest.raises(ValueError, match="pad_to_multiple_of must be a positive integer"):
        EffortScorer(model, pad_to_multiple_of=0)


def test_effort_response_only_and_authors_scope():
    model = _lora_model()
    data = _dataset(with_labels=True)
    scorer = EffortScorer(model, loss="response_only", scope="authors", batch_size=4)
    assert scorer.scope_pattern == r"layers\.1\.self_attn\.v_proj\.lora_B\."
    assert scorer.num_scope_parameters == 16 * 4  # lora_B: v_proj out (2 kv heads x head dim 8) x rank 4
    got = scorer(data)["effort"]
    _assert_rel(got, _naive(model, data, scorer.scope_pattern, response_only=True))


def test_effort_train_mode_draws_dropout_like_the_authors():
    """train_mode=True (the authors' model.train()): LoRA dropout on, so scores differ from eval mode, repeat under
    the same seed and vary under another; the card says so."""
    model = _lora_model()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5  # make the draws matter
    data = _dataset()

    def scores(seed):
        torch.manual_seed(seed)
        return torch.tensor(EffortScorer(model, batch_size=4, train_mode=True)(data, keep_in_memory=True)["effort"])

    first, again, other = scores(3), scores(3), scores(4)
    eval_mode = torch.tensor(EffortScorer(model, batch_size=4)(data, keep_in_memory=True)["effort"])
    assert torch.equal(first, again)
    assert not torch.allclose(first, other) and not torch.allclose(first, eval_mode)
    assert "train mode" in EffortScorer(model, train_mode=True).card_entry()["definition"]
    with pytest.raises(ValueError, match="cannot be replayed as a CUDA graph"):
        EffortScorer(model, train_mode=True, cuda_graph=True)


def test_effort_restores_model_state():
    model = _lora_model()
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    EffortScorer(model, batch_size=5)(_dataset())
    assert model.training
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def test_effort_bad_inputs(tiny_bert_classifier, tiny_llama_lm):
    with pytest.raises(ValueError, match="causal language model"):
        EffortScorer(tiny_bert_classifier)
    with pytest.raises(ValueError, match="no LoRA parameters"):
        EffortScorer(tiny_llama_lm)
    with pytest.raises(ValueError, match="v_proj"):
        resolve_effort_scope(_lora_model(target_modules=("q_proj",)), "authors")
    model = _lora_model()
    with pytest.raises(ValueError, match="valid options"):
        EffortScorer(model, loss="prompt")
    with pytest.raises(ValueError, match="'labels' column"):
        EffortScorer(model, loss="response_only")(_dataset())
    assert isinstance(get_scorer("effort", model=model), EffortScorer)
