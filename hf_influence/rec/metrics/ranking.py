"""Top-K ranking metrics for recommendation: Recall@K and NDCG@K as DEALRec evaluates them (METHODS.md C.5).

For one user with ranked predictions ``p_1, p_2, ...`` and a set of target items ``T``:

- Recall@K = |{p_j in T : j <= K}| / |T|   (hits in the top K over the number of targets).
- NDCG@K = DCG@K / IDCG@K with DCG@K = sum_{j <= K, p_j in T} 1 / log2(j + 1) and
  IDCG@K = sum_{j <= min(|T|, K)} 1 / log2(j + 1) (the ideal ranking puts all targets first).

Conventions (documented behaviour, same as the authors' ``computeTopNAccuracy`` where they define one):

- Targets are a set: duplicated target ids count once. An empty target list is an error (the authors silently skip
  such users; drop them before evaluating).
- Predictions are a ranking: only their first K entries count. A repeated prediction is credited at its first
  position only; later copies occupy their rank but count as misses (so Recall@K <= 1 and NDCG@K <= 1).
- A ranking shorter than K (e.g. K larger than the item count) simply contributes the hits it has; the IDCG still
  uses min(|T|, K) positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"K must be a positive integer, got {k!r}.")
    return int(k)


def _target_set(targets: Iterable[int]) -> set[int]:
    target_set = {int(t) for t in targets}
    if not target_set:
        raise ValueError(
            "A user has an empty target list: Recall/NDCG are undefined without targets. Drop users without "
            "targets before evaluating (load_dealrec_folder already leaves them out)."
        )
    return target_set


def _hit_ranks(predictions: Sequence[int], target_set: set[int], k: int) -> list[int]:
    """0-based ranks j < k whose prediction is a target seen there for the first time."""
    seen: set[int] = set()
    ranks = []
    for rank, item in enumerate(list(predictions)[:k]):
        item = int(item)
        if item in target_set and item not in seen:
            ranks.append(rank)
        seen.add(item)
    return ranks


def recall_at_k(predictions: Sequence[int], targets: Sequence[int], k: int) -> float:
    """Recall@K of one ranked prediction list: hits in the top K / number of (distinct) targets.

    Args:
        predictions (`Sequence[int]`): ranked item ids, best first.
        targets (`Sequence[int]`): the user's target item ids (non-empty).
        k (`int`): the cut-off.

    Returns:
        `float` in [0, 1].

    Example:
        ```python
        >>> recall_at_k([5, 3, 9, 1], targets=[3, 1], k=2)
        0.5
        ```
    """
    k = _check_k(k)
    target_set = _target_set(targets)
    return len(_hit_ranks(predictions, target_set, k)) / len(target_set)


def ndcg_at_k(predictions: Sequence[int], targets: Sequence[int], k: int) -> float:
    """NDCG@K of one ranked prediction list with binary relevance; IDCG over min(|targets|, K) positions.

    Example:
        ```python
        >>> round(ndcg_at_k([5, 3], targets=[3], k=2), 4)  # (1/log2(3)) / 1
        0.6309
        ```
    """
    k = _check_k(k)
    target_set = _target_set(targets)
    dcg = sum(1.0 / math.log2(rank + 2) for rank in _hit_ranks(predictions, target_set, k))
    idcg = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(target_set), k)))
    return dcg / idcg


def ranking_metrics(
    predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]], ks: Sequence[int] = (10, 20)
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over users, for every K in ``ks``.

    Args:
        predictions (`Sequence[Sequence[int]]`): one ranked item-id list per user.
        references (`Sequence[Sequence[int]]`): one non-empty target item-id list per user.
        ks (`Sequence[int]`, defaults to `(10, 20)`): cut-offs (DEALRec: 10, 20 for Games; 20, 50 for MicroLens).

    Returns:
        `dict[str, float]`: keys ``recall@K`` and ``ndcg@K``.

    Raises:
        ValueError: if the lists differ in length or are empty, a K is not a positive integer, or a user has no
            targets (naming the user's position).
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} prediction lists but {len(references)} reference lists; "
            "pass one of each per user."
        )
    if len(predictions) == 0:
        raise ValueError("No users to evaluate: predictions and references are empty.")
    ks = [_check_k(k) for k in (ks if isinstance(ks, (list, tuple)) else [ks])]
    if not ks:
        raise ValueError("ks is empty; pass at least one cut-off, e.g. ks=(10, 20).")
    for position, targets in enumerate(references):
        if len(targets) == 0:
            raise ValueError(
                f"User at position {position} has an empty target list; Recall/NDCG are undefined without targets. "
                "Drop users without targets before evaluating."
            )
    results: dict[str, float] = {}
    for name, values in per_user_ranking_metrics(predictions, references, ks).items():
        results[name] = float(np.mean(values))
    return results


def per_user_ranking_metrics(
    predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]], ks: Sequence[int] = (10, 20)
) -> dict[str, np.ndarray]:
    """Recall@K and NDCG@K of every user (the values `ranking_metrics` averages), for paired bootstraps over users.

    Args:
        predictions (`Sequence[Sequence[int]]`): one ranked item-id list per user.
        references (`Sequence[Sequence[int]]`): one non-empty target item-id list per user.
        ks (`Sequence[int]`, defaults to `(10, 20)`): cut-offs.

    Returns:
        `dict[str, np.ndarray]`: keys ``recall@K`` and ``ndcg@K``, each a float64 array with one value per user.

    Example:
        ```python
        >>> per_user_ranking_metrics([[1, 2], [3, 4]], [[2], [9]], ks=[2])["recall@2"]
        array([1., 0.])
        ```
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} prediction lists but {len(references)} reference lists; "
            "pass one of each per user."
        )
    ks = [_check_k(k) for k in (ks if isinstance(ks, (list, tuple)) else [ks])]
    results: dict[str, np.ndarray] = {}
    for k in ks:
        results[f"recall@{k}"] = np.array([recall_at_k(p, t, k) for p, t in zip(predictions, references)],
                                          dtype=np.float64)
        results[f"ndcg@{k}"] = np.array([ndcg_at_k(p, t, k) for p, t in zip(predictions, references)],
                                        dtype=np.float64)
    return results
