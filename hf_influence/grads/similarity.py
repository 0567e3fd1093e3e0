"""Gradient-similarity queries over projected per-example gradient features: which training examples move the loss
of a target (query) set, and by how much.

Given the features `g_i^c` of training example `i` and `q_j^c` of query example `j` at checkpoint `c`, written by
`write_projected_gradients` with the same projector, and checkpoint weights `eta_c` (e.g. the learning rate there):

- `normalize=False`: `s_ij = sum_c eta_c <g_i^c, q_j^c>`, TracIn's influence of training example `i` on test example
  `j` summed over checkpoints (TracInCP; Pruthi et al., "Estimating Training Data Influence by Tracing Gradient
  Descent", NeurIPS 2020). A positive value means a gradient step on `i` lowers `j`'s loss (to first order).
- `normalize=True`: `s_ij = sum_c eta_c cos(g_i^c, q_j^c)`, the cosine form that LESS uses to pick instruction data
  for a target task (Xia et al., "LESS: Selecting Influential Data for Targeted Instruction Tuning", ICML 2024), free
  of the gradient-norm bias towards short or hard examples.

`gradient_similarity` reduces `s_ij` over the queries (mean or max) to one score per training example;
`top_influential` lists the `k` training examples with the largest `s_ij` for every query. Both read the training
features in chunks of rows (the `.npy` memmaps are never loaded whole), keep the query features on the compute device
(a GPU when there is one) and multiply in float32 there.

With random projections, `<P^T g, P^T q>` estimates `<g, q>` without bias; the error shrinks as the projected sizes
grow (Johnson-Lindenstrauss; Choe et al. 2024 for the Kronecker-factored projection used here).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers.utils import logging

from .projection import load_projected_gradients

logger = logging.get_logger(__name__)

#: How `gradient_similarity` reduces the per-query similarities of a training example.
SIMILARITY_REDUCTIONS = ("mean", "max")


def _folders(paths: Any, role: str) -> list[Path]:
    folders = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not folders:
        raise ValueError(f"No {role} feature folder given: pass the folder(s) written by write_projected_gradients.")
    for folder in folders:
        if not (folder / "features.npy").is_file():
            raise FileNotFoundError(f"{folder} holds no features.npy; write the {role} features with "
                                    "write_projected_gradients(model, dataset, path) first.")
    return folders


def _same_rows(ids: list[np.ndarray], folders: list[Path], role: str) -> np.ndarray:
    for folder, other in zip(folders[1:], ids[1:]):
        if not np.array_equal(ids[0], other):
            raise ValueError(f"The {role} features in {folder} are for other rows than those in {folders[0]}; write "
                             "every checkpoint's features from the same dataset in the same order.")
    return ids[0]


class _Checkpoints:
    """The checkpoints' training memmaps and (in memory, float32) query features, checked against each other."""

    def __init__(self, train: Any, query: Any, weights: float | Sequence[float] | None, normalize: bool,
                 device: str | torch.device | None = None) -> None:
        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        train_folders, query_folders = _folders(train, "training"), _folders(query, "query")
        if len(train_folders) != len(query_folders):
            raise ValueError(f"{len(train_folders)} training feature folder(s) but {len(query_folders)} query "
                             "folder(s): give one of each per checkpoint, in the same order.")
        if weights is None:
            weights = [1.0] * len(train_folders)
        elif isinstance(weights, (int, float)):
            weights = [float(weights)] * len(train_folders)
        weights = [float(w) for w in weights]
        if len(weights) != len(train_folders):
            raise ValueError(f"{len(weights)} weight(s) for {len(train_folders)} checkpoint(s); give one per "
                             "checkpoint (e.g. the learning rate at each), or a single number.")
        self.train_features, train_ids, queries, query_ids = [], [], [], []
        for train_folder, query_folder in zip(train_folders, query_folders):
            train_features, ids, train_meta = load_projected_gradients(train_folder)
            query_features, q_ids, query_meta = load_projected_gradients(query_folder)
            same_width = train_features.shape[1] == query_features.shape[1]
            if train_meta["projector"] != query_meta["projector"] or not same_width:
                raise ValueError(
                    f"{train_folder} and {query_folder} were written with different projections "
                    f"({train_meta['projector']} vs {query_meta['projector']}); their features cannot be compared. "
                    "Write both with the same GradientProjector (or the same params, k_in, k_out and seed)."
                )
            self.train_features.append(train_features)
            train_ids.append(ids)
            queries.append(np.asarray(query_features, dtype=np.float32))
            query_ids.append(q_ids)
        self.train_ids = _same_rows(train_ids, train_folders, "training")
        query_ids = _same_rows(query_ids, query_folders, "query")
        if not len(self.train_ids):
            raise ValueError(f"The training features in {train_folders[0]} have no rows.")
        usable = np.all([np.isfinite(q).all(axis=1) for q in queries], axis=0)
        if normalize:
            usable &= np.all([np.linalg.norm(q, axis=1) > 0 for q in queries], axis=0)
        if not usable.any():
            raise ValueError("No query example has a finite, non-zero projected gradient at every checkpoint (a "
                             "causal-LM row without label tokens has none); nothing to compare with.")
        if not usable.all():
            logger.warning(f"{int((~usable).sum())} of {len(usable)} query examples have no usable gradient (NaN, or "
                           "zero under normalize=True) and are left out.")
        self.query_ids = query_ids[usable]
        self.queries = [torch.from_numpy(q[usable]).to(self.device) for q in queries]
        if normalize:
            self.queries = [_unit_rows(q) for q in self.queries]
        self.weights, self.normalize = weights, normalize
        self.folders = train_folders

    def blocks(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """`(start, s)` with `s[r, j] = sum_c eta_c sim(g_{start + r}^c, q_j^c)` for chunks of training rows (NaN for
        a training row without a usable gradient at some checkpoint)."""
        from tqdm.auto import tqdm

        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}.")
        num_rows = len(self.train_ids)
        for start in tqdm(range(0, num_rows, chunk_rows), desc="Gradient similarity", unit="chunk",
                          disable=num_rows <= chunk_rows):
            total = torch.zeros(min(chunk_rows, num_rows - start), len(self.query_ids), device=self.device)
            for features, queries, weight in zip(self.train_features, self.queries, self.weights):
                rows = torch.from_numpy(np.asarray(features[start : start + chunk_rows], dtype=np.float32))
                rows = rows.to(self.device)
                if self.normalize:
                    rows = _unit_rows(rows)
                total += weight * (rows @ queries.T)
            yield start, total.double().cpu().numpy()


def _unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; zero rows become NaN (their cosine is undefined)."""
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return torch.where(norms > 0, rows / norms, torch.nan)


def gradient_similarity(
    train: str | os.PathLike | Sequence[str | os.PathLike],
    query: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    weights: float | Sequence[float] | None = None,
    normalize: bool = False,
    reduce: str = "mean",
    chunk_rows: int = 4096,
    device: str | torch.device | None = None,
) -> pd.Series:
    """One score per training example: its gradient similarity to a query set, reduced over the queries.

    `score_i = reduce_j sum_c eta_c sim(g_i^c, q_j^c)` with `sim` the dot product (TracIn, Pruthi et al. 2020) or,
    with `normalize=True`, the cosine (LESS, Xia et al. 2024); see the module docstring.

    Args:
        train (path or list of paths): the training set's feature folder(s) from `write_projected_gradients`, one
            per checkpoint.
        query (path or list of paths): the query (target) set's feature folder(s), one per checkpoint, written with
            the same projector as the training folder of that checkpoint.
        weights (`float` or list of `float`, *optional*): `eta_c` per checkpoint (defaults to 1 each).
        normalize (`bool`, defaults to `False`): cosine instead of dot product.
        reduce (`str`, defaults to `"mean"`): `"mean"` over the queries (influence on the query set's mean loss)
            or `"max"` (the best-matching query).
        chunk_rows (`int`, defaults to 4096): training rows read at a time.
        device (`str` or `torch.device`, *optional*): where to multiply (defaults to CUDA when available, else CPU).

    Returns:
        `pandas.Series` of float64 indexed by the training `example_id` (NaN for a training example without a usable
        gradient, e.g. no label tokens). Higher = more aligned with the queries (more helpful to them, to first order).

    Raises:
        ValueError: for mismatched projections, checkpoint counts, weights or rows, an unknown `reduce`, or queries
            without any usable gradient. FileNotFoundError: for a folder without features.
    """
    if reduce not in SIMILARITY_REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}; choose one of {SIMILARITY_REDUCTIONS}.")
    checkpoints = _Checkpoints(train, query, weights, normalize, device)
    scores = np.empty(len(checkpoints.train_ids), dtype=np.float64)
    for start, block in checkpoints.blocks(chunk_rows):
        with np.errstate(invalid="ignore"):
            reduced = block.mean(axis=1) if reduce == "mean" else block.max(axis=1)
        scores[start : start + len(block)] = reduced  # a NaN training row stays NaN under both reductions
    series = pd.Series(scores, index=pd.Index(checkpoints.train_ids, name="example_id"),
                       name="cosine_similarity" if normalize else "gradient_similarity")
    series.attrs["gradient_similarity"] = {"normalize": normalize, "reduce": reduce, "weights": checkpoints.weights,
                                           "num_queries": len(checkpoints.query_ids),
                                           "train_features": [str(f) for f in checkpoints.folders]}
    return series


def top_influential(
    train: str | os.PathLike | Sequence[str | os.PathLike],
    query: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    k: int = 10,
    weights: float | Sequence[float] | None = None,
    normalize: bool = False,
    chunk_rows: int = 4096,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """For every query example, the `k` training examples with the largest similarity `sum_c eta_c sim(g_i, q_j)`
    (TracIn's proponents; with `normalize=True`, by cosine).

    Arguments as in `gradient_similarity`. Training rows without a usable gradient are never listed.

    Returns:
        `pandas.DataFrame` with columns `query_id`, `rank` (1 = most similar), `train_id`, `score`, sorted by query
        and rank (fewer than `k` rows per query when the training set is smaller).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    checkpoints = _Checkpoints(train, query, weights, normalize, device)
    num_queries = len(checkpoints.query_ids)
    best_scores = np.full((0, num_queries), -np.inf)
    best_rows = np.zeros((0, num_queries), dtype=np.int64)
    for start, block in checkpoints.blocks(chunk_rows):
        block = np.where(np.isnan(block), -np.inf, block)
        rows = np.broadcast_to(np.arange(start, start + len(block))[:, None], block.shape)
        best_scores = np.concatenate([best_scores, block])
        best_rows = np.concatenate([best_rows, rows])
        if len(best_scores) > k:  # keep the k best per query; ties go to the earlier training row
            order = np.argsort(-best_scores, axis=0, kind="stable")[:k]
            best_scores = np.take_along_axis(best_scores, order, axis=0)
            best_rows = np.take_along_axis(best_rows, order, axis=0)
    order = np.argsort(-best_scores, axis=0, kind="stable")
    best_scores = np.take_along_axis(best_scores, order, axis=0)
    best_rows = np.take_along_axis(best_rows, order, axis=0)
    records = []
    for j, query_id in enumerate(checkpoints.query_ids):
        for rank, (score, row) in enumerate(zip(best_scores[:, j], best_rows[:, j]), start=1):
            if np.isfinite(score):
                records.append((int(query_id), rank, int(checkpoints.train_ids[row]), float(score)))
    return pd.DataFrame.from_records(records, columns=["query_id", "rank", "train_id", "score"])
