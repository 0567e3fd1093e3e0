"""hf_influence: which training examples matter, inside the Hugging Face stack.

The public API is re-exported here lazily, so ``import hf_influence`` stays cheap (nothing heavy is imported until a
name is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # data
    "add_example_ids": "hf_influence.data",
    "ExampleIdCollator": "hf_influence.data",
    "EXAMPLE_ID_COLUMN": "hf_influence.data",
    # trainer
    "ScoringConfig": "hf_influence.config",
    "ScoringTrainer": "hf_influence.trainer",
    "ScoringMixin": "hf_influence.trainer",
    "SignalStore": "hf_influence.store",
    # models
    "MLPHeadConfig": "hf_influence.mlp_head",
    "MLPHeadForSequenceClassification": "hf_influence.mlp_head",
    # per-example gradients
    "per_example_grad_norms": "hf_influence.grads",
    "PerExampleGradNorms": "hf_influence.grads",
    "GhostNormCollector": "hf_influence.grads",
    "input_embedding_gradients": "hf_influence.grads",
    "GradientProjector": "hf_influence.grads",
    "projected_gradients": "hf_influence.grads",
    "write_projected_gradients": "hf_influence.grads",
    "load_projected_gradients": "hf_influence.grads",
    "gradient_similarity": "hf_influence.grads",
    "top_influential": "hf_influence.grads",
    "hvp": "hf_influence.grads.hvp",
    "lissa_inverse_hvp": "hf_influence.grads.hvp",
    "conjugate_gradient_inverse_hvp": "hf_influence.grads.hvp",
    "exact_inverse_hvp": "hf_influence.grads.hvp",
    # normalisation, selection, noise
    "class_zscore": "hf_influence.normalization",
    "dataset_zscore": "hf_influence.normalization",
    "select_by_score": "hf_influence.selection",
    "list_strategies": "hf_influence.selection",
    "register_strategy": "hf_influence.selection",
    "get_polarity": "hf_influence.polarity",
    "set_polarity": "hf_influence.polarity",
    # pruning experiments
    "PruningExperiment": "hf_influence.experiments",
    "ExperimentResult": "hf_influence.experiments",
    "Selection": "hf_influence.experiments",
    "inject_label_noise": "hf_influence.noise",
    "add_threshold_samples": "hf_influence.aum",
    "flag_mislabeled": "hf_influence.aum",
    "SelectionReport": "hf_influence.selection",
    "add_normalized_column": "hf_influence.normalization",
    "minmax_scale": "hf_influence.normalization",
    # scorers
    "get_scorer": "hf_influence.scorers",
    "list_scorers": "hf_influence.scorers",
    "register_scorer": "hf_influence.scorers",
    "Scorer": "hf_influence.scorers",
    "InfluenceScorer": "hf_influence.scorers.influence",
    "EffortScorer": "hf_influence.scorers.effort",
    "GradientSimilarityScorer": "hf_influence.scorers.similarity",
    # sequential recommendation (DEALRec)
    "combine_dealrec_scores": "hf_influence.rec.dealrec",
    "select_dealrec": "hf_influence.rec.dealrec",
    # plots, cards, hub
    "plot_data_map": "hf_influence.plots",
    "plot_score_histograms": "hf_influence.plots",
    "plot_accuracy_vs_fraction": "hf_influence.plots",
    "render_dataset_card": "hf_influence.cards",
    "render_model_card": "hf_influence.cards",
    "build_provenance": "hf_influence.cards",
    "save_model_card": "hf_influence.hub",
    "push_model_card": "hf_influence.hub",
    "save_scored_dataset": "hf_influence.hub",
    "push_scored_dataset": "hf_influence.hub",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_influence' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
