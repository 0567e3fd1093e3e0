"""`ScoringTrainer`: a `transformers.Trainer` that records per-example training dynamics from its own forward pass.

Per presentation of an example in a training minibatch, the signals of `hf_influence.signals` (`loss`, `prob_gold`,
`margin`, `correct`, `el2n`, `entropy`) are computed under `no_grad` in float32 from the logits of the training
forward pass (no extra pass), and stored in a [`SignalStore`] under `output_dir/signals`. Training itself is not
changed: the loss, its gradients and the data order are the parent trainer's.

For causal language models each signal is computed per label token (logits shifted by one position, labels equal to
-100 masked) and averaged over that example's own label tokens, so a long example weighs as much as a short one.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from .batching import LABEL_KEYS
from .config import ScoringOptions
from .data import ExampleIdCollator, add_example_ids, validate_class_labels
from .recorder import SignalRecorder
from .signals import SIGNAL_NAMES
from .store import SignalStore
from .tasks import resolve_task, unwrap_model

logger = logging.get_logger(__name__)

# Config entries that must agree between a store and the run that continues it.
_RESUME_CONFIG_KEYS: tuple[str, ...] = (
    "task", "example_id_column", "record_grad_norm", "dense_eval_steps", "dense_eval_max_epoch", "seed", "data_seed",
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "world_size", "group_by_length",
    "train_sampling_strategy",
)
_PACKED_BATCH_KEYS: tuple[str, ...] = ("cu_seq_lens_q", "cu_seq_lens_k", "cu_seqlens", "seq_idx")
def check_single_label(model) -> None:
    """Refuse a classifier configured for regression or multi-label classification (one class id per example only).

    Raises:
        ValueError: naming the model's `problem_type`.
    """
    problem_type = getattr(getattr(unwrap_model(model), "config", None), "problem_type", None)
    if problem_type in ("regression", "multi_label_classification"):
        raise ValueError(
            f"The model's problem_type is {problem_type!r}; ScoringTrainer records signals for single-label "
            "classification only (one integer class per example)."
        )


class _SignalCallback(TrainerCallback):
    """Drives the store from the training loop: open on train begin, dense evals, flush on save/epoch/train end."""

    def __init__(self, trainer: ScoringMixin):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._open_store(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._maybe_dense_evaluate(state)

    def on_save(self, args, state, control, **kwargs):
        self.trainer._flush_signals()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer._flush_signals()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._flush_signals()
        self.trainer._recording = False


class ScoringMixin:
    """Adds per-example signal recording to any `transformers.Trainer` subclass.

    Put it first in the bases: `class ScoringSFTTrainer(ScoringMixin, trl.SFTTrainer): pass`. The mixin

    - keeps the example id column through `remove_unused_columns` and any data collator (wrapped with
      `hf_influence.data.ExampleIdCollator`), adds ids `0..n-1` to a training set without them (logging it), and never
      passes the ids to the model;
    - computes the signals from the logits of the training forward pass (`compute_loss`), under `no_grad`, in
      float32, and only in training mode (never during evaluation); classification logits are kept on the device
      and turned into signals many steps at a time (at each flush, or once 64 MiB of logits wait), so a step
      launches no extra kernels; causal-LM signals are reduced per step (their logits are large);
    - buffers them on the device and writes them to the [`SignalStore`] at each epoch end, each checkpoint save and
      the end of training (gathered over processes; the samples that DDP repeats to even out the last batch are
      recorded once);
    - optionally records per-example gradient norms (`record_grad_norm`) and dense evaluations (`dense_eval_steps`).

    Scoring options are read from the training arguments (a [`ScoringConfig`], or any arguments object carrying the
    same fields); missing ones take the [`ScoringConfig`] defaults.

    With trl's `SFTTrainer`, whose training forward uses a fused LM head that never builds the logits, the logits come
    from trl's own `return_outputs=True` path, which recomputes them with one extra `no_grad` forward per batch.

    The buffering, gathering, de-duplication and the store's life cycle are a [`SignalRecorder`]'s
    (`trainer.signal_recorder`, built by `train()`); the mixin wires it into the Trainer's hooks. After `train()`,
    `trainer.signal_store` holds the [`SignalStore`].
    """

    def __init__(self, *args, **kwargs):
        bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs)
        training_args = bound.arguments.get("args")
        column = getattr(training_args, "example_id_column", ScoringOptions.example_id_column)
        train_dataset = bound.arguments.get("train_dataset")
        if train_dataset is not None:
            bound.arguments["train_dataset"] = self._with_example_ids(train_dataset, column)
        super().__init__(*bound.args, **bound.kwargs)
        self._scoring = ScoringOptions.from_args(self.args)
        self.signal_recorder: SignalRecorder | None = None
        self._recording = False
        self._task: str | None = None
        self._store_session: object | None = None
        self._train_session: object | None = None
        self._grad_collector = None
        self._last_presentation: dict[str, Any] | None = None
        self._dense_dataloader = None
        self._check_collator(self.data_collator)
        if not isinstance(self.data_collator, ExampleIdCollator):
            self.data_collator = ExampleIdCollator(self.data_collator, self._scoring.example_id_column)
        self.add_callback(_SignalCallback(self))

    # ------------------------------------------------------------------ set-up and validation
    @staticmethod
    def _with_example_ids(dataset, column: str):
        try:
            size = len(dataset)
        except TypeError:
            size = None
        if size == 0:
            raise ValueError("The training dataset is empty: there is nothing to train on or score. Check your "
                             "filtering and splits.")
        import datasets

        if isinstance(dataset, datasets.Dataset) and column not in dataset.column_names:
            logger.warning(f"The training dataset has no {column!r} column; adding ids 0..{size - 1} in the current "
                           f"row order. Call hf_influence.add_example_ids before any shuffle/select to control them.")
            dataset = add_example_ids(dataset, column)
        return dataset

    def _check_collator(self, collator) -> None:
        inner = collator.collator if isinstance(collator, ExampleIdCollator) else collator
        from transformers import DataCollatorWithFlattening

        packed = isinstance(inner, DataCollatorWithFlattening) or bool(getattr(inner, "padding_free", False))
        for flag in ("packing", "padding_free"):
            packed = packed or bool(getattr(self.args, flag, False))
        if packed:
            raise ValueError(
                "Packing / padding-free collation merges several examples into one row, so per-example signals are "
                "undefined. Use a padding collator (e.g. DataCollatorWithPadding) and set packing=False, "
                "padding_free=False."
            )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        column = self._scoring.example_id_column if hasattr(self, "_scoring") else getattr(
            self.args, "example_id_column", ScoringOptions.example_id_column)
        if self._signature_columns is not None and column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, column]

    def _validate_training_set(self) -> None:
        """Checks done before training: task, dataset size, ids, and (classification) the label column."""
        import datasets

        self._task = resolve_task(self.model, self._scoring.task)
        if self._task == "sequence_classification":
            check_single_label(self.model)
        dataset = self.train_dataset
        if dataset is None:
            return
        try:
            size = len(dataset)
        except TypeError:
            return
        if size == 0:
            raise ValueError("The training dataset is empty: there is nothing to train on or score.")
        if not isinstance(dataset, datasets.Dataset):
            return
        column = self._scoring.example_id_column
        if column not in dataset.column_names:
            raise ValueError(f"The training dataset has no {column!r} column (it was dropped after the trainer was "
                             "created). Add it with hf_influence.add_example_ids(dataset).")
        if self._task == "sequence_classification":
            label_column = next((c for c in LABEL_KEYS if c in dataset.column_names), None)
            if label_column is None:
                raise ValueError(
                    f"The training dataset has no label column (looked for {', '.join(map(repr, LABEL_KEYS))}; it "
                    f"has {dataset.column_names}). ScoringTrainer needs the gold class of every example."
                )
            num_labels = getattr(unwrap_model(self.model).config, "num_labels", None)
            labels = dataset.with_format("numpy")[label_column]
            validate_class_labels(np.asarray(labels), num_labels, label_column)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Train as the parent trainer does, recording signals (see [`ScoringMixin`]). Same arguments as
        `Trainer.train`; `resume_from_checkpoint` also continues the signal store from that checkpoint."""
        if self._scoring.record_signals:
            self._validate_training_set()
            if self.signal_recorder is None or self.signal_recorder.task != self._task:
                from accelerate.utils import gather_object

                self.signal_recorder = SignalRecorder(
                    self._task, record_grad_norm=self._scoring.record_grad_norm,
                    gather=gather_object if self.accelerator.num_processes > 1 else None)
            if self._scoring.record_grad_norm:
                self._make_grad_collector()
        self._train_session = object()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    @property
    def signal_store(self) -> SignalStore | None:
        """The [`SignalStore`] the signals of the last `train()` went to (None before training)."""
        return self.signal_recorder.store if self.signal_recorder is not None else None

    # ------------------------------------------------------------------ store life cycle
    def _store_metadata(self) -> dict[str, Any]:
        model = unwrap_model(self.accelerator.unwrap_model(self.model))
        dataset = self.train_dataset
        try:
            size = len(dataset)
        except TypeError:
            size = None
        config = self._scoring.to_dict()
        config["task"] = self._task or config["task"]
        for key in ("seed", "data_seed", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                    "world_size", "group_by_length", "train_sampling_strategy", "num_train_epochs", "max_steps"):
            config[key] = getattr(self.args, key, None)
        return {
            "model_class": type(model).__name__,
            "model_name": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
            "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
            "num_examples": size,
            "trainer_class": type(self).__name__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": config,
        }

    def _open_store(self, global_step: int) -> None:
        """Called on train begin (also when `auto_find_batch_size` restarts the loop)."""
        self._dense_dataloader = None
        self._recording = self._scoring.record_signals
        if not self._recording:
            return
        self.signal_recorder.open_store(
            self._scoring.resolve_signals_dir(self.args.output_dir), self._store_metadata(), global_step,
            write=self.is_world_process_zero(), overwrite=self._scoring.overwrite_signals,
            resume_keys=_RESUME_CONFIG_KEYS, restarted=self._store_session is self._train_session,
            barrier=self.accelerator.wait_for_everyone)
        self._store_session = self._train_session

    def _flush_signals(self) -> None:
        """Hand the buffered signals to the store (gathered over processes); every process calls it."""
        if self._recording and self.signal_store is not None:
            self.signal_recorder.flush()

    # ------------------------------------------------------------------ signals from the forward pass
    def _current_epoch(self) -> int:
        return int(math.floor(self.state.epoch or 0.0))

    def _check_batch(self, inputs: dict[str, Any], ids: torch.Tensor) -> torch.Tensor:
        packed = [k for k in _PACKED_BATCH_KEYS if k in inputs]
        rows = inputs["input_ids"].shape[0] if torch.is_tensor(inputs.get("input_ids")) else ids.shape[0]
        if packed or rows != ids.shape[0]:
            raise ValueError(
                f"The batch looks packed / padding-free ({ids.shape[0]} examples in {rows} rows"
                f"{', keys ' + ', '.join(packed) if packed else ''}): per-example signals need one example per row. "
                "Use a padding collator (e.g. DataCollatorWithPadding) and disable packing/padding_free."
            )
        labels = inputs.get("labels", inputs.get("label"))
        if labels is None:
            raise ValueError(
                f"The training batch has no 'labels' (keys: {sorted(inputs)}). ScoringTrainer needs the gold labels: "
                "a 'label' column for classification, or a collator that sets 'labels' for causal LM (e.g. "
                "DataCollatorForLanguageModeling(tokenizer, mlm=False))."
            )
        return labels

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The parent's loss; in training mode also records the signals of every example of the batch."""
        column = self._scoring.example_id_column
        ids = inputs.get(column) if hasattr(inputs, "get") else None
        if ids is not None:
            inputs = {k: v for k, v in inputs.items() if k != column}
        if self._recording and ids is None and model.training:
            raise ValueError(
                f"The training batch has no {column!r} entry, so its signals cannot be attributed to examples. Add "
                "ids with hf_influence.add_example_ids(dataset) (iterable datasets need the column too)."
            )
        if not (self._recording and model.training):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = self._check_batch(inputs, ids)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
        if logits is None:
            raise ValueError(
                f"{type(outputs).__name__} carries no logits: kernels that fuse the LM head and the loss (e.g. "
                "Liger's fused linear cross-entropy) skip them. Disable them (use_liger_kernel=False)."
            )
        # the grad norm needs each example's own loss right after this step's backward
        self._last_presentation = self.signal_recorder.record_presentation(
            ids, logits, labels, step=self.state.global_step, epoch=self._current_epoch(),
            immediate=self._grad_collector is not None)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        column = self._scoring.example_id_column
        if hasattr(inputs, "get") and column in inputs:
            inputs = {k: v for k, v in inputs.items() if k != column}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    # ------------------------------------------------------------------ per-example gradient norms
    def _make_grad_collector(self) -> None:
        from .grads import GhostNormCollector  # lazily: torch.func and the hook machinery only when asked for

        if getattr(self, "label_smoother", None) is not None or self.compute_loss_func is not None:
            raise ValueError("record_grad_norm=True needs the plain cross-entropy loss; it cannot be combined with "
                             "label_smoothing_factor or compute_loss_func.")
        model = self.model
        params = [p for p in model.parameters() if p.requires_grad]
        self._grad_collector = GhostNormCollector(model, params=params)
        self._grad_hooks_checked = False

    def training_step(self, model, inputs, num_items_in_batch=None, *args, **kwargs):
        """The parent's training step; with `record_grad_norm`, the backward also yields per-example grad norms."""
        if not (self._recording and self._grad_collector is not None and model.training):
            return super().training_step(model, inputs, num_items_in_batch, *args, **kwargs)
        if not self._grad_hooks_checked:  # once: no selected weight may be used outside its layer's forward
            column = self._scoring.example_id_column
            self._grad_hooks_checked = self._grad_collector.check_hooks({k: v for k, v in inputs.items()
                                                                         if k != column})
        self._last_presentation = None
        with self._grad_collector:
            loss = super().training_step(model, inputs, num_items_in_batch, *args, **kwargs)
        entry = self._last_presentation
        if entry is None:
            return loss
        squared = self._grad_collector.squared_norms().detach().float()
        # The backward'd scalar is L = sum_i w_i * loss_i with loss_i the example's own loss (mean over its label
        # tokens for causal LM). Its weights are proportional to 1 (classification: a batch mean) or to the number of
        # label tokens n_i (causal LM: a token sum over the accumulation window), and their scale is read off L itself,
        # so gradient accumulation, num_items_in_batch and multi-process scaling are all accounted for.
        own_losses = entry["values"][:, SIGNAL_NAMES.index("loss")].to(squared.device)
        weights = entry["num_tokens"].float().to(squared.device) if entry["num_tokens"] is not None else \
            torch.ones_like(own_losses)
        scale = 1.0
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            scale = float(scaler.get_scale())
        weighted = torch.nansum(weights * own_losses)
        factor = loss.detach().float().to(squared.device) * scale / weighted
        contribution = (weights * factor).abs()
        self.signal_recorder.set_grad_norm(entry, torch.where(contribution > 0,
                                                              squared.clamp_min(0).sqrt() / contribution,
                                                              torch.full_like(squared, float("nan"))))
        return loss

    # ------------------------------------------------------------------ dense evaluations
    def _maybe_dense_evaluate(self, state) -> None:
        every = self._scoring.dense_eval_steps
        if not (self._recording and every and state.global_step % every == 0):
            return
        # the epoch of the optimizer step just done (state.epoch reaches k + 1.0 at the last step of epoch k)
        epoch = max(math.ceil(state.epoch or 0.0) - 1, 0)
        max_epoch = self._scoring.dense_eval_max_epoch
        if max_epoch is not None and epoch >= max_epoch:
            return
        self.dense_evaluate(step=state.global_step, epoch=epoch)

    @torch.no_grad()
    def dense_evaluate(self, step: int | None = None, epoch: int | None = None) -> None:
        """Evaluate the whole training set (eval mode, `no_grad`) and buffer its signals in the dense table.

        The random number generators are restored afterwards, so training continues exactly as without it.
        """
        step = self.state.global_step if step is None else step
        model = self.model
        was_training = model.training
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        column = self._scoring.example_id_column
        epoch = self._current_epoch() if epoch is None else epoch
        try:
            model.eval()
            if self._dense_dataloader is None:  # built once per train() call, reused by every evaluation
                self._dense_dataloader = self.get_test_dataloader(self.train_dataset)
            for batch in self._dense_dataloader:
                inputs = self._prepare_inputs(batch)
                ids = inputs[column]
                inputs = {k: v for k, v in inputs.items() if k != column}
                labels = self._check_batch(inputs, ids)
                with self.compute_loss_context_manager():
                    outputs = model(**inputs)
                logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
                self.signal_recorder.record_dense(ids, logits, labels, step=step, epoch=epoch)
        finally:
            model.train(was_training)
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)


class ScoringTrainer(ScoringMixin, Trainer):
    """A `transformers.Trainer` that records per-example training signals into a [`SignalStore`].

    Same constructor and `train()` as `Trainer`; pass a [`ScoringConfig`] as `args` to set the scoring options.
    Sequence classification (`*ForSequenceClassification`, single label) and causal language models (plain or
    PEFT/LoRA) are supported; for causal LM each signal is averaged over the example's own label tokens.

    Example:
        ```python
        >>> from hf_influence import ScoringConfig, ScoringTrainer, add_example_ids
        >>> args = ScoringConfig(output_dir="out", num_train_epochs=3, per_device_train_batch_size=32)
        >>> trainer = ScoringTrainer(model=model, args=args, train_dataset=add_example_ids(train),
        ...                          data_collator=DataCollatorWithPadding(tokenizer))
        >>> trainer.train()
        >>> summary = trainer.signal_store.summary()  # forgetting, aum, confidence, variability, ... per example_id
        ```
    """


__all__ = ["ScoringMixin", "ScoringTrainer"]
