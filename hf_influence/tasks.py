"""The tasks hf_influence scores, and how a model's task is found: one list, one resolver, one unwrapper.

Every per-example computation of the library (training signals, scorers, per-example gradients) knows two tasks:
`"sequence_classification"` (logits `[B, C]`, one class id per example) and `"causal_lm"` (logits `[B, T, V]`,
shifted next-token labels with -100 on ignored positions). `"auto"` picks one from the model class.
"""

from __future__ import annotations

import functools
from typing import Any

#: The tasks every scorer, the trainer and the per-example gradient code support.
TASKS: tuple[str, ...] = ("sequence_classification", "causal_lm")
#: The task value that asks for detection from the model (`resolve_task`).
AUTO_TASK = "auto"


def unwrap_model(model: Any) -> Any:
    """The underlying transformers model of a PEFT and/or DDP wrapper (the model itself otherwise).

    Follows `get_base_model()` (PEFT) and `.module` (DDP / accelerate wrappers) until neither applies. A PEFT wrapper
    whose `get_base_model()` fails (e.g. a mixed adapter model) is returned as it is.

    Example:
        ```python
        >>> from peft import LoraConfig, get_peft_model
        >>> peft_model = get_peft_model(model, LoraConfig(target_modules=["q_proj"]))
        >>> unwrap_model(peft_model) is model
        True
        ```
    """
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model"):
            try:
                model = model.get_base_model()
            except Exception:  # noqa: BLE001 - PeftMixedModel and friends: keep the wrapper
                break
        elif _is_module(getattr(model, "module", None)):
            model = model.module
    return model


def _is_module(value: Any) -> bool:
    from torch import nn

    return isinstance(value, nn.Module)


@functools.lru_cache(maxsize=128)
def task_of_model_class(model_class: type) -> str | None:
    """The task of a transformers model class from its lineage (a user subclass inherits its base's task), or None.

    `"sequence_classification"` for a `*ForSequenceClassification` class; `"causal_lm"` for a class registered as a
    causal LM with the Auto classes, or named like one (`*ForCausalLM`, `*LMHeadModel`, `...CausalLM...`).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal_names = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    lineage = [cls.__name__ for cls in model_class.__mro__]
    if any(name.endswith("ForSequenceClassification") for name in lineage):
        return "sequence_classification"
    if any(name in causal_names or "CausalLM" in name or "LMHead" in name for name in lineage):
        return "causal_lm"
    return None


def resolve_task(model: Any, task: str = AUTO_TASK, *, logits: Any = None) -> str:
    """`"sequence_classification"` or `"causal_lm"` for `model` (a transformers model, possibly PEFT/DDP-wrapped).

    Args:
        model: the model (only its class is read).
        task (`str`, defaults to `"auto"`): a task of `TASKS` (returned as is after validation), or `"auto"` to
            detect it from the model class (`task_of_model_class`).
        logits (`torch.Tensor`, *optional*): the model's output, when at hand: a model whose class says nothing (a
            custom `nn.Module`) but whose logits are `[B, C]` is a classifier.

    Returns:
        `str`: one of `TASKS`.

    Raises:
        ValueError: for a task outside `"auto"` and `TASKS`, or when `"auto"` cannot decide.
    """
    if task != AUTO_TASK:
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; valid tasks are {', '.join(map(repr, (AUTO_TASK, *TASKS)))}.")
        return task
    base_class = type(unwrap_model(model))
    detected = task_of_model_class(base_class)
    if detected is not None:
        return detected
    if logits is not None and logits.dim() == 2:
        return "sequence_classification"
    shape = f" from logits of shape {tuple(logits.shape)}" if logits is not None else ""
    raise ValueError(
        f"Cannot detect the task of a {base_class.__name__}{shape}: hf_influence scores '*ForSequenceClassification' "
        "models and causal language models. Pass task='sequence_classification' or task='causal_lm' (for "
        "ScoringTrainer, in ScoringConfig)."
    )


__all__ = ["AUTO_TASK", "TASKS", "resolve_task", "task_of_model_class", "unwrap_model"]
