"""Exactness of the ghost per-example gradient norms against a naive per-example loop (one backward per example,
batch of one, padding removed), on tiny BERT-, GPT-2- (tied embeddings) and Llama-like models, with and without LoRA.
"""

from __future__ import annotations

import copy
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import count_sync_ops, tiny_bert_config, tiny_gpt2_config, tiny_llama_config
from torch import nn

from hf_influence.grads import GhostNormCollector, per_example_grad_norms
from hf_influence.grads import fallback as fallback_module
from hf_influence.grads import hook_check as hook_check_module
from hf_influence.grads import layers as layers_module
from hf_influence.grads import norm_engine as norm_engine_module

LENGTHS = [11, 4, 7, 2, 9, 6]
RTOL = 1e-5


def make_batch(vocab: int, seed: int = 0, lengths=LENGTHS, token_types: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch, width = len(lengths), max(lengths)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    ids = torch.randint(3, vocab, (batch, width), generator=g).masked_fill(mask == 0, 0)
    out = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        out["token_type_ids"] = (torch.rand(batch, width, generator=g) > 0.5).long() * mask
    return out


def lm_labels(batch: dict[str, torch.Tensor], prompt: int = 1) -> torch.Tensor:
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :prompt] = -100  # a masked prompt token, like an instruction-tuning collator
    return labels


def naive_sq_norms(model: nn.Module, batch: dict, params: list[nn.Parameter], task: str) -> torch.Tensor:
    """One backward per example at batch size 1 with the padding removed; HF's own loss for causal LM."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    model.eval()
    out = []
    for i in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][i].sum())
        kwargs = {k: v[i : i + 1, :length] for k, v in batch.items() if k != "labels"}
        if task == "cls":
            loss = F.cross_entropy(model(**kwargs).logits, batch["labels"][i : i + 1])
        else:
            loss = model(**kwargs, labels=batch["labels"][i : i + 1, :length]).loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append(sum(g.double().square().sum() for g in grads if g is not None))
    for p, flag in flags:
        p.requires_grad_(flag)
    return torch.stack(out).float()


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    rel = ((ours - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()
    assert rel < RTOL, f"max relative error {rel:.2e}\nours {ours}\nref  {ref}"


def test_bert_all_params_padding_token_types():
    torch.manual_seed(0)
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_bert_config()).eval()
    batch = make_batch(97, token_types=True)
    batch["labels"] = torch.tensor([0, 2, 1, 1, 0, 2])
    params = list(model.parameters())
    ref = naive_sq_norms(model, batch, params, "cls")
    ours = per_example_grad_norms(model, batch)
    assert_close(ours.square(), ref)
    assert_close(per_example_grad_norms(model, batch, squared=True), ref)
    # norms-only mode: no .grad written, requires_grad flags and train/eval flags restored
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    per_example_grad_norms(model, batch)
    assert model.training and model.bert.encoder.training


def test_roberta_padding_aware_positions():
    """RoBERTa derives position ids from the input ids (pads get padding_idx): the model's own positions are used."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(9)
    config = RobertaConfig(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=40, max_position_embeddings=40, num_labels=3, pad_token_id=1,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = RobertaForSequenceClassification(config).eval()
    batch = make_batch(97, seed=9)
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 1)
    batch["labels"] = torch.tensor([0, 1, 2, 2, 1, 0])
    ref = naive_sq_norms(model, batch, list(model.parameters()), "cls")
    assert_close(per_example_grad_norms(model, batch, squared=True), ref)


def test_gpt2_tied_embeddings_cross_term():
    torch.manual_seed(1)
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(tiny_gpt2_config()).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    batch = make_batch(89, seed=1)
    batch["labels"] = lm_labels(batch)
    ref = naive_sq_norms(model, batch, list(model.parameters()), "lm")
    ours = per_example_grad_norms(model, batch, squared=True)
    assert_close(ours, ref)
    # the tied weight alone (selected through either of its names) still needs the cross term
    ref_tied = naive_sq_norms(model, batch, [model.lm_head.weight], "lm")
    assert_close(per_example_grad_norms(model, batch, params=r"^lm_head\.weight$", squared=True), ref_tied)


def test_llama_rmsnorm_causal_lm_and_no_label_tokens():
    torch.manual_seed(2)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config()).eval()
    for module in model.modules():  # non-trivial RMSNorm weights
        if type(module).__name__.endswith("RMSNorm"):
            nn.init.normal_(module.weight, 1.0, 0.2)
    batch = make_batch(101, seed=2)
    batch["labels"] = lm_labels(batch)
    batch["labels"][3] = -100  # no label token at all: undefined loss -> NaN
    ours = per_example_grad_norms(model, batch, squared=True)
    keep = [0, 1, 2, 4, 5]
    sub = {k: v[keep] for k, v in batch.items()}
    ref = naive_sq_norms(model, sub, list(model.parameters()), "lm")
    assert torch.isnan(ours[3])
    assert_close(ours[keep], ref)


def test_llama_lora_default_adapter_params():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(3)
    base = LlamaForCausalLM(tiny_llama_config())
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.3))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    model.train()  # dropout on: the call must switch it off
    batch = make_batch(101, seed=3)
    batch["labels"] = lm_labels(batch)
    adapters = [p for p in model.parameters() if p.requires_grad]
    assert adapters and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    ours = per_example_grad_norms(model, batch, squared=True)
    assert model.training
    ref = naive_sq_norms(model, batch, adapters, "lm")
    assert_close(ours, ref)


def test_bert_lora_with_trainable_head_and_params_regex():
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import BertForSequenceClassification

    torch.manual_seed(4)
    model = get_peft_model(
        BertForSequenceClassification(tiny_bert_config()),
        LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "value"]),
    ).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    batch = make_batch(97, seed=4, token_types=True)
    batch["labels"] = torch.tensor([2, 0, 1, 2, 1, 0])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert_close(per_example_grad_norms(model, batch, squared=True), naive_sq_norms(model, batch, trainable, "cls"))

    # a regex over all names (frozen ones included): the last encoder layer, as in the SNLI paper's TracIn
    regex = r"encoder\.layer\.1\..*base_layer"
    chosen = [p for n, p in model.named_parameters() if __import__("re").search(regex, n)]
    assert chosen and not any(p.requires_grad for p in chosen)
    ours = per_example_grad_norms(model, batch, params=regex, squared=True)
    assert_close(ours, naive_sq_norms(model, batch, chosen, "cls"))
    assert all(p.grad is None for p in model.parameters())


class ScaledHead(nn.Module):
    """A classifier head with no hand-written rule (forces the torch.func fallback)."""

    def __init__(self, hidden: int, num_labels: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(num_labels, hidden) * 0.2)
        self.scale = nn.Parameter(torch.tensor(1.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.w.T) * self.scale


def test_fallback_module_uses_torch_func(caplog):
    from transformers import BertForSequenceClassification

    torch.manual_seed(5)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    model.classifier = ScaledHead(24, 3)
    batch = make_batch(97, seed=5, token_types=True)
    batch["labels"] = torch.tensor([1, 1, 0, 2, 0, 2])
    fallback_module._LOGGED_FALLBACK_TYPES.discard("ScaledHead")
    _, fallback, types = layers_module.build_plan(model, dict(model.named_parameters()))
    assert set(fallback) == {"classifier.w", "classifier.scale"} and types == ["ScaledHead"]
    ours = per_example_grad_norms(model, batch, squared=True)
    assert_close(ours, naive_sq_norms(model, batch, list(model.parameters()), "cls"))
    only_head = per_example_grad_norms(model, batch, params="classifier", squared=True)
    assert_close(only_head, naive_sq_norms(model, batch, [model.classifier.w, model.classifier.scale], "cls"))


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30])
def test_linear_rule_gram_and_instantiation_match_explicit(monkeypatch, chunk_bytes):
    monkeypatch.setattr(layers_module, "_CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(6)
    for seq, d, p in [(3, 40, 50), (30, 6, 5), (1, 7, 3)]:  # Gram, instantiation, T=1
        a, b = torch.randn(5, seq, d, generator=g), torch.randn(5, seq, p, generator=g)
        explicit = torch.stack([(b[i].T @ a[i]).square().sum() for i in range(5)])
        assert_close(layers_module.linear_weight_sq_norms(a, b), explicit)


def test_collector_inside_training_backward_weighted_loss():
    from transformers import BertForSequenceClassification

    torch.manual_seed(7)
    model = BertForSequenceClassification(tiny_bert_config()).train()  # dropout probabilities are 0 in the config
    reference = copy.deepcopy(model)
    batch = make_batch(97, seed=7, token_types=True)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    weights = torch.tensor([0.5, 1.0, 2.0, 0.25, 1.5, 3.0])
    with GhostNormCollector(model) as collector:
        logits = model(**batch).logits  # default (1, T) position ids: expanded per example by the hooks
        loss = (weights * F.cross_entropy(logits, labels, reduction="none")).sum()
        loss.backward()
    sq = collector.squared_norms()
    ref_model = copy.deepcopy(reference)
    ref = naive_sq_norms(ref_model, {**batch, "labels": labels}, list(ref_model.parameters()), "cls")
    assert_close(sq, weights.square() * ref)
    # the training gradients are exactly those of a plain backward
    plain = (weights * F.cross_entropy(reference(**batch).logits, labels, reduction="none")).sum()
    plain.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), name
    # hooks are gone after the block: a second backward does not change the recorded norms
    model(**batch).logits.sum().backward()
    assert torch.equal(collector.squared_norms(), sq)


def test_collector_gpt2_tied_mean_loss():
    from transformers import GPT2LMHeadModel

    torch.manual_seed(8)
    model = GPT2LMHeadModel(tiny_gpt2_config()).train()
    batch = make_batch(89, seed=8, lengths=[5, 8, 3, 8])
    labels = lm_labels(batch)
    with GhostNormCollector(model) as collector:
        logits = model(**batch).logits[:, :-1]
        token = F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="none", ignore_index=-100)
        per_example = token.sum(1) / (labels[:, 1:] != -100).sum(1)
        per_example.mean().backward()
    ref = naive_sq_norms(model, {**batch, "labels": labels}, list(model.parameters()), "lm")
    assert_close(collector.squared_norms(), ref / 16)


def test_collector_refuses_fallback_modules():
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_bert_config())
    model.classifier = ScaledHead(24, 3)
    with pytest.raises(ValueError, match="ScaledHead"):
        GhostNormCollector(model)
    GhostNormCollector(model, params=r"^bert\.")  # excluding them works


class ReusedLinear(nn.Module):
    """A toy classifier that applies the same Linear twice (parameter reuse)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.mix = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, input_ids, attention_mask=None):
        h = self.mix(torch.tanh(self.mix(self.emb(input_ids))))
        return SimpleNamespace(logits=self.out(h.mean(1)))


def test_errors():
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_bert_config())
    batch = make_batch(97)
    with pytest.raises(ValueError, match="no labels"):
        per_example_grad_norms(model, batch)
    batch["labels"] = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="matches no parameter"):
        per_example_grad_norms(model, batch, params=r"no_such_layer")
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\)"):
        per_example_grad_norms(model, {**batch, "labels": torch.tensor([0, 1, 5, 0, 1, 2])})
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="No trainable parameters"):
        per_example_grad_norms(model, batch)
    toy = ReusedLinear()
    with pytest.raises(ValueError, match="called twice"):
        per_example_grad_norms(toy, {"input_ids": torch.randint(0, 20, (3, 4)), "labels": torch.tensor([0, 1, 0])})
    assert all(p.requires_grad for p in toy.parameters())  # flags restored after the error


# ---- per-layer rules in isolation, and the reusable PerExampleGradNorms ---------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30])
def test_linear_rule_weight_and_bias_terms_match_explicit(monkeypatch, chunk_bytes):
    """Gram form (bias folded in as a column of ones), instantiation (bias in its own slot), T=1, bias only."""
    monkeypatch.setattr(layers_module, "_CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(11)
    for seq, d, p in [(3, 40, 50), (30, 6, 5), (1, 7, 3), (1, 5, 1)]:
        a, b = torch.randn(5, seq, d, generator=g), torch.randn(5, seq, p, generator=g)
        weight_sq = torch.stack([(b[i].T @ a[i]).square().sum() for i in range(5)])
        bias_sq = b.sum(1).square().sum(-1)
        for weight, bias, expected in [(True, True, weight_sq + bias_sq), (True, False, weight_sq),
                                       (False, True, bias_sq)]:
            out = torch.zeros(2, 5)
            layers_module.linear_sq_norms_into(a, b, out, weight=weight, bias=bias)
            assert_close(out.sum(0), expected)


@pytest.mark.parametrize("gram_max_seq", [0, 1024])
def test_embedding_rule_masked_gram_and_segment_sums_match_dense_gradients(monkeypatch, gram_max_seq):
    monkeypatch.setattr(layers_module, "EMBEDDING_GRAM_MAX_SEQ", gram_max_seq)
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(0, 6, (4, 9), generator=g)  # few ids: many repeats within an example
    ids[1, 5:] = 0  # padding tail
    b = torch.randn(4, 9, 3, generator=g)
    for padding_idx in (None, 0):
        dense = []
        for i in range(4):
            grad = torch.zeros(6, 3).index_add_(0, ids[i], b[i])
            if padding_idx is not None:
                grad[padding_idx] = 0.0
            dense.append(grad.square().sum())
        assert_close(layers_module.embedding_sq_norms(ids, b, 6, padding_idx), torch.stack(dense))


@pytest.mark.parametrize("gram_max_seq", [0, 1024])
def test_bert_and_gpt2_with_both_embedding_rules(monkeypatch, gram_max_seq):
    from transformers import BertForSequenceClassification, GPT2LMHeadModel

    monkeypatch.setattr(layers_module, "EMBEDDING_GRAM_MAX_SEQ", gram_max_seq)
    torch.manual_seed(13)
    bert = BertForSequenceClassification(tiny_bert_config()).eval()
    batch = make_batch(97, seed=13, token_types=True)
    batch["labels"] = torch.tensor([2, 0, 1, 1, 2, 0])
    assert_close(per_example_grad_norms(bert, batch, squared=True),
                 naive_sq_norms(bert, batch, list(bert.parameters()), "cls"))
    gpt2 = GPT2LMHeadModel(tiny_gpt2_config()).eval()
    batch = make_batch(gpt2.config.vocab_size, seed=13)
    batch["labels"] = lm_labels(batch)
    assert_close(per_example_grad_norms(gpt2, batch, squared=True),
                 naive_sq_norms(gpt2, batch, list(gpt2.parameters()), "lm"))


def test_reusable_grad_norms_follow_weight_updates_and_restore_modes():
    from transformers import BertForSequenceClassification

    from hf_influence.grads import PerExampleGradNorms

    torch.manual_seed(14)
    model = BertForSequenceClassification(tiny_bert_config())
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)  # a partly frozen model: the default selection is the trainable rest
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_norms = PerExampleGradNorms(model)
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    for seed in (14, 15):
        batch = make_batch(97, seed=seed, token_types=True)
        batch["labels"] = torch.tensor([0, 2, 1, 1, 0, 2])
        model.train()
        ours = grad_norms(batch, squared=True)
        assert model.training and model.bert.encoder.layer[0].training  # mode restored
        assert [p.requires_grad for p in model.parameters()].count(True) == len(trainable)  # flags restored
        assert all(p.grad is None for p in model.parameters())
        assert_close(ours, naive_sq_norms(model, batch, trainable, "cls"))
        assert_close(ours, per_example_grad_norms(model, batch, squared=True))
        # a training step between the calls: the same object must see the new weights
        loss = F.cross_entropy(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_norm_rules_add_no_host_sync():
    """The hooks' math must not sync (no unique/nonzero/item): the only syncs are those of the model's own forward
    and loss, counted on the same batch without hooks."""
    from transformers import BertForSequenceClassification

    from hf_influence.grads import PerExampleGradNorms, per_example_losses

    torch.manual_seed(16)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    batch = make_batch(97, seed=16, token_types=True)
    batch["labels"] = torch.tensor([0, 2, 1, 1, 0, 2])
    grad_norms = PerExampleGradNorms(model)

    def forward_and_loss():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        per_example_losses(logits, batch["labels"], "sequence_classification")[0].sum().backward()

    baseline = count_sync_ops(forward_and_loss)
    model.zero_grad(set_to_none=True)
    grad_norms(batch)  # the first call also checks the hooks against autograd (syncs once)
    assert count_sync_ops(lambda: grad_norms(batch)) == baseline


def test_layers_reading_one_input_share_its_gram_matrix(monkeypatch):
    """BERT's query/key/value read the same hidden states: A_i A_i^T is formed once per block, not three times, and
    the norms are unchanged (bitwise: the same products are summed in the same order)."""
    from transformers import BertForSequenceClassification

    from hf_influence.grads import PerExampleGradNorms
    from hf_influence.testing_utils import OpCounter

    torch.manual_seed(17)
    config = tiny_bert_config()
    model = BertForSequenceClassification(config).eval()
    batch = make_batch(97, seed=17)
    batch["labels"] = torch.tensor([0, 2, 1, 1, 0, 2])
    seq = batch["input_ids"].shape[1]
    assert layers_module.uses_gram_form(seq, config.hidden_size, config.hidden_size)  # q/k/v are in the Gram regime

    def run():
        with OpCounter() as counter:
            norms = PerExampleGradNorms(model, check_hooks=False)(batch)
        return norms, counter.by_name["baddbmm"]

    shared, shared_grams = run()
    monkeypatch.setattr(norm_engine_module, "gram_fits_one_chunk", lambda batch, seq: False)  # no sharing
    separate, separate_grams = run()
    assert separate_grams - shared_grams == 2 * config.num_hidden_layers
    torch.testing.assert_close(shared, separate, rtol=0, atol=0)


class WeightReadOutside(nn.Module):
    """A toy classifier whose parent module also reads `mix.weight` directly (invisible to `mix`'s hooks)."""

    def __init__(self, side_use: bool) -> None:
        super().__init__()
        self.side_use = side_use
        self.emb = nn.Embedding(20, 6)
        self.mix = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, input_ids, attention_mask=None):
        h = torch.tanh(self.mix(self.emb(input_ids)))
        if self.side_use:
            h = h + F.linear(h, self.mix.weight)
        return SimpleNamespace(logits=self.out(h.mean(1)))


def test_hooks_are_checked_against_autograd_once():
    """A weight used outside its layer's forward is caught on the first batch (naming the layer), not returned as a
    silently low norm; without the side use the check passes once and is not repeated for the same selection."""
    torch.manual_seed(18)
    batch = {"input_ids": torch.randint(0, 20, (5, 7)), "labels": torch.tensor([0, 1, 1, 0, 1])}
    bad = WeightReadOutside(side_use=True)
    with pytest.raises(ValueError, match=r"'mix' \(Linear\): hooks .* autograd .*used outside"):
        per_example_grad_norms(bad, batch)
    # what the check protects against: the unchecked norms are wrong (mix's side use is missing)
    unchecked = per_example_grad_norms(bad, batch, check_hooks=False, squared=True)
    params = list(bad.parameters())
    naive = torch.stack([
        sum(g.square().sum() for g in torch.autograd.grad(
            F.cross_entropy(bad(batch["input_ids"][i : i + 1]).logits, batch["labels"][i : i + 1]), params))
        for i in range(5)
    ])
    assert ((unchecked - naive).abs() / naive).max() > 1e-3
    # excluding the weight read outside its layer passes the check
    per_example_grad_norms(bad, batch, params=r"^(emb|out)\.")

    good = WeightReadOutside(side_use=False)
    calls = []
    original = hook_check_module.check_hooks_against_autograd

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    hook_check_module.check_hooks_against_autograd = counted
    try:
        per_example_grad_norms(good, batch)
        per_example_grad_norms(good, batch)  # same model and selection: not checked again
        per_example_grad_norms(good, batch, params=r"^out\.")  # a new selection is checked
    finally:
        hook_check_module.check_hooks_against_autograd = original
    assert len(calls) == 2


def test_hook_check_finds_deberta_relative_embeddings():
    """DeBERTa-v2 reads `rel_embeddings.weight` directly (never calling the Embedding): selected, it would be missing
    from the norms; the check names it."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(19)
    config = DebertaV2Config(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=40, relative_attention=True, position_buckets=8,
                             max_relative_positions=16, pos_att_type=["p2c", "c2p"], norm_rel_ebd="none",
                             type_vocab_size=0, num_labels=3,
                             initializer_range=0.5)  # large weights, so that the relative positions matter to the loss
    model = DebertaV2ForSequenceClassification(config).eval()
    batch = make_batch(97, seed=19)
    batch["labels"] = torch.tensor([0, 2, 1, 1, 0, 2])
    with pytest.raises(ValueError, match="rel_embeddings"):
        per_example_grad_norms(model, batch, params=r"^(?!.*pos_(key|query)_proj)")
    selection = r"^(?!.*(pos_(key|query)_proj|rel_embeddings))"
    ours = per_example_grad_norms(model, batch, params=selection, squared=True)
    params = [p for name, p in model.named_parameters() if re.search(selection, name)]
    # the rest is exact (norms ~300 with these weights: float32 sums leave ~1e-5 of rounding, hence 1e-4)
    torch.testing.assert_close(ours, naive_sq_norms(model, batch, params, "cls"), rtol=1e-4, atol=0)


def test_last_layer_and_all_parameter_selections():
    """params='last_layer' is the output layer: for BERT's classifier the per-example squared gradient norm has the
    closed form ||softmax(z) - onehot(y)||^2 (||h||^2 + 1) (h = pooled output); params='all' includes frozen
    parameters."""
    from transformers import BertForSequenceClassification

    from hf_influence.grads.core import select_parameters

    torch.manual_seed(20)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    assert list(select_parameters(model, "last_layer")) == ["classifier.weight", "classifier.bias"]
    batch = make_batch(97, seed=20)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    with torch.no_grad():
        pooled = model.bert(**batch).pooler_output
        probs = model.classifier(pooled).softmax(-1)
    by_hand = (probs - F.one_hot(labels, 3)).square().sum(-1) * (pooled.square().sum(-1) + 1)
    ours = per_example_grad_norms(model, {**batch, "labels": labels}, params="last_layer", squared=True)
    torch.testing.assert_close(ours, by_hand, rtol=RTOL, atol=0)

    for param in model.bert.parameters():
        param.requires_grad_(False)
    assert len(select_parameters(model)) == 2  # trainable: the classifier
    everything = select_parameters(model, "all")
    assert len(everything) == len(list(model.parameters())) and "bert.embeddings.word_embeddings.weight" in everything
    assert list(select_parameters(model, "classifier")) == ["classifier.weight", "classifier.bias"]  # a regex


def test_train_mode_norms_equal_autograd_under_the_same_dropout_masks():
    """train_mode=True keeps dropout on (the DEALRec authors' effort score): with the generator seeded alike, the
    hooked norms equal per-example autograd gradients of one train-mode forward (the same masks), and differ from
    the eval-mode norms."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from hf_influence.grads import PerExampleGradNorms
    from hf_influence.grads.core import per_example_losses

    torch.manual_seed(21)
    base = LlamaForCausalLM(tiny_llama_config())
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM")).eval()
    for name, param in model.named_parameters():  # non-zero B, so that both LoRA factors get gradient
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    batch = make_batch(model.config.vocab_size, seed=21)
    batch["labels"] = lm_labels(batch)
    params = [p for p in model.parameters() if p.requires_grad]

    torch.manual_seed(5)
    ours = PerExampleGradNorms(model, train_mode=True, check_hooks=False)(batch, squared=True)
    assert all(not m.training for m in model.modules())  # restored to eval

    model.train()
    torch.manual_seed(5)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    losses, _ = per_example_losses(logits, batch["labels"], "causal_lm")
    reference = torch.stack([
        sum(g.square().sum() for g in torch.autograd.grad(losses[i], params, retain_graph=True))
        for i in range(len(losses))
    ])
    model.eval()
    torch.testing.assert_close(ours, reference, rtol=RTOL, atol=0)
    evaluated = PerExampleGradNorms(model, check_hooks=False)(batch, squared=True)
    assert ((evaluated - ours).abs() / ours).max() > 1e-3
    with pytest.raises(ValueError, match="train_mode=True draws dropout masks"):
        PerExampleGradNorms(model, train_mode=True, cuda_graph=True)
