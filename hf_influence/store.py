"""`SignalStore`: per-example training signals on disk (Parquet), and the summaries computed from them.

Layout of a store folder::

    metadata.json                  model, dataset fingerprint, number of examples, scoring config, list of chunks
    presentations-000000.parquet   one row per presentation of an example in a training minibatch
    dense-000001.parquet           one row per example per dense evaluation (optional)

Every file is written to a temporary name and moved into place with `os.replace`, and `metadata.json` (which lists
the chunk files that belong to the store) is replaced last, so a run killed at any moment leaves a consistent store.

Memory: presentations are held in memory (one row per example per epoch). Dense evaluations (one row per example per
evaluation: the whole training set every 50 steps makes about 95 million rows on SNLI) are not: a store that writes to
disk keeps only the names of its dense chunks, and the forgetting events they give are counted one chunk at a time
(`ForgettingCounter`), so memory stays proportional to the number of examples. `dense_records()` still returns the
whole table when asked for it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from transformers.utils import logging

from .dynamics_summary import (  # noqa: F401  (re-exported: the summaries were defined here)
    KEY_COLUMNS,
    ForgettingCounter,
    forgetting_events,
    nanmean_keep_inf,
    spearman,
    summarize_records,
)
from .signals import SIGNAL_NAMES

logger = logging.get_logger(__name__)

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
PRESENTATIONS = "presentations"
DENSE = "dense"
KINDS: tuple[str, ...] = (PRESENTATIONS, DENSE)
SUMMARY_COLUMNS: tuple[str, ...] = ("forgetting", "aum", "confidence", "variability", "correctness", "mean_loss")
FORGETTING_SOURCES: tuple[str, ...] = ("dense", "presentations")
# Metadata entries that must agree for a store to be continued (resume) or combined.
_IDENTITY_KEYS: tuple[str, ...] = ("dataset_fingerprint", "num_examples", "model_class")


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file moved into place: a crash leaves the old file or the new one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _atomic_write_parquet(path: str, frame: pd.DataFrame) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    data = {name: pd.Series(dtype="int64" if name in KEY_COLUMNS else "float32") for name in columns}
    return pd.DataFrame(data)


@dataclass(frozen=True)
class _Chunk:
    """A dense chunk file of a store, known by name, row count and step range (its rows stay on disk)."""

    name: str
    rows: int
    step_min: int
    step_max: int
    #: Rows above this step were dropped by `truncate` in a store that does not write (the file is another's).
    step_limit: int | None = None


def _chunk_of(path: str, name: str) -> _Chunk:
    """Row count and step range of a chunk file, from its Parquet footer (no rows are read when it has statistics)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(os.path.join(path, name)).metadata
    column = meta.schema.names.index("step")
    lows, highs = [], []
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            steps = pd.read_parquet(os.path.join(path, name), columns=["step"])["step"]
            return _Chunk(name, len(steps), int(steps.min()), int(steps.max()))
        lows.append(int(stats.min))
        highs.append(int(stats.max))
    if not lows:
        return _Chunk(name, 0, 0, -1)
    return _Chunk(name, meta.num_rows, min(lows), max(highs))


def _cast(frame: pd.DataFrame) -> pd.DataFrame:
    for name in frame.columns:
        frame[name] = frame[name].astype("int64" if name in KEY_COLUMNS else "float32")
    return frame


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Check the columns of a records frame and cast them to the store's dtypes."""
    missing = [c for c in (*KEY_COLUMNS, *SIGNAL_NAMES) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"Records lack the columns {missing}; a store needs {list(KEY_COLUMNS) + list(SIGNAL_NAMES)} "
            "(plus optional 'grad_norm')."
        )
    return _cast(frame.reset_index(drop=True).copy())


class SignalStore:
    """Per-example training signals, one row per presentation, with the summaries that training dynamics give.

    Made by [`ScoringTrainer`] (`trainer.signal_store` after `train()`), reopened with [`SignalStore.load`], or built
    in memory with [`SignalStore.from_records`].

    Columns of [`~SignalStore.records`]: `example_id` (int64), `epoch` (int, from 0), `step` (the optimizer step
    the minibatch contributed to, counted from 0), and the signals of `hf_influence.signals` (`loss`, `prob_gold`,
    `margin`, `correct`, `el2n`, `entropy`, float32), plus `grad_norm` when recorded. For causal language models
    each signal is the mean over that example's own label tokens (shifted, `-100` masked); `correct` is then the
    fraction of its label tokens predicted correctly.

    Args:
        path (`str` or `None`): folder of the store; `None` keeps it in memory only.
        metadata (`dict` or `None`): model class/name, dataset fingerprint, number of examples, scoring config.
        write (`bool`, defaults to `True`): write chunks to `path` (only the main process writes in distributed runs).

    Example:
        ```python
        >>> store = SignalStore.load("out/signals")
        >>> store.summary().sort_values("aum").head()  # lowest AUM first: likely mislabeled or hard
        ```
    """

    def __init__(self, path: str | os.PathLike | None = None, metadata: dict[str, Any] | None = None,
                 write: bool = True):
        self.path = None if path is None else os.fspath(path)
        self._metadata: dict[str, Any] = dict(metadata or {})
        self.write = write and self.path is not None
        # presentations: frames in memory; dense: in order, frames in memory (a store that does not write) or
        # `_Chunk`s on disk (a store that writes, and every dense chunk of a loaded store)
        self._frames: dict[str, list[Any]] = {kind: [] for kind in KINDS}
        self._files: dict[str, list[str]] = {kind: [] for kind in KINDS}
        self._next_chunk = 0
        self._cache: dict[str, pd.DataFrame | None] = {kind: None for kind in KINDS}
        self._forgetting: ForgettingCounter | None = None  # dense forgetting of the first `_forgetting_fed` entries
        self._forgetting_fed = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | os.PathLike) -> SignalStore:
        """Reopen a store folder written by [`ScoringTrainer`] (read-only until `write` is set).

        Raises:
            FileNotFoundError: if `path` holds no `metadata.json`.
        """
        path = os.fspath(path)
        meta_path = os.path.join(path, METADATA_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"No signal store at {path!r} (missing {METADATA_FILE}). Pass the folder written by ScoringTrainer, "
                "by default <output_dir>/signals."
            )
        with open(meta_path) as handle:
            content = json.load(handle)
        if content.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"Store {path!r} has format version {content.get('format_version')!r}; this hf_influence reads "
                f"version {FORMAT_VERSION}."
            )
        store = cls(path, content.get("metadata", {}), write=False)
        store._next_chunk = int(content.get("next_chunk", 0))
        for name in content.get("files", {}).get(PRESENTATIONS, []):
            store._files[PRESENTATIONS].append(name)
            store._frames[PRESENTATIONS].append(_normalise(pd.read_parquet(os.path.join(path, name))))
        for name in content.get("files", {}).get(DENSE, []):  # dense rows stay on disk until read
            store._files[DENSE].append(name)
            store._frames[DENSE].append(_chunk_of(path, name))
        return store

    @classmethod
    def from_records(cls, records: pd.DataFrame, dense: pd.DataFrame | None = None,
                     metadata: dict[str, Any] | None = None) -> SignalStore:
        """An in-memory store holding `records` (and optionally a dense table), e.g. to summarise hand-made data."""
        store = cls(None, metadata)
        store._frames[PRESENTATIONS].append(_normalise(records))
        if dense is not None:
            store._frames[DENSE].append(_normalise(dense))
        return store

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether `path` holds a store (a `metadata.json`)."""
        return os.path.isfile(os.path.join(os.fspath(path), METADATA_FILE))

    # ------------------------------------------------------------------ metadata and compatibility
    @property
    def metadata(self) -> dict[str, Any]:
        """Model class/name, dataset fingerprint, number of examples and the scoring config of the run."""
        return dict(self._metadata)

    def check_compatible(self, metadata: dict[str, Any], compare_config: Sequence[str] = ()) -> None:
        """Refuse to continue this store with a run described by `metadata`.

        Compares the dataset fingerprint, the number of examples, the model class and the config entries named in
        `compare_config`.

        Raises:
            ValueError: listing every entry that differs, with both values.
        """
        differences = []
        for key in _IDENTITY_KEYS:
            old, new = self._metadata.get(key), metadata.get(key)
            if old is not None and new is not None and old != new:
                differences.append(f"{key}: store has {old!r}, this run has {new!r}")
        old_config, new_config = self._metadata.get("config", {}), metadata.get("config", {})
        for key in compare_config:
            if key in old_config and old_config.get(key) != new_config.get(key):
                differences.append(f"config.{key}: store has {old_config.get(key)!r}, this run has "
                                   f"{new_config.get(key)!r}")
        if differences:
            raise ValueError(
                f"The signal store at {self.path!r} was written for a different dataset or with different arguments, "
                f"so it cannot be continued: {'; '.join(differences)}. Use another signals_dir/output_dir, or start "
                "from scratch with overwrite_signals=True."
            )

    # ------------------------------------------------------------------ writing
    def _write_manifest(self) -> None:
        content = {
            "format_version": FORMAT_VERSION,
            "metadata": self._metadata,
            "files": self._files,
            "next_chunk": self._next_chunk,
        }
        atomic_write_bytes(os.path.join(self.path, METADATA_FILE),
                            json.dumps(content, indent=2, sort_keys=True, default=str).encode())

    def initialize(self) -> None:
        """Create the folder and write `metadata.json` (no-op when not writing)."""
        if self.write:
            os.makedirs(self.path, exist_ok=True)
            self._write_manifest()

    def append(self, frame: pd.DataFrame, kind: str = PRESENTATIONS) -> None:
        """Add rows (one chunk file when writing). `kind` is `"presentations"` or `"dense"`.

        Dense rows written to disk are not kept in memory (their forgetting events are counted as they come).
        """
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}; choose one of {KINDS}.")
        if len(frame) == 0:
            return
        frame = _normalise(frame)
        name = self._write_chunk(kind, frame) if self.write else None
        if kind == PRESENTATIONS:
            self._frames[kind].append(frame)
            self._cache[kind] = None
        else:
            counted = self._forgetting is not None and self._forgetting_fed == len(self._frames[DENSE])
            entry = frame if name is None else _Chunk(name, len(frame), int(frame["step"].min()),
                                                     int(frame["step"].max()))
            self._frames[DENSE].append(entry)
            if counted:
                self._forgetting.update(frame)
                self._forgetting_fed += 1
        if name is not None:
            self._files[kind].append(name)
            self._write_manifest()

    def _write_chunk(self, kind: str, frame: pd.DataFrame) -> str:
        """Write `frame` as the next chunk file of `kind` (not yet listed in the manifest) and return its name."""
        name = f"{kind}-{self._next_chunk:06d}.parquet"
        self._next_chunk += 1
        os.makedirs(self.path, exist_ok=True)
        _atomic_write_parquet(os.path.join(self.path, name), frame)
        return name

    def truncate(self, global_step: int) -> None:
        """Drop what was recorded after optimizer step `global_step` (used when resuming from a checkpoint).

        Presentations with `step >= global_step` happened after the checkpoint and are dropped; dense evaluations
        with `step <= global_step` ran before it and are kept. When writing, the kept presentations are rewritten as
        one chunk, dense chunks one at a time (a chunk wholly kept stays as it is), the manifest is replaced, then the
        old chunk files are removed. A store that does not write leaves the files alone and drops the rows as it
        reads them.
        """
        old_files = {kind: list(files) for kind, files in self._files.items()}
        frame = self._concat(PRESENTATIONS)
        kept = frame[frame["step"] < global_step].reset_index(drop=True)
        if len(kept) != len(frame) or len(self._frames[PRESENTATIONS]) > 1:
            self._frames[PRESENTATIONS] = [kept] if len(kept) else []
            self._cache[PRESENTATIONS] = None
            if self.write:
                self._files[PRESENTATIONS] = [self._write_chunk(PRESENTATIONS, kept)] if len(kept) else []
        self._truncate_dense(global_step)
        if self.write:
            self._write_manifest()
            for kind in KINDS:
                for name in set(old_files[kind]) - set(self._files[kind]):
                    try:
                        os.remove(os.path.join(self.path, name))
                    except FileNotFoundError:
                        pass

    def _truncate_dense(self, global_step: int) -> None:
        entries = []
        for entry in self._frames[DENSE]:
            if isinstance(entry, _Chunk):
                limit = global_step if entry.step_limit is None else min(entry.step_limit, global_step)
                if entry.rows == 0 or entry.step_min > limit:
                    continue
                if entry.step_max <= limit:
                    entries.append(entry)
                    continue
                if not self.write:
                    entries.append(_Chunk(entry.name, entry.rows, entry.step_min, entry.step_max, limit))
                    continue
                frame = self._read_chunk(entry)
            else:
                frame = entry
            kept = frame[frame["step"] <= global_step].reset_index(drop=True)
            if not len(kept):
                continue
            if self.write:
                entries.append(_Chunk(self._write_chunk(DENSE, kept), len(kept), int(kept["step"].min()),
                                      int(kept["step"].max())))
            else:
                entries.append(kept)
        self._frames[DENSE] = entries
        self._files[DENSE] = [entry.name for entry in entries if isinstance(entry, _Chunk)]
        self._forgetting, self._forgetting_fed = None, 0

    def clear(self) -> None:
        """Remove every record (and, when writing, this store's chunk files)."""
        self.truncate(-1)

    def existing_keys(self, kind: str, columns: Sequence[str], steps: tuple[int, int] | None = None
                      ) -> pd.MultiIndex:
        """The distinct tuples of `columns` already stored for `kind` (used to drop repeated rows).

        Args:
            kind (`str`): `"presentations"` or `"dense"`.
            columns (`Sequence[str]`): the key columns.
            steps (`tuple[int, int]`, *optional*): only rows whose `step` lies in `[steps[0], steps[1]]`, e.g. the
                step range of the rows about to be appended; dense chunks outside it are not read at all.

        For dense evaluations on disk only the needed columns are read, one chunk at a time.
        """
        wanted = list(dict.fromkeys([*columns, "step"]))
        if kind == PRESENTATIONS:
            frames = [self._concat(kind)[wanted]]
        else:
            frames = [frame for entry in self._frames[DENSE]
                      if steps is None or not isinstance(entry, _Chunk)
                      or (entry.step_min <= steps[1] and entry.step_max >= steps[0])
                      for frame in self._dense_frames(wanted, entries=[entry])]
        if steps is not None:
            frames = [frame[frame["step"].between(*steps)] for frame in frames]
        frames = [frame[list(columns)].drop_duplicates() for frame in frames]
        frame = pd.concat(frames, ignore_index=True) if frames else _empty_frame(columns)
        return pd.MultiIndex.from_frame(frame.drop_duplicates())

    # ------------------------------------------------------------------ reading
    def _concat(self, kind: str) -> pd.DataFrame:
        if kind != PRESENTATIONS:
            raise ValueError("Dense rows are read chunk by chunk (_dense_frames), never held as one table.")
        if self._cache[kind] is None:
            frames = self._frames[kind]
            if frames:
                self._cache[kind] = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
            else:
                self._cache[kind] = _empty_frame((*KEY_COLUMNS, *SIGNAL_NAMES))
        return self._cache[kind]

    def _read_chunk(self, chunk: _Chunk, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows of a dense chunk file (only `columns` if given), without those a truncation dropped."""
        file = os.path.join(self.path, chunk.name)
        wanted = None if columns is None else list(dict.fromkeys([*columns, "step"]))
        try:
            frame = pd.read_parquet(file, columns=wanted)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"The dense chunk {chunk.name} of the signal store at {self.path!r} is gone: another process (the "
                "main process, resuming) rewrote the store. Reopen it with SignalStore.load(path)."
            ) from err
        if chunk.step_limit is not None:
            frame = frame[frame["step"] <= chunk.step_limit]
        if columns is None:
            return _normalise(frame)
        return _cast(frame[list(columns)].reset_index(drop=True).copy())

    def _dense_frames(self, columns: Sequence[str] | None = None, start: int = 0, entries: list[Any] | None = None
                      ) -> Iterator[pd.DataFrame]:
        """The dense rows (only `columns` if given), one chunk at a time, in the order they were recorded (of the
        entries from `start` on, or of `entries`)."""
        for entry in self._frames[DENSE][start:] if entries is None else entries:
            if isinstance(entry, _Chunk):
                if entry.rows and (entry.step_limit is None or entry.step_min <= entry.step_limit):
                    yield self._read_chunk(entry, columns)
            else:
                yield entry if columns is None else entry[list(columns)]

    def _num_dense_rows(self) -> int:
        total = 0
        for entry in self._frames[DENSE]:
            if isinstance(entry, _Chunk) and entry.step_limit is not None and entry.step_max > entry.step_limit:
                total += len(self._read_chunk(entry, ["step"]))
            else:
                total += entry.rows if isinstance(entry, _Chunk) else len(entry)
        return total

    def records(self) -> pd.DataFrame:
        """One row per presentation: `example_id, epoch, step`, the signals (and `grad_norm` if recorded)."""
        return self._concat(PRESENTATIONS).copy()

    def dense_records(self) -> pd.DataFrame:
        """One row per example per dense evaluation (same columns as `records`; `step` = optimizer steps done).

        Reads every dense chunk into one table: memory grows with the number of evaluations. The summaries do not
        need it (see `dense_forgetting`).
        """
        frames = list(self._dense_frames())
        if not frames:
            return _empty_frame((*KEY_COLUMNS, *SIGNAL_NAMES))
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].copy()

    def dense_forgetting(self) -> pd.Series:
        """Forgetting events per example on the dense evaluations (see `forgetting_events`), indexed by `example_id`.

        Counted one chunk at a time (`ForgettingCounter`, memory proportional to the number of examples), and kept
        up to date as evaluations are appended. If some example's evaluations were recorded out of step order, they
        are counted on the table instead (the same result, with memory that grows with the rows), with a warning.
        """
        if self._forgetting is None:
            self._forgetting, self._forgetting_fed = ForgettingCounter(), 0
        counter = self._forgetting
        for frame in self._dense_frames(("example_id", "step", "correct"), start=self._forgetting_fed):
            counter.update(frame)
        self._forgetting_fed = len(self._frames[DENSE])
        if counter.in_order:
            return counter.result()
        logger.warning("Dense evaluations were recorded out of step order; counting forgetting events on the whole "
                       "table (memory grows with the number of evaluations).")
        return forgetting_events(pd.concat(self._dense_frames(("example_id", "step", "correct")),
                                           ignore_index=True))

    def __len__(self) -> int:
        return len(self._concat(PRESENTATIONS))

    def __repr__(self) -> str:
        return f"SignalStore(path={self.path!r}, presentations={len(self)}, dense={self._num_dense_rows()})"

    # ------------------------------------------------------------------ summaries
    def summary(self, forgetting_source: str | None = None, *, burn_out: int | None = None,
                variability_ddof: int = 0, accumulated_el2n_epochs: int | None = None,
                accumulated_margin_epochs: int | None = None) -> pd.DataFrame:
        """Per-example scores, indexed by `example_id`.

        Columns:

        - `forgetting`: number of forgetting events (Toneva et al., ICLR 2019): transitions `acc_t > acc_{t+1}`
          between consecutive evaluations of the example ordered by step; `inf` for an example never learned (never
          correct). Higher = harder. For causal LM, `correct` is the fraction of the example's label tokens
          predicted correctly, so an event is any decrease of that fraction and "never learned" means it stayed 0.
        - `aum`: area under the margin (Pleiss et al., NeurIPS 2020, Eq. 1-2), the mean over presentations of the
          logit margin `z_y - max_{k!=y} z_k`. Lower = harder / likely mislabeled.
        - `confidence`, `variability`, `correctness`: dataset cartography (Swayamdipta et al., EMNLP 2020): the mean
          over epochs of `prob_gold`, its population standard deviation over epochs, and the mean over epochs of
          `correct` (the fraction of epochs correct). Each epoch is first reduced to the mean of that example's
          presentations in the epoch. Higher confidence = easier; high variability = ambiguous.
        - `mean_loss`: mean loss over presentations. Higher = harder.
        - `el2n_epoch_<k>`: EL2N (Paul et al., NeurIPS 2021, Def. 2.3) from the training forward passes of epoch k
          (mean of that epoch's presentations). Higher = harder.
        - `mean_grad_norm`: mean per-example gradient norm over presentations, when recorded. Higher = harder.

        NaN signals (e.g. a NaN loss) are skipped by the means.

        Args:
            forgetting_source (`str` or `None`): `"dense"` counts forgetting on the dense evaluations,
                `"presentations"` on the training minibatch presentations. `None` uses `"dense"` when the store
                has a dense table.
            burn_out (`int`, *optional*): compute the cartography columns (`confidence`, `variability`,
                `correctness`) from the first `burn_out` epochs only (the cartography code's `burn_out`); the other
                columns use every epoch.
            variability_ddof (`int`, defaults to 0): 0 = population standard deviation (the paper, `np.std`), 1 =
                the bias-corrected sample standard deviation (an option of the cartography code).
            accumulated_el2n_epochs (`int`, *optional*): also add `el2n_accumulated`, the sum of EL2N over every
                training presentation of the first k epochs (the CCS code's EL2N, Zheng et al. 2023, k = 10; not Paul
                et al.'s eval-mode average over runs).
            accumulated_margin_epochs (`int`, *optional*): also add `prob_margin_accumulated`, the sum over every
                training presentation of the first k epochs of the probability margin `p_y - max_{k!=y} p_k` (the
                CCS code's "accumulated_margin", its default difficulty score; Zheng et al. 2023). Lower = harder.
                It is exact from the stored signals: with `loss = -log p_y` and the logit margin `M`, the runner-up
                probability is `p_y exp(-M)`, so the margin is `exp(-loss) - exp(-loss - M)`. Classification only:
                a causal-LM store holds token means, from which a per-token probability margin cannot be recovered.

        The options used are recorded in the frame's `attrs["cartography"]` and `attrs["accumulated_epochs"]` (the
        dataset card shows them).

        Returns:
            `pandas.DataFrame` indexed by `example_id`.
        """
        records = self._concat(PRESENTATIONS)
        has_dense = self._num_dense_rows() > 0
        if forgetting_source is None:
            forgetting_source = "dense" if has_dense else "presentations"
        if forgetting_source not in FORGETTING_SOURCES:
            raise ValueError(f"forgetting_source={forgetting_source!r}; choose one of {FORGETTING_SOURCES}.")
        if forgetting_source == "dense" and not has_dense:
            raise ValueError("forgetting_source='dense' but the store has no dense table; train with "
                             "dense_eval_steps set, or use forgetting_source='presentations'.")
        if not len(records):
            raise ValueError(f"The store at {self.path!r} holds no presentations yet; nothing to summarise.")
        task = self._metadata.get("config", {}).get("task")
        if accumulated_margin_epochs is not None and task == "causal_lm":
            raise ValueError(
                "accumulated_margin_epochs needs per-prediction probabilities, but this store was recorded for a "
                "causal LM, whose signals are means over each example's label tokens. Use aum (the mean logit "
                "margin) or accumulated_el2n_epochs instead."
            )
        return summarize_records(records, burn_out=burn_out, variability_ddof=variability_ddof,
                                 accumulated_el2n_epochs=accumulated_el2n_epochs,
                                 accumulated_margin_epochs=accumulated_margin_epochs,
                                 forgetting=self.dense_forgetting() if forgetting_source == "dense" else None)

    @staticmethod
    def combine(stores: Sequence[SignalStore], forgetting_source: str | None = None
                ) -> tuple[pd.DataFrame, pd.Series]:
        """Combine runs (e.g. seeds) of the same dataset: mean per score, and the stability of each score.

        Paul et al. (2021) average EL2N over 10 runs; the stability of a score is the mean pairwise Spearman rank
        correlation of its values between runs (1 = every run ranks the examples the same way).

        Args:
            stores (sequence of `SignalStore`): at least one store; all for the same dataset.
            forgetting_source (`str` or `None`): passed to each `summary()`.

        Returns:
            `(summary, stability)`: the mean of every score column over runs (indexed by `example_id`, restricted
            to examples present in every run), and a `pandas.Series` of mean pairwise Spearman correlations per score
            (NaN with a single run or a constant score).

        Raises:
            ValueError: if no store is given or the stores were written for different datasets.
        """
        stores = list(stores)
        if not stores:
            raise ValueError("SignalStore.combine needs at least one store.")
        reference = stores[0].metadata
        for index, store in enumerate(stores[1:], start=1):
            for key in ("dataset_fingerprint", "num_examples"):
                old, new = reference.get(key), store.metadata.get(key)
                if old is not None and new is not None and old != new:
                    raise ValueError(f"Cannot combine stores of different datasets: store 0 has {key}={old!r}, "
                                     f"store {index} has {new!r}.")
        summaries = [store.summary(forgetting_source=forgetting_source) for store in stores]
        common = summaries[0].index
        for summary in summaries[1:]:
            common = common.intersection(summary.index)
        if any(len(summary.index) != len(common) for summary in summaries):
            logger.warning(f"Combining {len(stores)} runs over the {len(common)} examples present in every run.")
        columns = list(dict.fromkeys(c for summary in summaries for c in summary.columns))
        stacked = np.stack([s.reindex(index=common, columns=columns).to_numpy(dtype=np.float64)
                            for s in summaries])
        with np.errstate(invalid="ignore"):
            mean = nanmean_keep_inf(stacked)
        combined = pd.DataFrame(mean, index=common, columns=columns)
        combined.index.name = "example_id"
        stability = {}
        for j, column in enumerate(columns):
            correlations = [spearman(stacked[a, :, j], stacked[b, :, j])
                            for a, b in combinations(range(len(stores)), 2)]
            correlations = [c for c in correlations if not math.isnan(c)]
            stability[column] = float(np.mean(correlations)) if correlations else float("nan")
        return combined, pd.Series(stability, name="spearman")
