"""`SignalRecorder`: per-example training signals from logits, buffered on the device and handed to a `SignalStore`.

The recorder knows nothing of `transformers.Trainer`: it is given the ids, logits and labels of each training batch
(`record_presentation`) or dense evaluation batch (`record_dense`), keeps them on their device, and at a `flush`
turns them into one table per kind, gathers the tables over processes (with the `gather` function it was built with),
drops the presentations that DDP repeated to even out the last batch, and appends the rest to the store. `open_store`
runs the store's life cycle at the start of training (new, continued from a checkpoint, or replaced). The
`ScoringMixin` of `hf_influence.trainer` only wires these calls into the Trainer's hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers.utils import logging

from .signals import SIGNAL_NAMES, causal_lm_signals, token_signals
from .store import DENSE, PRESENTATIONS, SignalStore

logger = logging.get_logger(__name__)

#: Classification logits are kept per step and turned into signals in one batch (at a flush, or once this many bytes
#: of logits are waiting): a training step then launches no signal kernels, which matters on launch-bound GPUs.
DEFERRED_LOGITS_BYTES = 64 * 2**20

#: The columns that identify one record of each kind: an example is presented once per epoch, evaluated once per step.
RECORD_KEYS: dict[str, tuple[str, str]] = {PRESENTATIONS: ("example_id", "epoch"), DENSE: ("example_id", "step")}


def signal_matrix(signals: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The signals as a float32 `[batch, len(SIGNAL_NAMES)]` matrix, columns in `SIGNAL_NAMES` order (as buffered)."""
    return torch.stack([signals[name].float() for name in SIGNAL_NAMES], dim=1)


def drop_repeated_records(frame: pd.DataFrame, key: tuple[str, ...] | list[str], seen: Any = None) -> pd.DataFrame:
    """Keep the first record (lowest `step`, then `example_id`) of every `key`, and none whose key is in `seen`.

    DDP's `even_batches` repeats samples from the start of the data to fill the last batch of an epoch, so the
    gathered tables of all processes hold some (example, epoch) presentations twice; a flush in the middle of an
    epoch may also meet keys the store already holds (`seen`, a `pandas.MultiIndex` or a collection of key tuples).

    Returns:
        `pandas.DataFrame`: the kept rows, in (`step`, `example_id`) order.
    """
    key = list(key)
    frame = frame.sort_values(["step", "example_id"], kind="stable").drop_duplicates(key)
    if len(frame) and seen is not None and len(seen):
        frame = frame[~pd.MultiIndex.from_frame(frame[key]).isin(seen)]
    return frame


class SignalRecorder:
    """Buffers per-example signals on the device and appends them to a [`SignalStore`] at each flush.

    Classification logits are kept as they are and turned into signals many steps at a time (at each flush, or once
    `DEFERRED_LOGITS_BYTES` of logits wait), so recording a step launches no extra kernels; causal-LM signals are
    reduced per step (their logits are large), and so are those of a presentation whose per-example loss is needed at
    once (`immediate=True`, e.g. to scale its gradient norm).

    Args:
        task (`str`): `"sequence_classification"` or `"causal_lm"`.
        record_grad_norm (`bool`, defaults to `False`): presentations get a `grad_norm` column (NaN unless set with
            `set_grad_norm`).
        gather (callable, *optional*): with several processes, the all-gather of a list of Python objects (e.g.
            `accelerate.utils.gather_object`); None for one process.

    Example:
        ```python
        >>> recorder = SignalRecorder("sequence_classification")
        >>> recorder.record_presentation(ids, logits, labels, step=0, epoch=0)
        >>> recorder.flush(store)  # the store now holds one presentation per example of the batch
        ```
    """

    def __init__(self, task: str, *, record_grad_norm: bool = False,
                 gather: Callable[[list], list] | None = None) -> None:
        self.task = task
        self.record_grad_norm = record_grad_norm
        self.gather = gather
        self.store: SignalStore | None = None
        self._nan_warned = False
        self.clear()

    def clear(self) -> None:
        """Drop everything buffered (e.g. when the training loop restarts)."""
        self.buffers: dict[str, list[dict[str, Any]]] = {PRESENTATIONS: [], DENSE: []}
        self._deferred_bytes = 0

    # ---- store life cycle ----------------------------------------------------------------------------------------

    def open_store(self, path: str, metadata: dict[str, Any], global_step: int, *, write: bool = True,
                   overwrite: bool = False, resume_keys: tuple[str, ...] = (), restarted: bool = False,
                   barrier: Callable[[], None] | None = None) -> SignalStore:
        """Open the store the signals of a training run go to, and make it the recorder's `store`.

        - `restarted` (the training loop restarted within one run, e.g. `auto_find_batch_size`): the current store
          drops what was recorded from `global_step` on.
        - A store already in `path`, `global_step > 0` (resumed from a checkpoint): continued after checking that
          its metadata agree on `resume_keys`, with the records from `global_step` on dropped.
        - A store already in `path`, training from scratch: replaced when it is empty or `overwrite`, else refused.
        - No store in `path`: a new one (with a warning when resuming, since the earlier signals are missing).

        Args:
            path (`str`): the store's folder.
            metadata (`dict`): run metadata written with a new store (and compared with an existing one).
            global_step (`int`): the optimizer step training starts from.
            write (`bool`, defaults to `True`): whether this process writes (the main process only).
            overwrite (`bool`, defaults to `False`): replace a non-empty store left by an earlier run.
            resume_keys (`tuple[str, ...]`): config entries that must agree between the store and a resumed run.
            restarted (`bool`, defaults to `False`): see above.
            barrier (callable, *optional*): waits for every process (so that all of them read the folder before the
                main process changes it, and see the change after).

        Raises:
            ValueError: for an earlier run's store without `overwrite`, or a resumed run with other settings.
        """
        barrier = barrier or (lambda: None)
        self.clear()
        if restarted and self.store is not None:
            self.store.truncate(global_step)
            return self.store
        existing = SignalStore.load(path) if SignalStore.exists(path) else None
        barrier()  # every process has looked at (and read) the folder before the main process changes it
        if existing is not None:
            existing.write = write
            if global_step > 0:
                existing.check_compatible(metadata, resume_keys)
                existing.truncate(global_step)
                store = existing
                logger.info(f"Continuing the signal store at {path} from step {global_step}.")
            elif (len(existing) == 0 and len(existing.dense_records()) == 0) or overwrite:
                existing.clear()
                store = SignalStore(path, metadata, write=write)
                store.initialize()
            else:
                raise ValueError(
                    f"{path} already holds a signal store from an earlier run ({len(existing)} presentations). "
                    "Resume it with trainer.train(resume_from_checkpoint=...), choose another output_dir/signals_dir, "
                    "or set overwrite_signals=True to replace it."
                )
        else:
            if global_step > 0:
                logger.warning(f"Resuming from step {global_step} without a signal store at {path}: the signals of "
                               "the steps before the checkpoint are missing.")
            store = SignalStore(path, metadata, write=write)
            store.initialize()
        barrier()
        self.store = store
        return store

    # ---- recording -----------------------------------------------------------------------------------------------

    def signals(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The signals of one batch (`hf_influence.signals`), from detached logits, without a host sync."""
        logits = logits.detach()
        if self.task == "causal_lm":
            if logits.dim() != 3:
                raise ValueError(f"task='causal_lm' expects logits [batch, seq, vocab], got {tuple(logits.shape)}.")
            return causal_lm_signals(logits, labels, check=False)  # no host sync per step
        self.check_classification_logits(logits)
        # labels were range-checked on the dataset before training; token_signals avoids a device sync per step
        return token_signals(logits, labels)

    @staticmethod
    def check_classification_logits(logits: torch.Tensor) -> None:
        """Raise unless `logits` are `[batch, num_labels]`."""
        if logits.dim() != 2:
            raise ValueError(f"task='sequence_classification' expects logits [batch, num_labels], got "
                             f"{tuple(logits.shape)}. Set task='causal_lm' for language models.")

    def record_presentation(self, ids: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, *, step: int,
                            epoch: int, immediate: bool = False) -> dict[str, Any]:
        """Buffer the presentation of a training batch: example ids `[B]`, the training forward's logits and labels.

        Args:
            immediate (`bool`, defaults to `False`): compute the signals now even for classification (their
                `values` and `num_tokens` are then readable in the returned entry).

        Returns:
            `dict`: the buffered entry (`ids`, `step`, `epoch`, `num_tokens`, and `values` `[B, len(SIGNAL_NAMES)]`
            once computed); `set_grad_norm` adds `grad_norm`.
        """
        entry: dict[str, Any] = {"ids": ids.detach().to(logits.device), "step": int(step), "epoch": int(epoch),
                                 "num_tokens": None}
        if self.task == "causal_lm" or immediate:
            signals = self.signals(logits, labels)  # per-token reductions (or the loss a caller needs) now
            entry["values"] = signal_matrix(signals)
            entry["num_tokens"] = signals.get("num_tokens")
        else:
            self.check_classification_logits(logits)
            kept = logits.detach()
            if kept.untyped_storage().nbytes() > kept.numel() * kept.element_size():
                kept = kept.clone()  # a view into a larger tensor: do not keep that tensor alive
            entry["logits"], entry["labels"] = kept, labels.detach()
            self._deferred_bytes += kept.numel() * 4
        self.buffers[PRESENTATIONS].append(entry)
        if self._deferred_bytes > DEFERRED_LOGITS_BYTES:
            self.materialize_deferred()
        return entry

    @staticmethod
    def set_grad_norm(entry: dict[str, Any], grad_norm: torch.Tensor) -> None:
        """Attach per-example gradient norms `[B]` to a presentation entry returned by `record_presentation`."""
        entry["grad_norm"] = grad_norm

    def record_dense(self, ids: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, *, step: int,
                     epoch: int) -> None:
        """Buffer the signals of one batch of a dense evaluation of the training set at optimizer step `step`."""
        values = signal_matrix(self.signals(logits, labels))
        self.buffers[DENSE].append({"ids": ids.to(values.device), "values": values, "step": int(step),
                                    "epoch": int(epoch)})

    def materialize_deferred(self) -> None:
        """Compute the signals of the buffered classification logits, all steps at once."""
        pending = [entry for entry in self.buffers[PRESENTATIONS] if "logits" in entry]
        self._deferred_bytes = 0
        if not pending:
            return
        logits = torch.cat([entry.pop("logits") for entry in pending])
        labels = torch.cat([entry.pop("labels") for entry in pending])
        values = signal_matrix(token_signals(logits, labels))
        for entry, chunk in zip(pending, values.split([entry["ids"].shape[0] for entry in pending])):
            entry["values"] = chunk

    # ---- flushing ------------------------------------------------------------------------------------------------

    def drain(self, kind: str) -> pd.DataFrame:
        """Empty the buffer of `kind` (`PRESENTATIONS` or `DENSE`) into a table of this process's records."""
        if kind == PRESENTATIONS:
            self.materialize_deferred()
        buffer, self.buffers[kind] = self.buffers[kind], []
        columns = list(SIGNAL_NAMES) + (["grad_norm"] if self.record_grad_norm and kind == PRESENTATIONS else [])
        if not buffer:
            return pd.DataFrame({"example_id": np.zeros(0, np.int64), "epoch": np.zeros(0, np.int64),
                                 "step": np.zeros(0, np.int64),
                                 **{c: np.zeros(0, np.float32) for c in columns}})
        ids = torch.cat([entry["ids"] for entry in buffer]).cpu().numpy().astype(np.int64)
        values = torch.cat([entry["values"] for entry in buffer]).cpu().numpy()
        sizes = [entry["ids"].shape[0] for entry in buffer]
        frame = pd.DataFrame({
            "example_id": ids,
            "epoch": np.repeat([entry["epoch"] for entry in buffer], sizes).astype(np.int64),
            "step": np.repeat([entry["step"] for entry in buffer], sizes).astype(np.int64),
        })
        for j, name in enumerate(SIGNAL_NAMES):
            frame[name] = values[:, j]
        if "grad_norm" in columns:
            norms = [entry.get("grad_norm") for entry in buffer]
            frame["grad_norm"] = torch.cat([
                n if n is not None else torch.full((s,), float("nan"), device=entry["ids"].device)
                for n, s, entry in zip(norms, sizes, buffer)]).float().cpu().numpy()
        return frame

    def flush(self, store: SignalStore | None = None) -> None:
        """Move the buffered signals to the CPU, gather them over processes and append them to the store.

        Every process must call it at the same point (the gather is a collective). With several processes, the
        presentations repeated by DDP (and keys the store already holds) are recorded once (`drop_repeated_records`).

        Args:
            store (`SignalStore`, *optional*): defaults to the store of `open_store`.
        """
        store = store if store is not None else self.store
        if store is None:
            raise RuntimeError("SignalRecorder.flush needs a store: call open_store(...) first or pass one.")
        for kind, key in RECORD_KEYS.items():
            frame = self.drain(kind)
            if self.gather is not None:
                frames = [f for f in self.gather([frame]) if len(f)]
                frame = pd.concat(frames, ignore_index=True) if frames else frame
                frame = drop_repeated_records(frame, key, store.existing_keys(kind, key) if len(frame) else None)
            if len(frame) and kind == PRESENTATIONS and not self._nan_warned and frame["loss"].isna().any():
                self._nan_warned = True
                logger.warning(f"{int(frame['loss'].isna().sum())} presentations have a NaN loss (e.g. example "
                               f"{int(frame.loc[frame['loss'].isna(), 'example_id'].iloc[0])}); they are recorded as "
                               "NaN and skipped by the summaries. This warning is shown once.")
            store.append(frame, kind)
