"""Grounding: last-token embeddings vs an unbatched full-model reference; L2 ranking vs a naive loop; real SmolLM2."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama_config

from hf_influence.rec.grounding import embed_catalogue, embed_texts, ground_generations

TITLES = [
    "Anno 2070",
    "The Legend of Zelda: Breath of the Wild - Nintendo Switch",
    "Halo 3",
    "西班牙莱昂诺尔公主 #颜值",
    "Portal 2",
    "Dark Messiah of Might &amp; Magic Elements - Xbox 360",
    "X",
]


def _reference_embedding(model, tokenizer, text):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1].float()


@pytest.fixture(scope="module")
def tiny_lm_real_tokenizer(smollm2_tokenizer):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(smollm2_tokenizer), pad_token_id=smollm2_tokenizer.pad_token_id,
                               bos_token_id=None, eos_token_id=smollm2_tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval()


def test_embed_texts_matches_unbatched_reference(tiny_lm_real_tokenizer, smollm2_tokenizer):
    model, tok = tiny_lm_real_tokenizer, smollm2_tokenizer
    embeddings = embed_texts(model, tok, TITLES, batch_size=3)
    assert embeddings.shape == (len(TITLES), model.config.hidden_size) and embeddings.dtype == torch.float32
    for text, row in zip(TITLES, embeddings):
        torch.testing.assert_close(row, _reference_embedding(model, tok, text), atol=1e-5, rtol=1e-4)
    # batch composition does not matter
    torch.testing.assert_close(embed_texts(model, tok, TITLES[::-1], batch_size=4), embeddings.flip(0), atol=1e-5,
                               rtol=1e-4)
    model.train()
    embed_texts(model, tok, TITLES[:2])
    assert model.training  # mode restored


def test_ground_generations_matches_naive_l2_ranking(tiny_lm_real_tokenizer, smollm2_tokenizer):
    torch.manual_seed(1)
    items = torch.randn(9, 5)
    queries = torch.randn(4, 5)
    ids = [101, 205, 307, 409, 511, 613, 715, 817, 919]
    ranked = ground_generations(queries, items, k=4, item_ids=ids, batch_size=3)
    for query, got in zip(queries, ranked):
        distances = [float(((query - item) ** 2).sum().sqrt()) for item in items]
        naive = sorted(range(len(items)), key=lambda j: distances[j])
        assert got == [ids[j] for j in naive[:4]]
    assert all(len(r) == 9 for r in ground_generations(queries, items, k=50))  # K capped at the catalogue size
    with pytest.raises(ValueError, match="same H"):
        ground_generations(queries, torch.randn(9, 6), k=3)
    with pytest.raises(ValueError, match="model=... and tokenizer"):
        ground_generations(["Halo 3"], items, k=3)

    # generations equal to catalogue titles are grounded to that very item first
    model, tok = tiny_lm_real_tokenizer, smollm2_tokenizer
    catalogue = {10 * (i + 1): title for i, title in enumerate(TITLES)}
    item_ids, item_embeddings = embed_catalogue(model, tok, catalogue, batch_size=4)
    generated = [TITLES[4], TITLES[1], TITLES[6]]
    ranked = ground_generations(generated, item_embeddings, k=3, item_ids=item_ids, model=model, tokenizer=tok)
    assert [r[0] for r in ranked] == [50, 20, 70]


@pytest.mark.slow
def test_real_smollm2_gguf_grounding(smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    from hf_influence.paths import packaged_smollm2_gguf

    path = packaged_smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    titles = TITLES[:5]
    embeddings = embed_texts(model, smollm2_tokenizer, titles, batch_size=2)
    assert embeddings.shape == (5, model.config.hidden_size) and torch.isfinite(embeddings).all()
    for position, text in enumerate(titles[:2]):
        reference = _reference_embedding(model, smollm2_tokenizer, text)
        torch.testing.assert_close(embeddings[position], reference, atol=1e-4, rtol=1e-4)
    ranked = ground_generations(embeddings, embeddings, k=2, item_ids=[1, 2, 3, 4, 5])
    assert [r[0] for r in ranked] == [1, 2, 3, 4, 5]
