"""The per-layer-kind rules of `hf_influence.grads.layers` in isolation: dispatch by module type, and each rule's
per-example squared gradient norm against autograd's per-example parameter gradients of the same layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.pytorch_utils import Conv1D

from hf_influence.grads.layers import (
    Conv1DRule,
    EmbeddingRule,
    HookedLayer,
    LayerNormRule,
    LinearRule,
    RMSNormRule,
    build_plan,
    rule_for,
)


class SubclassedLinear(nn.Linear):
    pass


def test_rule_dispatch_by_exact_module_type():
    assert type(rule_for(nn.Linear(3, 2))) is LinearRule
    assert type(rule_for(Conv1D(2, 3))) is Conv1DRule
    assert type(rule_for(nn.Embedding(5, 3))) is EmbeddingRule
    assert type(rule_for(nn.LayerNorm(3))) is LayerNormRule
    assert type(rule_for(LlamaRMSNorm(3))) is RMSNormRule
    assert rule_for(SubclassedLinear(3, 2)) is None  # a subclass may use its weight differently: torch.func
    assert rule_for(nn.MultiheadAttention(4, 2)) is None
    assert LinearRule().in_out_features(nn.Linear(3, 2)) == (3, 2)
    assert Conv1DRule().in_out_features(Conv1D(2, 3)) == (3, 2)  # Conv1D(nf=out, nx=in), weight [in, out]


def per_example_sq_norms(module: nn.Module, x: torch.Tensor, b: torch.Tensor, params: list[str]) -> torch.Tensor:
    """Autograd's `||d <module(x_i), b_i> / d params||^2` per example, one example at a time."""
    norms = []
    for i in range(x.shape[0]):
        out = module(x[i : i + 1])
        grads = torch.autograd.grad((out * b[i : i + 1]).sum(), [getattr(module, p) for p in params])
        norms.append(sum(g.double().square().sum() for g in grads))
    return torch.stack(norms).float()


def layer_cases():
    torch.manual_seed(0)
    rms = LlamaRMSNorm(6)
    with torch.no_grad():
        rms.weight.uniform_(0.5, 1.5)
    return [
        ("linear", nn.Linear(6, 4), lambda: torch.randn(4, 5, 6), ["weight", "bias"]),
        ("linear_gram", nn.Linear(40, 50), lambda: torch.randn(4, 3, 40), ["weight", "bias"]),
        ("linear_bias_only", nn.Linear(6, 4), lambda: torch.randn(4, 5, 6), ["bias"]),
        ("conv1d", Conv1D(4, 6), lambda: torch.randn(4, 5, 6), ["weight", "bias"]),
        ("embedding", nn.Embedding(7, 3), lambda: torch.randint(0, 7, (4, 9)), ["weight"]),
        ("embedding_padding", nn.Embedding(7, 3, padding_idx=0), lambda: torch.randint(0, 7, (4, 9)), ["weight"]),
        ("layernorm", nn.LayerNorm(6), lambda: torch.randn(4, 5, 6) * 2 + 1, ["weight", "bias"]),
        ("rmsnorm", rms, lambda: torch.randn(4, 5, 6) * 2 + 1, ["weight"]),
    ]


@pytest.mark.parametrize("case", layer_cases(), ids=lambda case: case[0])
def test_each_rule_matches_autograd_per_example(case):
    _, module, make_input, params = case
    x = make_input()
    with torch.no_grad():
        b = torch.randn_like(module(x).float())
    selected = {p: getattr(module, p) for p in params}
    layers, fallback, _ = build_plan(module, selected)
    assert not fallback and len(layers) == 1
    (layer,) = layers
    assert isinstance(layer, HookedLayer) and (layer.weight, layer.bias) == ("weight" in params, "bias" in params)
    out = torch.zeros(2, x.shape[0])
    layer.sq_norms_into(x, b, out)
    torch.testing.assert_close(out.sum(0), per_example_sq_norms(module, x, b, params), rtol=1e-5, atol=1e-6)


def test_plan_ties_embedding_with_linear_head_only_and_refuses_other_sharing():
    class Tied(nn.Module):
        def __init__(self, head: nn.Module) -> None:
            super().__init__()
            self.emb = nn.Embedding(6, 6)
            self.head = head
            self.head.weight = self.emb.weight

    layers, fallback, _ = build_plan(tied := Tied(nn.Linear(6, 6, bias=False)), dict(tied.named_parameters()))
    emb, head = sorted(layers, key=lambda layer: layer.name)
    assert (emb.tied, head.tied) == (head, emb) and not fallback
    shared = Tied(nn.LayerNorm(6))
    with pytest.raises(ValueError, match="shared by several modules"):
        build_plan(shared, dict(shared.named_parameters()))
