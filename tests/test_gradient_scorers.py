"""GraNdScorer and TracInScorer against hand formulas over a naive per-example gradient loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_classification_dataset, tiny_bert_config, tiny_llama_config

from hf_influence.scorers import get_scorer, list_scorers
from hf_influence.scorers.gradients import GraNdScorer, TracInScorer


def naive_sq_norms_rows(model, dataset, params=None, task="cls") -> np.ndarray:
    """Squared per-example gradient norms, one unpadded example at a time (HF's own loss for causal LM)."""
    model.eval()
    chosen = [p for n, p in model.named_parameters() if params is None or __import__("re").search(params, n)]
    for p in chosen:
        p.requires_grad_(True)
    out = []
    for row in dataset:
        ids = torch.tensor([row["input_ids"]])
        if task == "cls":
            loss = F.cross_entropy(model(input_ids=ids).logits, torch.tensor([row["label"]]))
        else:
            loss = model(input_ids=ids, labels=ids).loss
        out.append(sum(g.double().square().sum() for g in torch.autograd.grad(loss, chosen)).item())
    return np.asarray(out)


def bert(seed):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config())


def test_registry_names():
    assert {"grand", "tracin", "vog"} <= set(list_scorers())
    assert isinstance(get_scorer("grand", model=bert(0)), GraNdScorer)


def test_grand_averages_scores_over_checkpoints():
    dataset = random_classification_dataset(n=22, seed=1)
    models = [bert(1), bert(2)]
    scored = GraNdScorer(models, batch_size=4, device="cpu")(dataset)
    assert scored.features["grand"].dtype == "float32"
    ref = np.mean([np.sqrt(naive_sq_norms_rows(m, dataset)) for m in models], axis=0)  # mean of norms
    np.testing.assert_allclose(np.asarray(list(scored["grand"])), ref, rtol=1e-5)
    # a parameter regex (the classifier only)
    head = GraNdScorer(models[0], params=r"^classifier\.", batch_size=5)(dataset)
    np.testing.assert_allclose(np.asarray(list(head["grand"])),
                               np.sqrt(naive_sq_norms_rows(models[0], dataset, r"^classifier\.")), rtol=1e-5)


def test_grand_at_initialization_config_and_causal_lm():
    config = tiny_bert_config()
    dataset = random_classification_dataset(n=7, seed=2)
    scorer = GraNdScorer.at_initialization(config, seeds=[3, 4], batch_size=3)
    assert scorer.config_dict()["init_seeds"] == [3, 4]
    ref = np.mean([np.sqrt(naive_sq_norms_rows(bert(s), dataset)) for s in (3, 4)], axis=0)
    np.testing.assert_allclose(np.asarray(list(scorer(dataset)["grand"])), ref, rtol=1e-5)

    from transformers import LlamaForCausalLM

    torch.manual_seed(5)
    llama = LlamaForCausalLM(tiny_llama_config())
    text = random_classification_dataset(n=6, vocab_size=101, seed=4).remove_columns("label")
    scored = GraNdScorer(llama, task="causal_lm", batch_size=4)(text)
    np.testing.assert_allclose(np.asarray(list(scored["grand"])),
                               np.sqrt(naive_sq_norms_rows(llama, text, task="lm")), rtol=1e-5)


def save_checkpoint(model, folder, step, learning_rate):
    model.save_pretrained(folder)
    state = {"global_step": step, "log_history": [
        {"step": step - 10, "learning_rate": learning_rate * 2, "loss": 1.0},
        {"step": step, "learning_rate": learning_rate, "loss": 0.9},
        {"step": step, "eval_loss": 0.8},
    ]}
    (folder / "trainer_state.json").write_text(json.dumps(state))


def test_tracin_self_influence_with_learning_rates_from_trainer_state(tmp_path):
    dataset = random_classification_dataset(n=22, seed=6)
    lrs = {20: 3e-4, 40: 1e-4}
    models = {20: bert(7), 40: bert(8)}
    for step, model in models.items():
        save_checkpoint(model, tmp_path / f"checkpoint-{step}", step, lrs[step])
    regex = r"encoder\.layer\.1\."  # the last encoder layer, as in Anand et al.
    scorer = TracInScorer(str(tmp_path), params=regex, batch_size=4)
    assert scorer.learning_rates == [3e-4, 1e-4]
    ours = np.asarray(list(scorer(dataset)["tracin"]))
    ref = sum(lrs[s] * naive_sq_norms_rows(models[s], dataset, regex) for s in (20, 40))
    np.testing.assert_allclose(ours, ref, rtol=1e-5)

    constant = TracInScorer([models[20], models[40]], learning_rates=1.0, params=regex, batch_size=6)(dataset)
    ref = sum(naive_sq_norms_rows(m, dataset, regex) for m in models.values())
    np.testing.assert_allclose(np.asarray(list(constant["tracin"])), ref, rtol=1e-5)


def test_errors(tmp_path):
    model = bert(9)
    with pytest.raises(ValueError, match="trainer_state.json"):
        TracInScorer([model, model])
    with pytest.raises(ValueError, match="2 learning rates for 1 checkpoints"):
        TracInScorer(model, learning_rates=[1.0, 2.0])
    dataset = random_classification_dataset(n=4)
    with pytest.raises(ValueError, match="matches no parameter"):
        GraNdScorer(model, params="nothing_like_this")(dataset)
    with pytest.raises(ValueError, match="label"):
        GraNdScorer(model)(dataset.remove_columns("label"))


def test_grand_reuses_hook_plans_and_pickles_for_workers():
    """The per-model hook plan is cached between map batches but never shipped to num_proc workers."""
    import dill

    dataset = random_classification_dataset(n=12, seed=6)
    model = bert(6)
    scorer = GraNdScorer(model, batch_size=4, device="cpu")
    first = np.asarray(list(scorer(dataset)["grand"]))
    assert len(scorer._grad_norms) == 1  # one plan for the one cached checkpoint, reused for the 3 batches
    clone = dill.loads(dill.dumps(scorer))
    assert clone._grad_norms == {} and len(scorer._grad_norms) == 1
    in_workers = np.asarray(list(scorer(dataset, num_proc=2, load_from_cache_file=False)["grand"]))
    np.testing.assert_allclose(in_workers, first, rtol=1e-6)
    np.testing.assert_allclose(first, np.sqrt(naive_sq_norms_rows(model, dataset)), rtol=1e-5)


def test_grand_with_cuda_graph_steps_and_padding(monkeypatch):
    """cuda_graph=True routes each checkpoint through one PerExampleGradNorms with graph caches (run eagerly here,
    no GPU) and pads batches to a multiple of 64 tokens: same scores as the plain scorer."""
    from conftest import eager_graph_steps

    eager_graph_steps(monkeypatch)
    dataset = random_classification_dataset(n=13, seed=7)
    models = [bert(7), bert(8)]
    plain = np.asarray(list(GraNdScorer(models, batch_size=4)(dataset)["grand"]))
    scorer = GraNdScorer(models, batch_size=4, cuda_graph=True)
    assert scorer.pad_to_multiple_of == 64
    graphed = np.asarray(list(scorer(dataset, load_from_cache_file=False)["grand"]))
    np.testing.assert_allclose(graphed, plain, rtol=1e-5)
    for grad_norms in scorer._grad_norms.values():  # full batches of 4 and the last one of 1: two signatures
        assert grad_norms.cuda_graph and len(grad_norms._graphs.steps) == 2
        assert all(step.static["input_ids"].shape[1] == 64 for step in grad_norms._graphs.steps.values())
    with pytest.raises(ValueError, match="needs cache_models=True"):
        GraNdScorer(models, cuda_graph=True, cache_models=False)
