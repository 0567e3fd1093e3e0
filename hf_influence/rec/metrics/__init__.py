"""Recommendation metrics: plain functions and a local `evaluate` module (``recall_ndcg.py``)."""

from __future__ import annotations

from pathlib import Path

from .ranking import ndcg_at_k, per_user_ranking_metrics, ranking_metrics, recall_at_k

RECALL_NDCG_PATH = str(Path(__file__).with_name("recall_ndcg.py"))


def load_recall_ndcg(**kwargs):
    """``evaluate.load`` the packaged Recall@K/NDCG@K module (offline; kwargs go to `evaluate.load`)."""
    import evaluate

    return evaluate.load(RECALL_NDCG_PATH, **kwargs)


__all__ = ["RECALL_NDCG_PATH", "load_recall_ndcg", "ndcg_at_k", "per_user_ranking_metrics", "ranking_metrics",
           "recall_at_k"]
