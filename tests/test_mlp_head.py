"""MLPHeadForSequenceClassification: the pretrained encoder kept, the head computed by hand, save/load through the Auto
classes and the scorers' loader, exact per-example gradient norms through it, bad configs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert_config, tiny_gpt2_config
from test_grads import RTOL, make_batch, naive_sq_norms

from hf_influence.mlp_head import MLPHeadConfig, MLPHeadForSequenceClassification


@pytest.fixture
def encoder_dir(tmp_path):
    from transformers import BertModel

    torch.manual_seed(0)
    encoder = BertModel(tiny_bert_config())
    encoder.save_pretrained(tmp_path / "encoder")
    return tmp_path / "encoder", encoder.eval()


def hand_head(model: MLPHeadForSequenceClassification, pooled: torch.Tensor) -> torch.Tensor:
    """The head in eval mode written out: W3 relu(W2 relu(W1 x + b1) + b2) + b3."""
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    h = pooled
    for index, linear in enumerate(linears):
        h = h @ linear.weight.T + linear.bias
        if index < len(linears) - 1:
            h = torch.relu(h)
    return h


def test_from_encoder_keeps_the_encoder_and_adds_the_paper_head(encoder_dir):
    path, encoder = encoder_dir
    torch.manual_seed(1)
    model = MLPHeadForSequenceClassification.from_encoder(path, num_labels=3, head_hidden_size=8).eval()
    for name, param in encoder.named_parameters():
        if not name.startswith("pooler."):
            assert torch.equal(param, model.encoder.get_parameter(name)), name
    assert model.encoder.pooler is None  # "cls" pooling: the pooler would get no gradient
    shapes = [tuple(m.weight.shape) for m in model.head if isinstance(m, torch.nn.Linear)]
    assert shapes == [(8, 24), (8, 8), (3, 8)]
    assert [m.p for m in model.head if isinstance(m, torch.nn.Dropout)] == [0.1, 0.1, 0.1]
    wide = MLPHeadForSequenceClassification(MLPHeadConfig(encoder=encoder.config, num_labels=3, head_hidden_size=256))
    for linear in (m for m in wide.head if isinstance(m, torch.nn.Linear)):  # PyTorch's U(-1/sqrt(fan_in), ...)
        bound = linear.in_features ** -0.5
        assert float(linear.weight.abs().max()) <= bound
        assert float(linear.weight.std()) == pytest.approx(bound / 3**0.5, rel=0.2)
    batch = make_batch(97, seed=2)
    hidden = encoder(**batch).last_hidden_state
    logits = model(**batch).logits
    torch.testing.assert_close(logits, hand_head(model, hidden[:, 0]))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(model(**batch, labels=labels).loss, F.cross_entropy(logits, labels))


@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_other_poolings(encoder_dir, pooling):
    path, encoder = encoder_dir
    model = MLPHeadForSequenceClassification.from_encoder(path, num_labels=3, head_hidden_size=8, head_layers=2,
                                                          pooling=pooling).eval()
    batch = make_batch(97, seed=3)
    out = encoder(**batch)
    if pooling == "mean":
        mask = batch["attention_mask"].float().unsqueeze(-1)
        pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    else:
        pooled = out.pooler_output
    torch.testing.assert_close(model(**batch).logits, hand_head(model, pooled))


def test_round_trip_through_auto_classes_and_load_checkpoint(encoder_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from hf_influence.checkpoints import load_checkpoint

    path, _ = encoder_dir
    model = MLPHeadForSequenceClassification.from_encoder(path, num_labels=3, head_hidden_size=8,
                                                          id2label={0: "a", 1: "b", 2: "c"}).eval()
    model.save_pretrained(tmp_path / "saved")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "saved"), MLPHeadConfig)
    batch = make_batch(97, seed=4)
    expected = model(**batch).logits
    for loaded in (AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval(),
                   load_checkpoint(tmp_path / "saved")):
        assert isinstance(loaded, MLPHeadForSequenceClassification)
        assert loaded.config.id2label == {0: "a", 1: "b", 2: "c"} and loaded.config.head_hidden_size == 8
        torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=0)


def test_exact_per_example_grad_norms_through_the_head(encoder_dir):
    from hf_influence.grads import per_example_grad_norms

    path, _ = encoder_dir
    torch.manual_seed(5)
    model = MLPHeadForSequenceClassification.from_encoder(path, num_labels=3, head_hidden_size=8).eval()
    batch = make_batch(97, seed=5, token_types=True)
    batch["labels"] = torch.tensor([0, 2, 1, 1, 0, 2])
    params = [p for p in model.parameters() if p.requires_grad]
    torch.testing.assert_close(per_example_grad_norms(model, batch, squared=True),
                               naive_sq_norms(model, batch, params, "cls"), rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"head_layers": 0}, "head_layers must be at least 1"),
        ({"head_hidden_size": 0}, "head_hidden_size must be positive"),
        ({"head_dropout": 1.0}, r"head_dropout must lie in \[0, 1\)"),
        ({"head_activation": "swish"}, "Unknown head_activation 'swish'; valid: relu, gelu, tanh"),
        ({"pooling": "max"}, "Unknown pooling 'max'; valid: cls, pooler, mean"),
        ({"encoder": {"hidden_size": 8}}, "needs the encoder config's 'model_type'"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLPHeadConfig(**kwargs)


def test_pooler_pooling_on_an_encoder_without_pooler(tmp_path):
    from transformers import GPT2Model

    GPT2Model(tiny_gpt2_config()).save_pretrained(tmp_path / "gpt2")
    model = MLPHeadForSequenceClassification.from_encoder(tmp_path / "gpt2", num_labels=3, pooling="pooler")
    with pytest.raises(ValueError, match="GPT2Model encoder has no pooler output; use pooling='cls' or 'mean'"):
        model(**make_batch(model.encoder.config.vocab_size))


def test_model_card_says_how_to_load(encoder_dir, tmp_path):
    """The loading instructions a model card carries for this type work as written."""
    import re
    import subprocess
    import sys

    from hf_influence.cards import render_model_card
    from hf_influence.mlp_head import loading_instructions

    path, _ = encoder_dir
    MLPHeadForSequenceClassification.from_encoder(path, num_labels=3, head_hidden_size=8).save_pretrained(
        tmp_path / "saved")
    card = str(render_model_card(base_model=str(path), usage=loading_instructions(str(tmp_path / "saved"))))
    assert "## How to load" in card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    script = code + "\nprint(type(model).__name__)\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith("MLPHeadForSequenceClassification")


def test_scoring_trainer_records_exact_signals_and_grad_norms_through_the_head(encoder_dir, tmp_path):
    """ScoringTrainer on the MLP-head model (lr 0, head dropout 0): every recorded loss and own-loss gradient norm
    equals a single-example forward/backward of the same model."""
    from conftest import random_classification_dataset
    from test_trainer import PadCollator, make_args

    from hf_influence import ScoringTrainer, add_example_ids

    path, _ = encoder_dir
    torch.manual_seed(6)
    model = MLPHeadForSequenceClassification.from_encoder(path, num_labels=3, head_hidden_size=8, head_dropout=0.0)
    for module in model.modules():  # dropout off everywhere: the training forward equals the reference forward
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    dataset = add_example_ids(random_classification_dataset(n=10))
    trainer = ScoringTrainer(model=model, args=make_args(tmp_path, num_train_epochs=1, record_grad_norm=True),
                             train_dataset=dataset, data_collator=PadCollator())
    trainer.train()
    records = trainer.signal_store.records().set_index("example_id")
    params = [p for p in model.parameters() if p.requires_grad]
    for row in dataset:
        ids = torch.tensor([row["input_ids"]])
        loss = F.cross_entropy(model(input_ids=ids).logits, torch.tensor([row["label"]]))
        norm = torch.sqrt(sum(g.square().sum() for g in torch.autograd.grad(loss, params)))
        assert records.loc[row["example_id"], "loss"] == pytest.approx(float(loss), rel=1e-5)
        assert records.loc[row["example_id"], "grad_norm"] == pytest.approx(float(norm), rel=1e-4)
