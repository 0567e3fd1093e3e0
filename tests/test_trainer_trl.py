"""ScoringMixin on trl's SFTTrainer with a tiny Llama and a word-level tokenizer built offline."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import tiny_llama_config

WORDS = ("the cat dog sat ran on mat rug a big small red blue fox jumped over lazy sun moon sky green fast slow "
         "bird sang tree under").split()


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def test_scoring_mixin_with_sft_trainer(tmp_path):
    import torch.nn.functional as F
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from hf_influence import ScoringConfig, ScoringMixin

    class ScoringSFTTrainer(ScoringMixin, SFTTrainer):
        pass

    @dataclass
    class SFTScoringConfig(ScoringConfig, SFTConfig):
        pass

    g = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(n),), generator=g))
             for n in torch.randint(3, 10, (22,), generator=g)]
    dataset = Dataset.from_dict({"text": texts})
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=40))
    args = SFTScoringConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=1,
                            learning_rate=0.0, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                            max_length=32, disable_tqdm=True, dense_eval_steps=3)
    trainer = ScoringSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=word_tokenizer())
    with pytest.warns(FutureWarning):  # trl recomputes the logits its fused LM head skips
        trainer.train()
    records = trainer.signal_store.records()
    assert sorted(records["example_id"]) == list(range(22))
    assert len(trainer.signal_store.dense_records()) == 22 * 2  # 6 steps, an evaluation every 3
    # reference: each tokenised example alone, every token after the first is a label token
    model.eval()
    by_id = {row["example_id"]: row["input_ids"] for row in trainer.train_dataset}
    with torch.no_grad():
        for row in records.itertuples():
            ids = torch.tensor([by_id[row.example_id]])
            logits = model(input_ids=ids).logits[0, :-1].double()
            loss = F.cross_entropy(logits, ids[0, 1:])
            accuracy = (logits.argmax(-1) == ids[0, 1:]).double().mean()
            assert row.loss == pytest.approx(float(loss), abs=1e-5)
            assert row.correct == pytest.approx(float(accuracy), abs=1e-6)
