"""Sequential-recommendation pieces for the DEALRec recipe: user data, the SASRec surrogate, prompts, grounding,
Recall/NDCG metrics and the few-shot LoRA stages (`hf_influence.rec.fewshot`). Names are imported lazily
(``transformers`` models load only when used)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # data
    "load_dealrec_folder": "hf_influence.rec.data",
    "load_items": "hf_influence.rec.data",
    "load_movielens_1m": "hf_influence.rec.data",
    "load_movielens_items": "hf_influence.rec.data",
    "build_user_splits": "hf_influence.rec.data",
    "write_dealrec_folder": "hf_influence.rec.data",
    "ItemVocab": "hf_influence.rec.data",
    # SASRec surrogate
    "SASRecConfig": "hf_influence.rec.sasrec",
    "SASRecModel": "hf_influence.rec.sasrec",
    "SASRecCollator": "hf_influence.rec.sasrec",
    "build_sasrec_dataset": "hf_influence.rec.sasrec",
    "sasrec_per_sample_loss": "hf_influence.rec.sasrec",
    "train_sasrec": "hf_influence.rec.sasrec",
    "evaluate_sasrec": "hf_influence.rec.sasrec",
    # prompts and grounding
    "build_prompt_dataset": "hf_influence.rec.prompts",
    "generation_prompt": "hf_influence.rec.prompts",
    "embed_texts": "hf_influence.rec.grounding",
    "ground_generations": "hf_influence.rec.grounding",
    # metrics
    "recall_at_k": "hf_influence.rec.metrics",
    "ndcg_at_k": "hf_influence.rec.metrics",
    "ranking_metrics": "hf_influence.rec.metrics",
    "per_user_ranking_metrics": "hf_influence.rec.metrics",
    # the few-shot LoRA recipe's stages (recipes/rec_fewshot_lora.py)
    "FewShotRuns": "hf_influence.rec.fewshot",
    "method_selections": "hf_influence.rec.fewshot",
    "scored_user_dataset": "hf_influence.rec.fewshot",
    "evaluate_recommender": "hf_influence.rec.fewshot",
    "load_recall_ndcg": "hf_influence.rec.metrics",
    "RECALL_NDCG_PATH": "hf_influence.rec.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_influence.rec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
