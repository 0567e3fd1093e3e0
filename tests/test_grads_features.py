"""Input-embedding gradients (VoG saliency) and projected per-example gradients against per-example references."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import random_classification_dataset, tiny_bert_config, tiny_gpt2_config, tiny_llama_config
from test_grads import lm_labels, make_batch
from torch import nn

from hf_influence.grads import (
    GradientProjector,
    input_embedding_gradients,
    load_projected_gradients,
    projected_gradients,
    write_projected_gradients,
)


def bert():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config())


@pytest.mark.parametrize("target", ["gold_logit", "gold_prob"])
def test_input_embedding_gradients_match_per_example_loop(target):
    model = bert().train()
    batch = make_batch(97, seed=1, token_types=True)
    batch["labels"] = torch.tensor([2, 0, 1, 1, 2, 0])
    grads, mask = input_embedding_gradients(model, batch, target=target)
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert grads.shape == (6, 11, 24) and grads.dtype == torch.float32
    assert torch.equal(mask, batch["attention_mask"].bool())
    model.eval()
    for i in range(6):
        length = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i : i + 1, :length]
        embeds = model.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, token_type_ids=batch["token_type_ids"][i : i + 1, :length]).logits
        out = logits.softmax(-1) if target == "gold_prob" else logits
        (ref,) = torch.autograd.grad(out[0, batch["labels"][i]], embeds)
        torch.testing.assert_close(grads[i, :length], ref[0], rtol=1e-5, atol=1e-7)
        assert torch.all(grads[i, length:] == 0)


def test_input_embedding_gradients_errors():
    model = bert()
    batch = make_batch(97)
    with pytest.raises(ValueError, match="Unknown target"):
        input_embedding_gradients(model, {**batch, "labels": torch.zeros(6, dtype=torch.long)}, target="loss")
    with pytest.raises(ValueError, match="no labels"):
        input_embedding_gradients(model, batch)


def explicit_features(model, batch, projector, task):
    """Instantiate each example's weight/bias gradients (batch of one, unpadded) and project them explicitly."""
    modules = dict(model.named_modules())
    model.eval()
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][i].sum())
        kwargs = {k: v[i : i + 1, :length] for k, v in batch.items() if k != "labels"}
        if task == "cls":
            loss = nn.functional.cross_entropy(model(**kwargs).logits, batch["labels"][i : i + 1])
        else:
            loss = model(**kwargs, labels=batch["labels"][i : i + 1, :length]).loss
        parts = []
        for info in projector.layers:
            module = modules[info["name"]]
            linear = isinstance(module, nn.Linear)
            d = module.weight.shape[1] if linear else module.weight.shape[0]
            use_weight, use_bias = info["d_in"] in (d, d + 1), info["d_in"] in (d + 1, 1)
            wanted = ([module.weight] if use_weight else []) + ([module.bias] if use_bias else [])
            for p in wanted:
                p.requires_grad_(True)
            grads = list(torch.autograd.grad(loss, wanted, retain_graph=True))
            cols = []
            if use_weight:
                g_weight = grads.pop(0)
                cols.append(g_weight if linear else g_weight.T)  # Conv1D stores [in, out]
            if use_bias:
                cols.append(grads.pop(0).unsqueeze(1))
            g_aug = torch.cat(cols, dim=1)  # [p, d (+1)]
            p_in, p_out = projector.matrices[info["name"]]
            parts.append((p_out.T @ g_aug @ p_in).reshape(-1))
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def test_projection_exact_vs_explicit_bert_linear_with_bias():
    model = bert()
    regex = r"encoder\.layer\.1\.(attention\.self\.query|output\.dense)|classifier"
    projector = GradientProjector(model, params=regex, k_in=5, k_out=3, seed=7)
    assert [info["name"] for info in projector.layers] == [
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.output.dense", "classifier"]
    assert projector.feature_dim == 5 * 3 * 2 + 5 * 3
    batch = make_batch(97, seed=2, token_types=True)
    batch["labels"] = torch.tensor([1, 2, 0, 0, 2, 1])
    ours = projected_gradients(model, batch, projector)
    ref = explicit_features(model, batch, projector, "cls")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_projection_exact_gpt2_conv1d_and_llama_lora():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    torch.manual_seed(3)
    gpt2 = GPT2LMHeadModel(tiny_gpt2_config()).eval()
    projector = GradientProjector(gpt2, params=r"h\.1\.(attn\.c_attn|mlp\.c_proj)\.weight", k_in=4, k_out=6, seed=1)
    batch = make_batch(89, seed=3)
    batch["labels"] = lm_labels(batch)
    torch.testing.assert_close(projected_gradients(gpt2, batch, projector),
                               explicit_features(gpt2, batch, projector, "lm"), rtol=1e-5, atol=1e-6)

    llama = get_peft_model(LlamaForCausalLM(tiny_llama_config()), LoraConfig(r=4, target_modules=["v_proj"]))
    for name, p in llama.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    projector = GradientProjector(llama, k_in=3, k_out=3, seed=2)
    assert all(re.search(r"lora_[AB]", info["name"]) for info in projector.layers) and len(projector.layers) == 4
    batch = make_batch(101, seed=4)
    batch["labels"] = lm_labels(batch)
    torch.testing.assert_close(projected_gradients(llama, batch, projector),
                               explicit_features(llama, batch, projector, "lm"), rtol=1e-5, atol=1e-6)


def test_projector_is_seeded_and_reproducible():
    a = GradientProjector(bert(), params="classifier|query", k_in=4, k_out=4, seed=3)
    from transformers import BertForSequenceClassification

    torch.manual_seed(123)  # different weights, same architecture -> same projections
    b = GradientProjector(BertForSequenceClassification(tiny_bert_config()), params="classifier|query",
                          k_in=4, k_out=4, seed=3)
    c = GradientProjector(bert(), params="classifier|query", k_in=4, k_out=4, seed=4)
    for name, (p_in, p_out) in a.matrices.items():
        assert torch.equal(p_in, b.matrices[name][0]) and torch.equal(p_out, b.matrices[name][1])
        assert not torch.equal(p_in, c.matrices[name][0])
    with pytest.raises(ValueError, match="nothing to project"):
        GradientProjector(bert(), params="LayerNorm")


def test_write_and_load_projected_gradients(tmp_path):
    from hf_influence.data import add_example_ids

    model = bert()
    dataset = add_example_ids(random_classification_dataset(n=22)).shuffle(seed=0)
    projector = GradientProjector(model, params="query|classifier", k_in=4, k_out=4, seed=0)
    out = write_projected_gradients(model, dataset, tmp_path / "f32", projector=projector, batch_size=4,
                                    dtype="float32")
    features, ids, meta = load_projected_gradients(out)
    assert features.shape == (22, projector.feature_dim) and features.dtype == np.float32
    assert ids.tolist() == dataset["example_id"] and meta["num_rows"] == 22
    assert meta["projector"]["seed"] == 0 and meta["projector"]["layers"][0]["offset"] == 0
    rows = dataset[:22]
    from hf_influence.grads import collate_for_gradients

    full = projected_gradients(model, collate_for_gradients(rows), projector)  # one batch, other padding
    np.testing.assert_allclose(features, full.numpy(), rtol=1e-4, atol=1e-6)
    f16, _, meta16 = load_projected_gradients(
        write_projected_gradients(model, dataset, tmp_path / "f16", params="query|classifier", k_in=4, k_out=4,
                                  batch_size=5)
    )
    assert f16.dtype == np.float16 and meta16["dtype"] == "float16"
    np.testing.assert_allclose(f16.astype(np.float32), features, rtol=2e-3, atol=1e-4)


def test_write_projected_gradients_resumes_after_a_crash(tmp_path, monkeypatch):
    """A run killed after two batches continues with the third on the next call (the rows already flushed are not
    recomputed) and ends bitwise equal to an uninterrupted run; a finished folder is not recomputed; other weights
    or resume=False start over."""
    import json

    from hf_influence.data import add_example_ids
    from hf_influence.grads import projection

    model = bert()
    dataset = add_example_ids(random_classification_dataset(n=22))
    kwargs = {"params": "query|classifier", "k_in": 4, "k_out": 4, "batch_size": 4, "dtype": "float32"}
    reference, _, _ = load_projected_gradients(write_projected_gradients(model, dataset, tmp_path / "ref", **kwargs))
    original = projection.projected_gradients
    calls = []

    def crash_after_two(*args, **kw):
        calls.append(args[1]["input_ids"].shape[0])
        if len(calls) > 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kw)

    monkeypatch.setattr(projection, "projected_gradients", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        write_projected_gradients(model, dataset, tmp_path / "run", **kwargs)
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["rows_done"] == 8 and not (tmp_path / "run" / "meta.json").exists()
    monkeypatch.setattr(projection, "projected_gradients",
                        lambda *a, **kw: calls.append("resumed") or original(*a, **kw))
    out = write_projected_gradients(model, dataset, tmp_path / "run", **kwargs)
    assert calls.count("resumed") == 4  # rows 8..21 in batches of 4: 8-11, 12-15, 16-19, 20-21
    features, ids, meta = load_projected_gradients(out)
    assert np.array_equal(features, reference) and ids.tolist() == list(range(22))
    assert not (out / "progress.json").exists() and meta["signature"]["num_rows"] == 22
    calls.clear()
    write_projected_gradients(model, dataset, out, **kwargs)  # finished and matching: nothing recomputed
    assert calls == []
    write_projected_gradients(model, dataset, out, resume=False, **kwargs)
    assert calls.count("resumed") == 6
    calls.clear()
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # other weights: the folder is rewritten, not reused
    write_projected_gradients(model, dataset, out, **kwargs)
    assert calls.count("resumed") == 6 and not np.array_equal(load_projected_gradients(out)[0], reference)
    with pytest.raises(ValueError, match="empty dataset"):
        write_projected_gradients(model, dataset.select([]), tmp_path / "empty", **kwargs)
