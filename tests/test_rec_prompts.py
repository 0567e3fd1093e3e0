"""BIGRec-style prompts: oldest-side truncation within the token budget (real SmolLM2 tokenizer), labels, format."""

from __future__ import annotations

import pytest
from datasets import Dataset

from hf_influence.rec.data import load_dealrec_folder
from hf_influence.rec.prompts import (
    ALPACA_TEMPLATE,
    build_prompt_dataset,
    format_history,
    generation_prompt,
    render_prompt,
    resolve_style,
)

MAX_TOKENS = 160


@pytest.fixture(scope="module")
def games_train(shared_dir):
    return load_dealrec_folder(shared_dir / "data" / "dealrec" / "games", max_users=120)["train"]


def _count(tokenizer, text):
    return len(tokenizer(text)["input_ids"])


def test_truncation_from_oldest_side_within_budget(smollm2_tokenizer, games_train):
    tok = smollm2_tokenizer
    style = resolve_style("games")
    features = build_prompt_dataset(games_train, tok, max_tokens=MAX_TOKENS, domain="games")
    assert len(features) == len(games_train)
    assert features["example_id"] == games_train["example_id"]
    lengths = [len(ids) for ids in features["input_ids"]]
    assert max(lengths) <= MAX_TOKENS
    truncated = 0
    for row, feat in zip(games_train, features):
        history, response = row["history_titles"], row["target_titles"][0]
        kept = feat["num_history_kept"]
        # reference: the authors' loop, dropping the oldest title until the example (with EOS) fits
        ref = list(history)
        while ref and _count(tok, render_prompt(ref, style) + response) + 1 > MAX_TOKENS:
            ref = ref[1:]
        assert kept == len(ref)
        truncated += kept < len(history)
        # the example is exactly the prompt with the most recent `kept` titles, the target title and EOS
        expected = render_prompt(history[len(history) - kept :], style) + response + tok.eos_token
        assert tok.decode(feat["input_ids"]) == expected
        assert feat["labels"] == feat["input_ids"]  # train_on_inputs=True
        assert feat["attention_mask"] == [1] * len(feat["input_ids"])
    assert truncated >= 10  # the budget really bites on this data


def test_labels_mask_prompt_when_not_training_on_inputs(smollm2_tokenizer, games_train):
    tok = smollm2_tokenizer
    rows = games_train.select(range(12))
    features = build_prompt_dataset(rows, tok, max_tokens=MAX_TOKENS, train_on_inputs=False, domain="games")
    style = resolve_style("games")
    for row, feat in zip(rows, features):
        history = row["history_titles"]
        prompt = render_prompt(history[len(history) - feat["num_history_kept"] :], style)
        n_prompt = _count(tok, prompt)
        assert feat["labels"][:n_prompt] == [-100] * n_prompt
        assert feat["labels"][n_prompt:] == feat["input_ids"][n_prompt:]
        assert tok.decode(feat["labels"][n_prompt:]) == row["target_titles"][0] + tok.eos_token


def test_generation_prompt_and_format(smollm2_tokenizer):
    row = {"history_titles": ["Anno 2070", 'Halo "3"', "Portal 2"], "target_titles": ["Zelda"]}
    text = generation_prompt(row, domain="games")
    style = resolve_style("games")
    expected_input = style.history_prefix + '"Anno 2070"; "Halo "3""; "Portal 2"'
    assert text == ALPACA_TEMPLATE.format(instruction=style.instruction, input=expected_input)
    assert text.endswith("### Response:\n")
    assert format_history(["a", "b"], quote_titles=False) == "a; b"
    # with a tokenizer and a tight budget only the newest titles survive
    budget = _count(smollm2_tokenizer, render_prompt(["Portal 2"], style))
    short = generation_prompt(row, smollm2_tokenizer, max_tokens=budget, domain="games")
    assert short == render_prompt(["Portal 2"], style)
    assert resolve_style("microlens-50k").instruction == resolve_style("micro-videos").instruction
    assert resolve_style("movielens-1m") == resolve_style("movies")
    assert resolve_style("games", instruction="X").instruction == "X"
    with pytest.raises(ValueError, match="Unknown prompt domain"):
        resolve_style("podcasts")


def test_overlong_target_is_cut_with_warning(smollm2_tokenizer, caplog):
    rows = Dataset.from_dict(
        {"example_id": [0, 1], "history_titles": [["A game"], ["B"]], "target_titles": [["word " * 400], []]}
    )
    with pytest.raises(ValueError, match="no target title"):
        build_prompt_dataset(rows, smollm2_tokenizer, max_tokens=64)
    with caplog.at_level("WARNING"):
        features = build_prompt_dataset(rows.select([0]), smollm2_tokenizer, max_tokens=64)
    assert len(features[0]["input_ids"]) == 64 and features[0]["num_history_kept"] == 0
    assert "1 examples did not fit max_tokens=64" in caplog.text
