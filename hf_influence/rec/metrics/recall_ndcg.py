"""Recall@K and NDCG@K for top-K recommendation, as a local `evaluate` module (works offline).

Load it with ``evaluate.load(hf_influence.rec.metrics.RECALL_NDCG_PATH)`` or `load_recall_ndcg`.
"""

import datasets
import evaluate

from hf_influence.rec.metrics.ranking import ranking_metrics

_DESCRIPTION = """\
Recall@K = hits in the top K / number of targets; NDCG@K = DCG@K / IDCG@K with binary relevance and the IDCG over
min(number of targets, K) positions, averaged over users (Lin et al., "Data-efficient Fine-tuning for LLM-based
Recommendation", SIGIR 2024, Section 4.1). Duplicate targets count once; a repeated prediction is credited at its first
rank only; a user without targets is an error.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int]]`): one ranked list of item ids per user, best first.
    references (`list[list[int]]`): one non-empty list of target item ids per user.
    ks (`list[int]`, defaults to `[10, 20]`): the cut-offs.
Returns:
    `dict[str, float]`: `recall@K` and `ndcg@K` for every K.
Example:
    >>> metric = evaluate.load(RECALL_NDCG_PATH)
    >>> metric.compute(predictions=[[3, 1, 2]], references=[[1]], ks=[1, 2])
    {'recall@1': 0.0, 'ndcg@1': 0.0, 'recall@2': 1.0, 'ndcg@2': 0.6309297535714575}
"""

_CITATION = """\
@inproceedings{lin2024dealrec,
  title={Data-efficient Fine-tuning for LLM-based Recommendation},
  author={Lin, Xinyu and Wang, Wenjie and Li, Yongqi and Yang, Shuo and Feng, Fuli and Wei, Yinwei and Chua, Tat-Seng},
  booktitle={SIGIR},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecallNdcg(evaluate.Metric):
    """Recall@K and NDCG@K over ranked item-id lists."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Validate the inputs (lengths, non-empty targets, ks), then compute."""
        if predictions is not None or references is not None:
            if predictions is None or references is None:
                raise ValueError("Pass both predictions and references (one list per user).")
            if len(predictions) != len(references):
                raise ValueError(
                    f"Got {len(predictions)} prediction lists but {len(references)} reference lists; pass one of "
                    "each per user."
                )
            empty = [i for i, targets in enumerate(references) if len(targets) == 0]
            if empty:
                raise ValueError(
                    f"{len(empty)} users have an empty target list (positions {empty[:10]}); Recall/NDCG are "
                    "undefined without targets. Drop them before evaluating."
                )
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, ks=(10, 20)):
        return ranking_metrics(predictions, references, ks=list(ks) if not isinstance(ks, int) else [ks])
