"""Training and evaluating the SASRec surrogate: `train_sasrec` (the HF `Trainer` with the authors' optimiser
settings, optional best-epoch selection on validation rows), `rank_items` (full-catalogue top-K per user) and
`evaluate_sasrec` (Recall@K / NDCG@K of those rankings).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .data import ItemVocab
from .metrics import ranking_metrics
from .sasrec_features import SASRecCollator, build_sasrec_dataset, left_pad
from .sasrec_modeling import SASRecConfig, SASRecModel

logger = logging.get_logger(__name__)


@torch.no_grad()
def rank_items(
    model: SASRecModel, rows, *, k: int = 20, exclude_history: bool = True, batch_size: int = 256
) -> list[list[int]]:
    """Top-``k`` raw item ids for each user row (full ranking over the catalogue, best first).

    Args:
        model (`SASRecModel`): the surrogate (its config's ``item_ids`` map indices back to raw ids).
        rows (`datasets.Dataset`): user rows (``history_item_ids``).
        k (`int`, defaults to 20): how many items to return per user.
        exclude_history (`bool`, defaults to `True`): never recommend items of the user's history (the authors'
            surrogate evaluation masks the training items).
        batch_size (`int`, defaults to 256): users per forward pass.
    """
    vocab = model.config.item_vocab()
    max_len = model.config.max_seq_length
    k = min(int(k), vocab.num_items)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rankings: list[list[int]] = []
    try:
        histories = rows["history_item_ids"]
        for start in range(0, len(histories), batch_size):
            encoded = [vocab.encode(h) for h in histories[start : start + batch_size]]
            padded = [left_pad(h, max_len) for h in encoded]
            input_ids = torch.tensor(padded, dtype=torch.long, device=device)
            scores = model(input_ids=input_ids, return_item_scores=True, return_dict=True).logits
            if exclude_history:
                for row, history in enumerate(encoded):
                    scores[row, torch.tensor(history, dtype=torch.long, device=device)] = float("-inf")
            top = scores.topk(k, dim=-1).indices.cpu().tolist()
            rankings.extend(vocab.decode(ids) for ids in top)
    finally:
        model.train(was_training)
    return rankings


def evaluate_sasrec(
    model: SASRecModel,
    rows,
    ks: Sequence[int] = (5, 10, 20),
    *,
    exclude_history: bool = True,
    batch_size: int = 256,
) -> dict[str, float]:
    """Recall@K and NDCG@K of the surrogate on user rows (e.g. the ``valid`` split), full ranking over all items.

    Returns:
        `dict[str, float]`: ``recall@K`` and ``ndcg@K`` for every K (see `hf_influence.rec.metrics`).

    Example:
        ```python
        >>> result = train_sasrec(users["train"], epochs=20, output_dir="sasrec")  # doctest: +SKIP
        >>> evaluate_sasrec(result.model, users["valid"], ks=(5, 10, 20))  # doctest: +SKIP
        ```
    """
    rankings = rank_items(model, rows, k=max(ks), exclude_history=exclude_history, batch_size=batch_size)
    return ranking_metrics(rankings, rows["target_item_ids"], ks=list(ks))


@dataclass
class SASRecTrainingResult:
    """What `train_sasrec` returns: the model, per-epoch training loss, validation history and the kept epoch."""

    model: SASRecModel
    train_loss: list[float]
    valid_metrics: list[dict[str, float]]
    kept_epoch: int
    output_dir: str | None


class _ValidationCallback(TrainerCallback):
    """Evaluate on validation rows every ``every`` epochs; remember the best weights by ``metric``."""

    def __init__(self, rows, ks: Sequence[int], every: int, metric: str, keep_best: bool):
        self.rows, self.ks, self.every, self.metric, self.keep_best = rows, ks, every, metric, keep_best
        self.history: list[dict[str, float]] = []
        self.best_value = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = int(round(state.epoch))
        if epoch % self.every and epoch != int(args.num_train_epochs):
            return
        metrics = evaluate_sasrec(model, self.rows, ks=self.ks)
        self.history.append({"epoch": epoch, **metrics})
        logger.info(f"SASRec epoch {epoch}: {metrics}")
        if metrics[self.metric] > self.best_value:
            self.best_value, self.best_epoch = metrics[self.metric], epoch
            if self.keep_best:
                self.best_state = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}


def train_sasrec(
    train_rows,
    *,
    valid_rows=None,
    vocab: ItemVocab | None = None,
    config: SASRecConfig | Mapping[str, Any] | None = None,
    epochs: int = 200,
    batch_size: int = 500,
    lr: float = 1e-3,
    seed: int = 42,
    output_dir: str | os.PathLike | None = "sasrec_surrogate",
    keep: str = "last",
    eval_every: int = 5,
    eval_ks: Sequence[int] = (5, 10, 20),
    metric_for_best: str = "recall@5",
    negative_seed: int | None = None,
    trainer_cls: type | None = None,
    args_cls: type | None = None,
    training_args: Mapping[str, Any] | None = None,
) -> SASRecTrainingResult:
    """Train the SASRec surrogate with the HF `Trainer` stack, as DEALRec does (METHODS.md C.2).

    Optimiser: ``optim="adamw_torch"`` with ``weight_decay=0`` (= Adam), betas (0.9, 0.999), constant learning rate,
    no warm-up and no gradient clipping (``max_grad_norm=0``), matching the authors' plain ``torch.optim.Adam``.
    Negatives are redrawn at every batch (`SASRecCollator`, seeded by ``negative_seed`` or ``seed``).

    Args:
        train_rows (`datasets.Dataset`): the ``train`` split of user rows.
        valid_rows (`datasets.Dataset`, *optional*): the ``valid`` split, evaluated every ``eval_every`` epochs and at
            the end (Recall/NDCG at ``eval_ks``, full ranking, history excluded).
        vocab (`ItemVocab`, *optional*): item id mapping; defaults to every item of ``train_rows`` and ``valid_rows``.
            Pass ``ItemVocab.from_items(load_items(folder))`` to rank over the whole catalogue.
        config (`SASRecConfig` or `dict`, *optional*): architecture overrides (``num_items``/``item_ids`` are set
            from ``vocab``).
        epochs (`int`, defaults to 200), batch_size (`int`, defaults to 500), lr (`float`, defaults to 1e-3),
        seed (`int`, defaults to 42): the authors' settings.
        output_dir (`str`, *optional*): where the Trainer writes and the kept model is saved (``None``: temporary
            Trainer folder, nothing saved).
        keep (`str`, defaults to `"last"`): ``"last"`` keeps the final-epoch model (the authors' quirk, METHODS.md
            E.8); ``"best"`` restores the weights with the best ``metric_for_best`` on ``valid_rows``.
        trainer_cls (`type`, *optional*): a `Trainer` subclass that removes the ``example_id`` column from the batch
            before ``forward`` (e.g. ``hf_influence.ScoringTrainer``); the default plain `Trainer` gets no ids, and
        args_cls (`type`, *optional*): its arguments class (e.g. ``hf_influence.ScoringConfig``);
        training_args (`dict`, *optional*): extra fields for ``args_cls``.

    Returns:
        `SASRecTrainingResult` (``model`` in eval mode, ``train_loss`` per epoch, ``valid_metrics``, ``kept_epoch``).
    """
    import shutil
    import tempfile

    from transformers import Trainer, TrainingArguments, set_seed

    if keep not in ("last", "best"):
        raise ValueError(f"keep={keep!r} is not valid; choose 'last' (the authors' final epoch) or 'best'.")
    if keep == "best" and valid_rows is None:
        raise ValueError("keep='best' needs valid_rows to choose the epoch; pass the valid split or keep='last'.")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if metric_for_best not in {f"{m}@{k}" for m in ("recall", "ndcg") for k in eval_ks}:
        raise ValueError(f"metric_for_best={metric_for_best!r} must be recall@K or ndcg@K with K in {list(eval_ks)}.")
    set_seed(seed)
    if vocab is None:
        vocab = ItemVocab.from_dataset([train_rows] + ([valid_rows] if valid_rows is not None else []))
    if isinstance(config, SASRecConfig):
        config = copy.deepcopy(config)
        config.num_items, config.item_ids = vocab.num_items, list(vocab.item_ids)
    else:
        config = SASRecConfig(**{**dict(config or {}), "num_items": vocab.num_items, "item_ids": vocab.item_ids})
    model = SASRecModel(config)
    features = build_sasrec_dataset(train_rows, config)
    collator = SASRecCollator(
        num_items=config.num_items,
        max_len=config.max_seq_length,
        seed=seed if negative_seed is None else negative_seed,
        keep_example_id=trainer_cls is not None,  # a custom trainer (ScoringTrainer) strips the ids itself
    )
    trainer_cls = trainer_cls or Trainer
    args_cls = args_cls or TrainingArguments
    workdir = str(output_dir) if output_dir is not None else tempfile.mkdtemp(prefix="sasrec_")
    args = dict(
        output_dir=workdir,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        seed=seed,
        data_seed=seed,
        logging_strategy="epoch",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    args.update(training_args or {})
    callback = None
    callbacks = []
    if valid_rows is not None:
        callback = _ValidationCallback(valid_rows, eval_ks, max(1, eval_every), metric_for_best, keep == "best")
        callbacks.append(callback)
    trainer = trainer_cls(
        model=model, args=args_cls(**args), train_dataset=features, data_collator=collator, callbacks=callbacks
    )
    try:
        trainer.train()
    finally:
        if output_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    model = trainer.model
    kept_epoch = epochs
    if keep == "best" and callback is not None and callback.best_state is not None:
        model.load_state_dict(callback.best_state)
        kept_epoch = callback.best_epoch
    model.eval()
    train_loss = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if output_dir is not None:
        model.save_pretrained(workdir)
    return SASRecTrainingResult(
        model=model,
        train_loss=train_loss,
        valid_metrics=callback.history if callback is not None else [],
        kept_epoch=kept_epoch,
        output_dir=workdir if output_dir is not None else None,
    )
