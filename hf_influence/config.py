"""`ScoringConfig`: the training arguments of a [`ScoringTrainer`], with the options that control signal recording."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .data import EXAMPLE_ID_COLUMN
from .tasks import AUTO_TASK, TASKS

#: The values `ScoringConfig.task` accepts: detection from the model class, or one of `TASKS`.
TASK_CHOICES: tuple[str, ...] = (AUTO_TASK, *TASKS)


@dataclass
class ScoringConfig(TrainingArguments):
    r"""
    Configuration of a [`ScoringTrainer`]: every [`~transformers.TrainingArguments`] field plus the options below.

    No default of [`~transformers.TrainingArguments`] is changed. To record signals with another trainer's config
    (e.g. trl's `SFTConfig`), combine both: `@dataclass class SFTScoringConfig(ScoringConfig, SFTConfig): pass`; a
    [`ScoringMixin`] trainer given a plain config uses the defaults below.

    Args:
        example_id_column (`str`, *optional*, defaults to `"example_id"`):
            Column of the training set holding the stable example id (see `hf_influence.add_example_ids`). A training
            set without it gets ids `0..n-1` automatically.
        task (`str`, *optional*, defaults to `"auto"`):
            `"sequence_classification"`, `"causal_lm"`, or `"auto"` to detect it from the model class
            (`*ForSequenceClassification` vs a causal language model).
        record_signals (`bool`, *optional*, defaults to `True`):
            Record per-example signals from the training forward pass.
        record_grad_norm (`bool`, *optional*, defaults to `False`):
            Also record the L2 norm of each example's own loss gradient (ghost norms from `hf_influence.grads`, one
            extra set of hooks on the training backward). Before the first step the hooks are compared with autograd
            on one example, and training stops with the layer named if a weight is used outside its layer's forward.
        dense_eval_steps (`int` or `None`, *optional*, defaults to `None`):
            When set, every `dense_eval_steps` optimizer steps the whole training set is evaluated (eval mode,
            `no_grad`) and its signals go to a separate dense table; forgetting events are then counted on that
            table (Toneva et al. 2019, the dense cadence of Anand et al. 2023).
        dense_eval_max_epoch (`int` or `None`, *optional*, defaults to `None`):
            Run the dense evaluations only during the first `dense_eval_max_epoch` epochs (`None` = always).
        signals_dir (`str` or `None`, *optional*, defaults to `None`):
            Folder of the [`SignalStore`]; `None` means `<output_dir>/signals`.
        overwrite_signals (`bool`, *optional*, defaults to `False`):
            Replace a store left in `signals_dir` by an earlier run when training starts from scratch. Without it such
            a store is refused (nothing is deleted silently).
    """

    example_id_column: str = field(
        default=EXAMPLE_ID_COLUMN,
        metadata={"help": "Column holding the stable example id; added automatically (0..n-1) when missing."},
    )
    task: str = field(
        default="auto",
        metadata={"help": "Task whose signals are recorded.", "choices": list(TASK_CHOICES)},
    )
    record_signals: bool = field(
        default=True, metadata={"help": "Record per-example signals from the training forward pass."}
    )
    record_grad_norm: bool = field(
        default=False,
        metadata={"help": "Also record the L2 norm of each example's own loss gradient (ghost norms)."},
    )
    dense_eval_steps: int | None = field(
        default=None,
        metadata={
            "help": "Every N optimizer steps, evaluate the whole training set (eval mode, no_grad) into a dense "
            "table used for forgetting events. None = off."
        },
    )
    dense_eval_max_epoch: int | None = field(
        default=None,
        metadata={"help": "Run dense evaluations only during the first N epochs. None = during all epochs."},
    )
    signals_dir: str | None = field(
        default=None, metadata={"help": "Folder of the signal store; defaults to <output_dir>/signals."}
    )
    overwrite_signals: bool = field(
        default=False,
        metadata={"help": "Replace a signal store left by an earlier run when training from scratch."},
    )

    def __post_init__(self):
        super().__post_init__()
        validate_scoring_options(self)


_SCORING_FIELDS: tuple[str, ...] = (
    "example_id_column",
    "task",
    "record_signals",
    "record_grad_norm",
    "dense_eval_steps",
    "dense_eval_max_epoch",
    "signals_dir",
    "overwrite_signals",
)


def validate_scoring_options(options) -> None:
    """Check the scoring fields of `options` (a [`ScoringConfig`] or an object with the same attributes).

    Raises:
        ValueError: naming the bad value and the valid ones.
    """
    if options.task not in TASK_CHOICES:
        raise ValueError(f"task={options.task!r} is not supported; choose one of "
                         f"{', '.join(map(repr, TASK_CHOICES))}.")
    if not isinstance(options.example_id_column, str) or not options.example_id_column:
        raise ValueError(f"example_id_column must be a non-empty column name, got {options.example_id_column!r}.")
    for name in ("dense_eval_steps", "dense_eval_max_epoch"):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
    if options.dense_eval_max_epoch is not None and options.dense_eval_steps is None:
        raise ValueError("dense_eval_max_epoch is set but dense_eval_steps is None: set dense_eval_steps as well.")
    if options.record_grad_norm and not options.record_signals:
        raise ValueError("record_grad_norm=True needs record_signals=True (grad norms are stored with the signals).")


@dataclass(frozen=True)
class ScoringOptions:
    """The scoring fields read from any training arguments (defaults of [`ScoringConfig`] for missing ones)."""

    example_id_column: str = EXAMPLE_ID_COLUMN
    task: str = "auto"
    record_signals: bool = True
    record_grad_norm: bool = False
    dense_eval_steps: int | None = None
    dense_eval_max_epoch: int | None = None
    signals_dir: str | None = None
    overwrite_signals: bool = False

    @classmethod
    def from_args(cls, args) -> ScoringOptions:
        defaults = cls()
        options = cls(**{name: getattr(args, name, getattr(defaults, name)) for name in _SCORING_FIELDS})
        validate_scoring_options(options)
        return options

    def resolve_signals_dir(self, output_dir: str | None) -> str:
        if self.signals_dir:
            return self.signals_dir
        return os.path.join(output_dir or "trainer_output", "signals")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
