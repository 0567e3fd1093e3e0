"""Variance of Gradients (VoG) for text: spread across checkpoints of the input-embedding saliency of the gold class.

Agarwal, D'souza, Hooker, "Estimating Example Difficulty Using Variance of Gradients", CVPR 2022; text adaptation of
Anand, Tan, Minakova, "Influence Scores at Scale for Efficient Language Data Sampling", EMNLP 2023, App. B.1, Alg. 1.

For an example with gold class `y` and checkpoints `w_1..w_K`, `S_k = d z_y(w_k, x) / d e(x)` is the gradient of the
gold pre-softmax logit with respect to the input embeddings (`T x d`). Per element, the population variance over
checkpoints `V = (1/K) sum_k (S_k - mean_k S_k)^2`; the score is the mean of `V` (`reduce="var"`, Anand et al.) or of
`sqrt(V)` (`reduce="std"`, original VoG) over the example's real (non-pad) token positions and all embedding
dimensions. Padding is not discussed in either paper; pad positions are masked out (a documented deviation).
Optionally z-scored within the gold class (`normalization="class"`, original VoG and the SNLI paper's best) or over
the dataset (`"dataset"`, better on imbalanced data per Anand et al.). Polarity: higher = harder.

Memory: the moments are streamed (Welford) over checkpoints, never holding `K x N x T x d`.
- Default: per map batch, each checkpoint (kept in memory, loaded once; `cache_models=True`) adds its gradients to
  running mean/M2 of shape `[batch, T, d]` (float32): `K` models + `2 * batch * T * d * 4` bytes.
- `stream_checkpoints=True`: one checkpoint in memory at a time (each loaded once), full pass over the dataset per
  checkpoint, moments for the real tokens of all examples in two float32 memmaps on disk
  (`2 * total_real_tokens * d * 4` bytes, e.g. 2 x 10^7 tokens x 512 dims = 82 GB; choose `moments_dir`
  accordingly), deleted afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, ClassVar

import numpy as np
from transformers.utils import logging

from ..checkpoints import load_checkpoint
from ..grads import input_embedding_gradients
from ..grads.input_grads import INPUT_GRADIENT_TARGETS
from ..normalization import class_zscore, dataset_zscore
from .model_outputs import ModelOutputScorer
from .registry import register_scorer
from .sharding import scorer_world, sharded_values

logger = logging.get_logger(__name__)

VOG_REDUCTIONS: tuple[str, ...] = ("var", "std")
VOG_NORMALIZATIONS: tuple[str | None, ...] = ("class", "dataset", None)


@register_scorer
class VoGScorer(ModelOutputScorer):
    """VoG: variance over checkpoints of the gold-logit gradient w.r.t. the input embeddings, averaged over tokens.

    Args:
        model: at least two checkpoints of one training run (a run folder expands to its `checkpoint-*` folders;
            Anand et al. use 10).
        reduce (`str`, defaults to `"var"`): `"var"` (Anand et al., Alg. 1) or `"std"` (original VoG).
        normalization (`str` or `None`, defaults to `"class"`): `"class"` (z-score within the gold class),
            `"dataset"` (z-score over all rows) or `None` (raw).
        target (`str`, defaults to `"gold_logit"`): `"gold_logit"` (pre-softmax, the SNLI paper and VoG's ImageNet
            code) or `"gold_prob"` (VoG's toy code).
        stream_checkpoints (`bool`, defaults to `False`): one checkpoint in memory at a time, moments on disk (see the
            module docstring for the memory of each mode).
        moments_dir (`str`, *optional*): parent folder of the temporary moment memmaps (streaming mode).
        **kwargs: `tokenizer`, `text_columns`, `max_length`, `pad_token_id`, `model_kwargs`, `cache_models`,
            `column`, `batch_size`, `label_column`, `device` (see `ModelOutputScorer`).

    Example:
        ```python
        >>> scorer = VoGScorer("runs/bert-small-snli", reduce="var", normalization="class", batch_size=64)
        >>> scored = scorer(train_dataset)  # float32 column "vog"
        ```
    """

    name = "vog"
    signal = "vog"
    polarity = "higher_is_harder"
    definition = "mean over real tokens and dims of Var_k[d z_y(w_k, x) / d e(x)] (or its sqrt), z-scored"
    paper = (
        "Agarwal, D'souza, Hooker, CVPR 2022 (VoG); Anand, Tan, Minakova, EMNLP 2023, App. B.1, Alg. 1 (text VoG)"
    )
    supported_tasks: ClassVar[tuple[str, ...]] = ("sequence_classification",)
    fingerprint_exclude: ClassVar[tuple[str, ...]] = ("batch_size", "device", "normalization", "stream_checkpoints",
                                                      "moments_dir")

    def __init__(
        self,
        model: Any,
        *,
        reduce: str = "var",
        normalization: str | None = "class",
        target: str = "gold_logit",
        stream_checkpoints: bool = False,
        moments_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if reduce not in VOG_REDUCTIONS:
            raise ValueError(f"Unknown reduce={reduce!r}; valid values are {', '.join(VOG_REDUCTIONS)}.")
        if normalization not in VOG_NORMALIZATIONS:
            raise ValueError(f"Unknown normalization={normalization!r}; valid values are 'class', 'dataset', None.")
        if target not in INPUT_GRADIENT_TARGETS:
            raise ValueError(f"Unknown target={target!r}; valid values are {', '.join(INPUT_GRADIENT_TARGETS)}.")
        if len(self.checkpoints) < 2:
            raise ValueError(
                f"VoG needs at least two checkpoints (the variance over one is 0), got {len(self.checkpoints)}. Pass "
                "a run folder with checkpoint-* sub-folders or a list of checkpoints."
            )
        self.reduce, self.normalization, self.target = reduce, normalization, target
        self.stream_checkpoints, self.moments_dir = stream_checkpoints, moments_dir

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config.update(reduce=self.reduce, normalization=self.normalization, target=self.target,
                      stream_checkpoints=self.stream_checkpoints, moments_dir=self.moments_dir)
        return config

    # ---- per batch ------------------------------------------------------------------------------------------------

    def _labels(self, batch: dict[str, list]) -> tuple[Any, Any]:
        import torch

        raw = [(-1 if y is None else int(y)) for y in batch[self.label_column]]
        labels = torch.as_tensor(raw, dtype=torch.long)
        return labels.clamp_min(0), labels >= 0  # unlabelled rows (e.g. SNLI's -1) get NaN

    def _gradients(self, model: Any, inputs: dict[str, Any], labels: Any) -> tuple[Any, Any]:
        feed = {k: v.to(self.device) for k, v in inputs.items() if k != "labels"}
        feed["labels"] = labels.to(self.device)
        return input_embedding_gradients(model, feed, target=self.target)

    def _reduce(self, variance: Any) -> Any:
        """Per-element `V` (`"var"`) or `sqrt(V)` (`"std"`), for torch tensors and numpy arrays alike."""
        return variance if self.reduce == "var" else variance**0.5

    def score_batch(self, batch: dict[str, list]) -> np.ndarray:
        inputs = self.encode(batch)
        labels, valid = self._labels(batch)
        mean = m2 = mask = None
        for index in range(len(self.checkpoints)):
            grads, mask = self._gradients(self._model(index), inputs, labels)
            if mean is None:
                mean, m2 = grads.clone(), grads.new_zeros(grads.shape)
                continue
            delta = grads - mean
            mean += delta / (index + 1)
            m2 += delta * (grads - mean)
        per_element = self._reduce(m2 / len(self.checkpoints))
        maskf = mask.float()
        scores = (per_element.mean(-1) * maskf).sum(1) / maskf.sum(1).clamp_min(1)
        scores = scores.double().cpu().numpy()
        scores[~valid.numpy()] = np.nan
        return scores

    # ---- whole dataset ----------------------------------------------------------------------------------------------

    def __call__(self, dataset: Any, **map_kwargs: Any) -> Any:
        """Add the VoG column (raw per-example values via `map`, or via the streaming pass; then normalised)."""
        from ..polarity import score_feature

        if self.stream_checkpoints:
            self.validate(dataset)
            if map_kwargs:
                logger.warning(f"stream_checkpoints=True ignores map arguments {sorted(map_kwargs)}.")
            world = scorer_world(self)  # in a multi-process job: each rank streams its shard, then all gather
            raw = sharded_values(self, len(dataset), lambda rows: self._stream_scores(dataset.select(rows)), world)
            scored = dataset.add_column(self.column, raw.astype(np.float32), feature=score_feature(self.polarity))
        else:
            scored = super().__call__(dataset, **map_kwargs)
        if self.normalization is None:
            return scored
        values = np.asarray(list(scored[self.column]), dtype=np.float64)
        keep = ~np.isnan(values)
        normalized = np.full_like(values, np.nan)
        if self.normalization == "class":
            labels = np.asarray(list(scored[self.label_column]))
            normalized[keep] = class_zscore(values[keep], labels[keep])
        else:
            normalized[keep] = dataset_zscore(values[keep])
        return scored.remove_columns(self.column).add_column(
            self.column, normalized.astype(np.float32), feature=score_feature(self.polarity)
        )

    def _stream_scores(self, dataset: Any) -> np.ndarray:
        """Raw VoG of every row, loading each checkpoint once and keeping the moments in memmaps on disk."""
        from tqdm.auto import tqdm

        num_rows, step = len(dataset), self.batch_size
        lengths = np.zeros(num_rows, dtype=np.int64)
        for start in range(0, num_rows, step):
            mask = self.encode(dataset[start : start + step])["attention_mask"]
            lengths[start : start + mask.shape[0]] = mask.sum(1).numpy()
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        folder = tempfile.mkdtemp(prefix="vog_moments_", dir=self.moments_dir)
        try:
            mean = m2 = None
            for index, ref in enumerate(self.checkpoints):
                model = load_checkpoint(ref, task=self.task, **self.model_kwargs).to(self.device)
                desc = f"VoG checkpoint {index + 1}/{len(self.checkpoints)}"
                for start in tqdm(range(0, num_rows, step), desc=desc):
                    rows = dataset[start : start + step]
                    inputs = self.encode(rows)
                    labels, _ = self._labels(rows)
                    grads, mask = self._gradients(model, inputs, labels)
                    block = grads[mask].cpu().numpy()  # real tokens of consecutive rows, in order
                    if mean is None:
                        shape = (int(offsets[-1]), block.shape[-1])
                        mean = np.lib.format.open_memmap(f"{folder}/mean.npy", mode="w+", dtype=np.float32,
                                                         shape=shape)
                        m2 = np.lib.format.open_memmap(f"{folder}/m2.npy", mode="w+", dtype=np.float32, shape=shape)
                    lo, hi = offsets[start], offsets[start + mask.shape[0]]
                    delta = block - mean[lo:hi]
                    mean[lo:hi] += delta / (index + 1)
                    m2[lo:hi] += delta * (block - mean[lo:hi])
                del model
            scores = np.full(num_rows, np.nan)
            for start in range(0, num_rows, step):  # reduce per row, a batch of rows at a time
                stop = min(start + step, num_rows)
                per_token = self._reduce(np.asarray(m2[offsets[start] : offsets[stop]]) / len(self.checkpoints))
                per_token = per_token.mean(-1, dtype=np.float64)
                sums = np.add.reduceat(per_token, offsets[start:stop] - offsets[start]) if len(per_token) else 0
                with np.errstate(invalid="ignore", divide="ignore"):
                    scores[start:stop] = np.where(lengths[start:stop] > 0, sums / lengths[start:stop], np.nan)
            labels = list(dataset[self.label_column])
            scores[np.asarray([y is None or int(y) < 0 for y in labels])] = np.nan
            return scores
        finally:
            shutil.rmtree(folder, ignore_errors=True)
