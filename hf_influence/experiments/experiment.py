"""`PruningExperiment`: prune a scored training split every way asked, re-fine-tune, and compare with random.

The loop every data-pruning paper runs (Paul et al. 2021, Anand et al. 2023, Zheng et al. 2023): for every selection
(score column x strategy), kept fraction and seed, fine-tune a fresh model on the kept rows and evaluate it; do the
same for random selection at the same sizes (sharing each seed, so the differences can be paired) and for the full
data. Each finished run is one row of `results.csv`, written at once, so a stopped grid resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging as _pylogging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback
from transformers.utils import logging

from .results import BEST_MODEL_DIRNAME, BEST_RUN_FILENAME, RESULTS_FILENAME, ExperimentResult
from .selections import FULL_DATA, Selection, random_selection

logger = logging.get_logger(__name__)

CONFIG_FILENAME = "experiment.json"
LOG_FILENAME = "train.log"

#: TrainingArguments fields that cannot change a run's result (left out of the experiment's fingerprint).
_IGNORED_TRAINING_FIELDS = frozenset({
    "output_dir", "logging_dir", "run_name", "report_to", "disable_tqdm", "logging_steps", "logging_strategy",
    "logging_first_step", "logging_nan_inf_filter", "save_strategy", "save_steps", "save_total_limit",
    "save_only_model", "push_to_hub", "hub_token", "hub_model_id", "hub_strategy", "hub_private_repo",
    "overwrite_output_dir", "eval_strategy", "eval_steps", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "log_level", "log_level_replica", "log_on_each_node", "seed", "per_device_eval_batch_size",
    "eval_do_concat_batches",
    "include_num_input_tokens_seen", "local_rank", "ddp_backend", "ddp_timeout", "skip_memory_metrics", "trackio",
    "project", "print_to_console",
})


def _content_hash(dataset: Any, columns: Sequence[str]) -> str:
    """A hash of the values of `columns` (those present) and of the number of rows (of the values, not of how Arrow
    happens to lay them out: a sliced or re-written table with the same values hashes the same)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(str(len(dataset)).encode())
    present = [name for name in columns if name in dataset.column_names]
    if not len(dataset) or not present:
        return hasher.hexdigest()
    table = dataset.select_columns(present).with_format("arrow")[:]  # only the hashed columns are materialised
    for name in present:
        hasher.update(name.encode())
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            hasher.update(np.asarray(pc.list_value_length(column).fill_null(-1)).astype(np.int64).tobytes())
            column = column.flatten()
        hasher.update(np.asarray(column.to_numpy(zero_copy_only=False)).tobytes())
    return hasher.hexdigest()


def _training_settings(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    values = args.to_dict() if hasattr(args, "to_dict") else dict(args)
    return {k: v for k, v in sorted(values.items()) if k not in _IGNORED_TRAINING_FIELDS and not k.startswith("_")}


def _plain_training_arguments(args: Any, **overrides: Any) -> Any:
    """A plain `TrainingArguments` with the hyperparameters of `args` (e.g. a `ScoringConfig`) and `overrides`."""
    from transformers import TrainingArguments

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments)
              if f.init and hasattr(args, f.name)}
    return TrainingArguments(**{**values, **overrides})


def _keep_label(keep: float | int) -> str:
    return f"n{keep}" if isinstance(keep, (int, np.integer)) and not isinstance(keep, bool) else f"{keep:g}"


def _check_keep(keep: Any) -> float | int:
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise TypeError(f"Each kept fraction must be a fraction in (0, 1] or an int count, got {keep!r}.")
    if isinstance(keep, (int, np.integer)):
        if keep < 1:
            raise ValueError(f"A kept count must be at least 1, got {keep}.")
        return int(keep)
    if math.isnan(keep) or not 0.0 < keep <= 1.0:
        raise ValueError(f"Kept fractions must lie in (0, 1] (0.5 = half pruned), got {keep}.")
    return float(keep)


def _check_finite(model: Any, metrics: Mapping[str, float], run_id: str) -> None:
    """Stop the grid when a run diverged (NaN/inf weights or losses) instead of recording a meaningless row; the
    finished rows are already on disk."""
    bad = [k for k, v in metrics.items() if k.endswith("_loss") and not math.isfinite(v)]
    if callable(getattr(model, "named_parameters", None)):
        import torch

        with torch.no_grad():
            bad += [name for name, p in model.named_parameters()
                    if p.is_floating_point() and not torch.isfinite(p).all()][:3]
    if bad:
        raise FloatingPointError(
            f"Run {run_id} diverged: {', '.join(bad)} hold NaN or inf after training. Its row is not written; the "
            f"finished runs stay in {RESULTS_FILENAME}. Lower the learning rate, clip gradients (max_grad_norm) or "
            "train in bf16/fp32 instead of fp16, then run the same experiment again in a new output_dir (changed "
            "training arguments are refused in this one), or fix the data if a few examples cause it."
        )


def _remove_if_empty(*folders: Path) -> None:
    """Remove each folder that exists and is empty (the Trainer creates its output_dir even when it saves nothing)."""
    for folder in folders:
        try:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        except OSError:  # another process wrote into it meanwhile: keep it
            pass


@contextmanager
def _logs_to_file(path: Path):
    """Send the transformers/datasets/hf_influence log records to `path` instead of the console while training."""
    handler = _pylogging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_pylogging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [_pylogging.getLogger(name) for name in ("transformers", "datasets", "accelerate", "hf_influence")]
    saved = [(lg, list(lg.handlers), lg.propagate) for lg in loggers]
    for lg in loggers:
        for existing in list(lg.handlers):
            lg.removeHandler(existing)
        lg.addHandler(handler)
        lg.propagate = False
    try:
        yield
    finally:
        for lg, handlers, propagate in saved:
            lg.removeHandler(handler)
            for existing in handlers:
                lg.addHandler(existing)
            lg.propagate = propagate
        handler.close()


class FileLogCallback(TrainerCallback):
    """Writes the Trainer's log dicts (loss, learning rate, ...) of every run to one JSON-lines log file."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path, self.run_id = path, run_id

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any):
        if logs and state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"run": self.run_id, "step": state.global_step, **logs}, default=str) + "\n")


class PruningExperiment:
    """Score -> select -> re-fine-tune -> compare with random, over fractions and seeds, resumable.

    Args:
        train_dataset (`datasets.Dataset`, *optional*): the scored training split (score columns attached by the
            scorers, with their polarity). Give it, or `scoring_plan`.
        selections (sequence of `Selection`, `(score, strategy)` or `"score:strategy[:balanced]"`): the pruning
            methods to evaluate.
        fractions (sequence of `float` or `int`): the kept fractions (in (0, 1]) or counts of training rows.
        seeds (sequence of `int`): fine-tuning seeds, shared by every selection and random at each fraction (paired).
        model_init (`Callable[[], PreTrainedModel]`, *optional*): a fresh model (called after `set_seed(seed)`);
            needed unless `train_fn` is given.
        args (`TrainingArguments`, *optional*): the fine-tuning arguments (`output_dir` and `seed` are set per run).
        eval_datasets (`Dataset` or `dict[str, Dataset]`, *optional*): evaluated after every run; metric `m` of split
            `name` is recorded as `<name>_<m>` (a single Dataset is named `"eval"`).
        compute_metrics (`Callable`, *optional*): the Trainer's `compute_metrics` (e.g. accuracy).
        data_collator, processing_class: passed to the `Trainer`.
        optimizer_init (`Callable[[model, args], Optimizer]`, *optional*): a custom optimizer per run (e.g. a head
            learning rate); the Trainer's default otherwise.
        callbacks (`list`, *optional*): extra Trainer callbacks.
        trainer_class (`type`, defaults to `transformers.Trainer`): the Trainer to fine-tune with.
        train_fn (`Callable[[Dataset, int, Path], model]`, *optional*): replaces the Trainer fine-tuning: trains on the
            kept rows with a seed in a run folder and returns the model.
        evaluate_fn (`Callable[[model, int], dict]`, *optional*): replaces the Trainer evaluation; returns metric
            values, where an array value holds one number per evaluation example (its mean is the metric, and the
            array is kept for the paired bootstrap).
        scoring_plan (`Callable[[Dataset, Path], Dataset]`, *optional*): scores `unscored_dataset` into the training
            split (e.g. `hf_influence.experiments.ScoringPlan`), run once by `run()` under `output_dir/scoring`.
        unscored_dataset (`Dataset`, *optional*): the training split `scoring_plan` scores.
        label_column (`str`, defaults to `"label"`): the class column (class balance, label counts).
        random_baseline (`bool`, defaults to True): random selection at every fraction.
        class_balanced_random (`bool` or `"auto"`, defaults to `"auto"`): class-balanced random too (`"auto"`: when
            some selection is class-balanced).
        full_data (`bool`, defaults to True): fine-tune on the whole split (once per seed).
        metric (`str`, *optional*): the metric the summary pairs against random (default: `test_accuracy`, else
            `eval_accuracy`, else the first metric).
        greater_is_better (`bool`, defaults to True): the direction of `metric`.
        best_metric (`str`, *optional*): the metric that picks the best pruned model to save with its card
            (default: `eval_<...>` of `metric`'s name when present, else `metric`).
        save_best_model (`bool`, defaults to True): keep the best pruned model in `output_dir/best_pruned_model`.
        fingerprint_extra (`Mapping`, *optional*): anything else that defines the runs (model name, data options),
            recorded in `experiment.json` and compared on resume.

    The grid may grow between calls (more seeds, fractions or selections run only the new cells); the settings that
    decide a run's result (training arguments, data, model, metrics) may not: a rerun with other settings is refused.

    Example:
        ```python
        >>> exp = PruningExperiment(scored, selections=["el2n:easiest", "aum:hardest"], fractions=[0.5, 0.7],
        ...                         seeds=[0, 1, 2, 3], model_init=lambda: AutoModelForSequenceClassification
        ...                         .from_pretrained(path, num_labels=3), args=TrainingArguments("out", ...),
        ...                         eval_datasets={"eval": val, "test": test}, compute_metrics=accuracy,
        ...                         data_collator=DataCollatorWithPadding(tok))
        >>> result = exp.run("out/pruning")  # resumable: run it again after a stop
        >>> print(result.to_markdown())
        ```
    """

    def __init__(
        self,
        train_dataset: Any = None,
        *,
        selections: Sequence[Any] = (),
        fractions: Sequence[float | int] = (0.5,),
        seeds: Sequence[int] = (0,),
        model_init: Callable[[], Any] | None = None,
        args: Any = None,
        eval_datasets: Any = None,
        compute_metrics: Callable[[Any], Mapping[str, float]] | None = None,
        data_collator: Any = None,
        processing_class: Any = None,
        optimizer_init: Callable[[Any, Any], Any] | None = None,
        callbacks: Sequence[Any] = (),
        trainer_class: type | None = None,
        train_fn: Callable[[Any, int, Path], Any] | None = None,
        evaluate_fn: Callable[[Any, int], Mapping[str, Any]] | None = None,
        scoring_plan: Callable[[Any, Path], Any] | None = None,
        unscored_dataset: Any = None,
        label_column: str | None = "label",
        random_baseline: bool = True,
        class_balanced_random: bool | str = "auto",
        full_data: bool = True,
        metric: str | None = None,
        greater_is_better: bool = True,
        best_metric: str | None = None,
        save_best_model: bool = True,
        fingerprint_extra: Mapping[str, Any] | None = None,
    ) -> None:
        if (train_dataset is None) == (scoring_plan is None):
            raise ValueError("Pass the scored training split (train_dataset=...) or a scoring plan with the split to "
                             "score (scoring_plan=..., unscored_dataset=...), not both and not neither.")
        if scoring_plan is not None and unscored_dataset is None:
            raise ValueError("scoring_plan needs unscored_dataset=<the training split to score>.")
        if train_fn is None and model_init is None:
            raise ValueError("Pass model_init=<a function returning a fresh model> (or train_fn=... to fine-tune your "
                             "own way).")
        if train_fn is None and args is None:
            raise ValueError("Pass args=TrainingArguments(...) for the fine-tuning runs.")
        if evaluate_fn is None and not eval_datasets:
            raise ValueError("Pass eval_datasets=... (with compute_metrics=...) or evaluate_fn=... : the runs must be "
                             "evaluated to be compared.")
        if class_balanced_random not in (True, False, "auto"):
            raise ValueError(f"class_balanced_random must be True, False or 'auto', got {class_balanced_random!r}.")
        self.selections = [Selection.parse(s) for s in selections]
        labels = [s.label for s in self.selections]
        duplicated = sorted({x for x in labels if labels.count(x) > 1})
        if duplicated:
            raise ValueError(f"Several selections are named {duplicated}; give each a distinct name=.")
        self.fractions = [_check_keep(f) for f in fractions]
        if not self.fractions:
            raise ValueError("Pass at least one kept fraction, e.g. fractions=[0.5, 0.7].")
        self.seeds = [int(s) for s in seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"Pass at least one seed, each once (got {list(seeds)}).")
        if not self.selections and not random_baseline and not full_data:
            raise ValueError("Nothing to run: no selections, no random baseline and no full-data reference.")
        if isinstance(eval_datasets, Mapping):
            self.eval_datasets = dict(eval_datasets)
        else:
            self.eval_datasets = {} if eval_datasets is None else {"eval": eval_datasets}
        for name, split in self.eval_datasets.items():
            if split is None or len(split) == 0:
                raise ValueError(f"The evaluation split {name!r} is empty.")
        self.train_dataset = train_dataset
        self.unscored_dataset = unscored_dataset
        self.scoring_plan = scoring_plan
        self.model_init = model_init
        self.args = args
        self.compute_metrics = compute_metrics
        self.data_collator = data_collator
        self.processing_class = processing_class
        self.optimizer_init = optimizer_init
        self.callbacks = list(callbacks)
        self.trainer_class = trainer_class
        self.train_fn = train_fn
        self.evaluate_fn = evaluate_fn
        self.label_column = label_column
        self.random_baseline = random_baseline
        balanced = any(s.class_balanced for s in self.selections)
        self.class_balanced_random = balanced if class_balanced_random == "auto" else bool(class_balanced_random)
        self.full_data = full_data
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.best_metric = best_metric
        self.save_best_model = save_best_model
        self.fingerprint_extra = dict(fingerprint_extra or {})

    # ---- the grid -----------------------------------------------------------------------------------------------

    def baselines(self) -> list[Selection]:
        """The random baselines this experiment runs."""
        out = []
        if self.random_baseline:
            out.append(random_selection(False))
        if self.class_balanced_random:
            out.append(random_selection(True))
        return out

    def plan(self) -> list[tuple[Selection | None, float | int, int]]:
        """Every run, as `(selection, keep, seed)` (selection None = full data), in the order they run: seed by seed,
        so that after each seed every cell has one more paired run."""
        runs: list[tuple[Selection | None, float | int, int]] = []
        for seed in self.seeds:
            if self.full_data:
                runs.append((None, 1.0, seed))
            for keep in self.fractions:
                for selection in [*self.baselines(), *self.selections]:
                    runs.append((selection, keep, seed))
        return runs

    @staticmethod
    def run_id(selection: Selection | None, keep: float | int, seed: int) -> str:
        """The key of one run in `results.csv`."""
        name = FULL_DATA if selection is None else selection.slug
        return f"{name}__keep{_keep_label(1.0 if selection is None else keep)}__seed{seed}"

    # ---- fingerprint ----------------------------------------------------------------------------------------------

    def _score_columns(self) -> list[str]:
        from ..selection import get_strategy

        columns = []
        for selection in self.selections:
            options = get_strategy(selection.strategy).column_options
            columns += [c for c in (selection.score, *(selection.options.get(o) for o in options)) if c]
        return columns

    def settings(self, train: Any) -> dict[str, Any]:
        """What decides every run's result; compared on resume (the grid itself may grow). The score columns are
        checked one by one (`_check_score_columns`), so selections on new columns can join a finished grid."""
        id_columns = ["example_id", self.label_column or "label"]
        model = {}
        if self.model_init is not None:
            from ..fingerprints import model_fingerprint

            model = {"model_init": getattr(self.model_init, "__qualname__", type(self.model_init).__name__),
                     "initial_weights": model_fingerprint(self._fresh_model(0))}  # any fixed seed: extra seeds keep it
        return {
            "train": {"rows": len(train), "content": _content_hash(train, [*id_columns, "input_ids"])},
            "eval": {name: {"rows": len(split), "content": _content_hash(split, id_columns)}
                     for name, split in self.eval_datasets.items()},
            "training_arguments": _training_settings(self.args),
            "model": model,
            "metrics": getattr(self.compute_metrics, "__qualname__", None),
            "evaluate_fn": getattr(self.evaluate_fn, "__qualname__", None),
            "train_fn": getattr(self.train_fn, "__qualname__", None),
            "label_column": self.label_column,
            "extra": json.loads(json.dumps(self.fingerprint_extra, default=str)),
        }

    def _check_score_columns(self, saved: dict[str, str]) -> dict[str, str]:
        """Content hashes of the score columns the selections read; refuses a column whose values changed since
        earlier rows were selected with it."""
        hashes = {c.lstrip("-"): _content_hash(self.train_dataset, [c.lstrip("-")]) for c in self._score_columns()}
        changed = sorted(c for c, h in hashes.items() if c in saved and saved[c] != h)
        if changed:
            raise ValueError(f"The score column(s) {changed} hold other values than when earlier rows of this "
                             "experiment were selected with them. Use another output_dir, or delete the folder.")
        return hashes

    def _check_or_write_settings(self, output_dir: Path, settings: dict[str, Any], is_main: bool) -> None:
        from ..fingerprints import canonical_settings
        from ..store import atomic_write_bytes

        path = output_dir / CONFIG_FILENAME
        fingerprint = hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(),
                                      digest_size=16).hexdigest()
        saved = json.loads(path.read_text()) if path.is_file() else None
        if saved is not None:
            old, new = canonical_settings(saved.get("settings", {})), canonical_settings(settings)
            if old != new:  # compared in canonical form: 4 from a YAML file and 4.0 from the CLI are the same
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ValueError(
                    f"{output_dir} holds an experiment with other settings (changed: {changed}). Its rows cannot be "
                    "mixed with these runs: use another output_dir, or delete the folder to start over."
                )
            fingerprint = saved.get("fingerprint", fingerprint)  # the folder keeps the fingerprint it was made with
        saved_scores = saved.get("score_columns", {}) if saved is not None else {}
        scores = {**saved_scores, **self._check_score_columns(saved_scores)}
        record = {"fingerprint": fingerprint, "settings": settings, "score_columns": scores,
                  "grid": {"selections": [s.to_dict() for s in self.selections],
                           "baselines": [s.to_dict() for s in self.baselines()], "fractions": self.fractions,
                           "seeds": self.seeds, "full_data": self.full_data},
                  "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if is_main:
            atomic_write_bytes(str(path), (json.dumps(record, indent=2, default=str) + "\n").encode())

    # ---- one run --------------------------------------------------------------------------------------------------

    def _fresh_model(self, seed: int) -> Any:
        from transformers import set_seed

        set_seed(seed)
        return self.model_init()

    def _select(self, train: Any, selection: Selection | None, keep: float | int, seed: int) -> tuple[Any, Any]:
        from ..selection import select_by_score

        if selection is None:
            return train, None
        return select_by_score(train, selection.score, keep, selection.strategy,
                               class_balanced=selection.class_balanced, label_column=self.label_column, seed=seed,
                               return_report=True, **selection.options)

    def _train_and_evaluate(self, kept: Any, seed: int, run_dir: Path, run_id: str, log_path: Path):
        """Returns `(metrics, per_example, model_saver, seconds)`."""
        per_example: dict[str, np.ndarray] = {}
        start = time.perf_counter()
        if self.train_fn is not None:
            model = self.train_fn(kept, seed, run_dir)
            trainer = None
        else:
            from transformers import PrinterCallback, ProgressCallback, Trainer

            run_args = _plain_training_arguments(
                self.args, output_dir=str(run_dir), seed=seed, save_strategy="no", eval_strategy="no",
                load_best_model_at_end=False, push_to_hub=False, report_to="none", disable_tqdm=True,
            )
            model = self._fresh_model(seed)
            optimizer = self.optimizer_init(model, run_args) if self.optimizer_init is not None else None
            trainer = (self.trainer_class or Trainer)(
                model=model, args=run_args, train_dataset=kept, data_collator=self.data_collator,
                processing_class=self.processing_class, compute_metrics=self.compute_metrics,
                callbacks=[*self.callbacks, FileLogCallback(log_path, run_id)], optimizers=(optimizer, None),
            )
            for console in (PrinterCallback, ProgressCallback):
                trainer.remove_callback(console)
            trainer.train()
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        if self.evaluate_fn is not None:
            for key, value in dict(self.evaluate_fn(model if trainer is None else trainer.model, seed)).items():
                array = np.asarray(value, dtype=np.float64)
                if array.ndim == 0:
                    metrics[key] = float(array)
                else:
                    per_example[key] = array.reshape(-1)
                    metrics[key] = float(np.nanmean(array))
        else:
            for name, split in self.eval_datasets.items():
                result = trainer.evaluate(split, metric_key_prefix=name)
                metrics.update({k: float(v) for k, v in result.items()
                                if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))})
        eval_seconds = time.perf_counter() - start
        _check_finite(model if trainer is None else trainer.model, metrics, run_id)

        def save(path: Path) -> None:
            if trainer is not None:
                trainer.save_model(str(path))
            elif hasattr(model, "save_pretrained"):
                model.save_pretrained(str(path))

        return metrics, per_example, save, {"train_seconds": train_seconds, "eval_seconds": eval_seconds}

    # ---- the whole grid ---------------------------------------------------------------------------------------------

    def run(self, output_dir: str | os.PathLike, *, progress: bool = True) -> ExperimentResult:
        """Run every missing run of the grid (finished rows in `output_dir/results.csv` are kept and skipped).

        Returns:
            `ExperimentResult`: every row (old and new); `.summary()` gives intervals and paired tests.
        """
        from accelerate import PartialState
        from tqdm.auto import tqdm

        state = PartialState()
        is_main = state.is_main_process
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        train = self.train_dataset
        if train is None:
            train = self.scoring_plan(self.unscored_dataset, output_dir / "scoring")
            self.train_dataset = train
        if len(train) == 0:
            raise ValueError("The training split is empty: nothing to prune.")
        if self.label_column and self.label_column not in train.column_names:
            if self.class_balanced_random or any(s.class_balanced for s in self.selections):
                raise ValueError(f"Class-balanced selection needs the label column {self.label_column!r}, which is "
                                 f"not in the training split (columns: {train.column_names}). Pass label_column=.")
        missing = sorted({c for c in self._score_columns() if c.lstrip("-") not in train.column_names})
        if missing:
            raise ValueError(f"Score column(s) {missing} are not in the training split (columns: "
                             f"{train.column_names}). Attach them with the scorers first.")
        self._check_or_write_settings(output_dir, self.settings(train), is_main)
        state.wait_for_everyone()

        result = ExperimentResult.load(output_dir) if (output_dir / RESULTS_FILENAME).is_file() else \
            ExperimentResult(output_dir=output_dir)
        result.configure(metric=self.metric, greater_is_better=self.greater_is_better, selections=self.selections)
        done = set(result.rows["run_id"]) if len(result.rows) else set()
        plan = self.plan()
        todo = [run for run in plan if self.run_id(*run) not in done]
        log_path = output_dir / LOG_FILENAME
        bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="pruning experiment", unit="run",
                   disable=not (progress and is_main))
        best = result.best_run()
        for selection, keep, seed in todo:
            run_id = self.run_id(selection, keep, seed)
            bar.set_postfix_str(run_id, refresh=True)
            kept, report = self._select(train, selection, keep, seed)
            with _logs_to_file(log_path):
                metrics, per_example, save, seconds = self._train_and_evaluate(
                    kept, seed, output_dir / "runs" / run_id, run_id, log_path)
            row = self._row(run_id, selection, keep, seed, train, kept, report, metrics, seconds)
            if is_main:
                result.append(row, per_example)
            if self.save_best_model and selection is not None and not selection.is_random:
                best = self._maybe_save_best(best, row, report, save, output_dir, is_main)
            state.wait_for_everyone()  # every rank is done with the run folder before the main one tidies it
            if is_main:
                _remove_if_empty(output_dir / "runs" / run_id, output_dir / "runs")
            bar.update(1)
        bar.close()
        state.wait_for_everyone()
        if not is_main:  # every rank returns the same rows
            result = ExperimentResult.load(output_dir)
            result.configure(metric=self.metric, greater_is_better=self.greater_is_better,
                             selections=self.selections)
        return result

    def _row(self, run_id: str, selection: Selection | None, keep: float | int, seed: int, train: Any, kept: Any,
             report: Any, metrics: Mapping[str, float], seconds: Mapping[str, float]) -> dict[str, Any]:
        label_counts = None
        if self.label_column and self.label_column in kept.column_names:
            values, counts = np.unique(np.asarray(kept[self.label_column]), return_counts=True)
            label_counts = json.dumps({str(v): int(c) for v, c in zip(values, counts)})
        noisy = float(np.mean(kept["is_noisy"])) if "is_noisy" in kept.column_names else math.nan
        ids = np.asarray(kept["example_id"]) if "example_id" in kept.column_names else np.arange(len(kept))
        return {
            "run_id": run_id,
            "selection": FULL_DATA if selection is None else selection.label,
            "score": None if selection is None else selection.score,
            "strategy": "none" if selection is None else selection.strategy,
            "class_balanced": False if selection is None else selection.class_balanced,
            "keep": 1.0 if selection is None else keep,
            "keep_fraction": len(kept) / len(train),
            "seed": seed,
            "num_train": len(kept),
            **metrics,
            **seconds,
            "label_counts": label_counts,
            "noisy_kept": noisy,
            "kept_ids_hash": hashlib.blake2b(np.sort(ids).astype(np.int64).tobytes(), digest_size=8).hexdigest(),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    # ---- best pruned model ------------------------------------------------------------------------------------------

    def _best_key(self, row: Mapping[str, Any]) -> float | None:
        name = self.best_metric or self.metric
        if name is None or name not in row:
            candidates = [k for k in row if k.startswith("eval_") and k.endswith("accuracy")]
            name = candidates[0] if candidates else None
        if name is None or row.get(name) is None or not np.isfinite(row[name]):
            return None
        return float(row[name]) if self.greater_is_better else -float(row[name])

    def _maybe_save_best(self, best: dict[str, Any] | None, row: dict[str, Any], report: Any,
                         save: Callable[[Path], None], output_dir: Path, is_main: bool) -> dict[str, Any] | None:
        key = self._best_key(row)
        if key is None or (best is not None and key <= best["key"]):
            return best
        folder = output_dir / BEST_MODEL_DIRNAME
        save(folder)  # every rank calls it: Trainer.save_model writes on the main process only
        best = {"key": key, "row": row, "selection": report.to_dict() if report is not None else None}
        if is_main:
            from ..store import atomic_write_bytes

            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(str(folder / BEST_RUN_FILENAME), json.dumps(best, indent=2, default=str).encode())
        return best
