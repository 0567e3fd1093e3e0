"""Shared plumbing for per-example gradient computations: parameter selection, batch preparation, the per-example
loss the Trainer optimises, and a context that puts a model in eval mode with frozen parameters.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..batching import LABEL_KEYS, TOKEN_COLUMNS, pad_batch
from ..data import EXAMPLE_ID_COLUMN
from ..signals import check_class_ids
from ..tasks import TASKS, unwrap_model

ParamSpec = str | Iterable[str | nn.Parameter] | None


def _is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def select_parameters(model: nn.Module, params: ParamSpec = None) -> dict[str, nn.Parameter]:
    """The parameters whose per-example gradients are wanted, by name (tied parameters appear once).

    Args:
        model (`nn.Module`): the model.
        params (`None`, `str` or iterable): `None` selects every parameter with `requires_grad=True` (for a PEFT
            model these are the adapter parameters and any `modules_to_save`); `"all"` every parameter of the model,
            frozen ones included (Data Diet's GraNd over the whole network); `"last_layer"` the parameters of the
            output layer, i.e. of the last module (in registration order) that owns parameters itself: BERT's
            `classifier`, RoBERTa's `classifier.out_proj`, GPT-2's `lm_head` (tied to the input embedding, so its
            gradient includes the embedding's); any other string is a regular expression searched in every parameter
            name (frozen ones included, so `"encoder.layer.3."` works on any checkpoint; a tied weight matches under
            any of its names, e.g. `lm_head.weight` or `transformer.wte.weight`); an iterable gives parameter names
            or `nn.Parameter` objects.

    Returns:
        `dict[str, nn.Parameter]`: selected parameters in model order.

    Raises:
        ValueError: if nothing is selected, with the way to fix it.
    """
    all_named = list(model.named_parameters(remove_duplicate=False))
    selected: dict[int, tuple[str, nn.Parameter]] = {}
    if params is None:
        for name, param in all_named:
            if param.requires_grad and id(param) not in selected:
                selected[id(param)] = (name, param)
        if not selected:
            kind = "PEFT model has no trainable adapter parameters" if _is_peft_model(model) else (
                "model has no parameter with requires_grad=True"
            )
            raise ValueError(
                f"No trainable parameters selected: the {kind}. Unfreeze some parameters or pass params=<name regex> "
                f"(e.g. params=r'classifier' or params=r'encoder\\.layer\\.3\\.')."
            )
    elif params == "all":
        for name, param in all_named:
            selected.setdefault(id(param), (name, param))
        if not selected:
            raise ValueError("params='all': the model has no parameters.")
    elif params == "last_layer":
        owners = [(name, module) for name, module in model.named_modules()
                  if any(p is not None for p in module._parameters.values())]
        if not owners:
            raise ValueError("params='last_layer': the model has no parameters.")
        prefix, module = owners[-1]
        for attr, param in module._parameters.items():
            if param is not None:
                selected.setdefault(id(param), (f"{prefix}.{attr}" if prefix else attr, param))
    elif isinstance(params, str):
        try:
            pattern = re.compile(params)
        except re.error as err:
            raise ValueError(f"params={params!r} is not a valid regular expression: {err}.") from err
        for name, param in all_named:
            if pattern.search(name) and id(param) not in selected:
                selected[id(param)] = (name, param)
        if not selected:
            examples = ", ".join(name for name, _ in all_named[:6])
            raise ValueError(
                f"params={params!r} matches no parameter name. Names look like: {examples}, ... "
                "(see model.named_parameters())."
            )
    else:
        names = {name: param for name, param in all_named}
        for item in params:
            if isinstance(item, nn.Parameter):
                if not any(item is p for p in names.values()):
                    raise ValueError("A parameter passed in params does not belong to the model.")
                name = next(n for n, p in names.items() if p is item)
                selected.setdefault(id(item), (name, item))
            elif isinstance(item, str):
                if item not in names:
                    raise ValueError(f"Unknown parameter name {item!r}; see model.named_parameters() for valid names.")
                selected.setdefault(id(names[item]), (item, names[item]))
            else:
                raise TypeError(f"params entries must be names or nn.Parameter objects, got {type(item).__name__}.")
        if not selected:
            raise ValueError("params is an empty collection; pass None (all trainable), a regex, or some names.")
    return {name: param for name, param in selected.values()}


def model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@functools.lru_cache(maxsize=64)
def _forward_takes_use_cache(model_class: type) -> bool:
    """Whether `model_class.forward` declares a `use_cache` argument (decoders with a KV cache do)."""
    try:
        return "use_cache" in inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return False


def prepare_batch(
    model: nn.Module, batch: Mapping[str, Any], *, need_labels: bool = True
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Split a collated batch into model inputs and labels, on the model's device.

    Drops the example-id column and the labels from the inputs (the model's own loss is not needed: per-example
    losses are computed here), and turns the KV cache off for models whose forward takes `use_cache`.

    Raises:
        ValueError: if labels are needed and the batch has none, or `input_ids` and `inputs_embeds` are both missing.
    """
    device = model_device(model)
    labels = None
    for key in LABEL_KEYS:
        if key in batch and batch[key] is not None:
            labels = torch.as_tensor(batch[key]).to(device)
            break
    if labels is None and need_labels:
        raise ValueError(
            f"The batch has no labels (looked for {', '.join(LABEL_KEYS)}; got keys {sorted(batch)}). Per-example "
            "gradients need the gold label of each example: add a 'labels' column (class ids, or token ids with "
            "-100 on ignored positions for causal LM)."
        )
    inputs = {
        k: (v.to(device) if isinstance(v, torch.Tensor) else v)
        for k, v in batch.items()
        if k not in LABEL_KEYS and k != EXAMPLE_ID_COLUMN
    }
    ids = inputs.get("input_ids", inputs.get("inputs_embeds"))
    if ids is None:
        raise ValueError(f"The batch needs 'input_ids' (or 'inputs_embeds'); got keys {sorted(batch)}.")
    if _forward_takes_use_cache(type(unwrap_model(model))):
        inputs.setdefault("use_cache", False)  # no KV cache: nothing is generated, and it costs memory and copies
    return inputs, labels


def per_example_losses(
    logits: torch.Tensor, labels: torch.Tensor, task: str, ignore_index: int = -100, *, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable per-example losses in float32 and a validity mask.

    - `"sequence_classification"`: cross-entropy of `[B, C]` logits against class ids `[B]` (mean-squared error for a
      single-output regression head with float labels).
    - `"causal_lm"`: shifted token cross-entropy averaged over the example's own label tokens (labels equal to
      `ignore_index` masked); an example without label tokens gets loss 0 and `valid=False`.

    Args:
        check (`bool`, defaults to `True`): validate the label range (turned off under `torch.func.vmap`).

    Returns:
        `(losses [B], valid [B] bool)`.
    """
    if task == "sequence_classification":
        if logits.dim() != 2:
            raise ValueError(f"Expected [batch, num_labels] logits for classification, got {tuple(logits.shape)}.")
        if logits.shape[-1] == 1 and labels.is_floating_point():
            losses = (logits.float().squeeze(-1) - labels.float()) ** 2
            return losses, torch.ones_like(losses, dtype=torch.bool)
        if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"Classification needs one class id per example (labels of shape [{logits.shape[0]}]), got labels of "
                f"shape {tuple(labels.shape)}. Check the label column (label_column=...)."
            )
        labels = labels.long()
        if check:
            check_class_ids(labels, logits.shape[-1])
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        return losses, torch.ones_like(losses, dtype=torch.bool)
    if task == "causal_lm":
        if logits.dim() != 3:
            raise ValueError(f"Expected [batch, seq, vocab] logits for causal LM, got {tuple(logits.shape)}.")
        shift_logits = logits[:, :-1, :].float()
        shift_labels = labels[:, 1:].long()
        mask = shift_labels != ignore_index
        token_losses = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.masked_fill(~mask, 0).reshape(-1),
            reduction="none",
        ).view_as(shift_labels)
        counts = mask.sum(dim=1)
        losses = (token_losses * mask).sum(dim=1) / counts.clamp_min(1)
        return losses, counts > 0
    raise ValueError(f"Unknown task {task!r}; valid tasks are {', '.join(map(repr, TASKS))}.")


class ScoringMode:
    """Eval mode (dropout off) and optionally frozen parameters for one model, as a reusable context factory.

    The module and parameter lists are collected once, and only the modules still in training mode and the parameters
    still requiring grad are switched (and switched back), so entering it costs next to nothing when the model is
    already in eval mode: it matters when it wraps every batch of a scorer.

    Example:
        ```python
        >>> mode = ScoringMode(model)
        >>> with mode(freeze=True):
        ...     ...  # model.eval(), every parameter requires_grad=False; both restored on exit
        ```
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._modules = list(model.modules())
        self._params = list(model.parameters())

    @contextmanager
    def __call__(self, freeze: bool = True, train: bool = False) -> Iterator[None]:
        """Eval mode (or train mode with `train=True`: dropout active) and, with `freeze`, frozen parameters."""
        switched = [module for module in self._modules if module.training != train]
        for module in switched:
            module.training = train
        frozen = [param for param in self._params if param.requires_grad] if freeze else []
        for param in frozen:
            param.requires_grad_(False)
        try:
            yield
        finally:
            for param in frozen:
                param.requires_grad_(True)
            for module in switched:
                module.training = not train


def scoring_mode(model: nn.Module, freeze: bool = True) -> AbstractContextManager[None]:
    """Eval mode (dropout off) and, with `freeze`, `requires_grad=False` on every parameter; both restored after."""
    return ScoringMode(model)(freeze)


def collate_for_gradients(
    rows: Mapping[str, list], *, tokenizer: Any = None, pad_token_id: int = 0, label_column: str = "label"
) -> dict[str, torch.Tensor]:
    """Pad a `datasets` batch (columns of lists) and attach `labels`.

    Labels are the class ids of `label_column` when that column exists (classification), else a padded `labels`
    column (causal LM, -100 on padding), else the input ids with padding masked (causal LM on plain text).
    """
    keys = [k for k in (*TOKEN_COLUMNS, "labels") if k in rows]
    batch = pad_batch({k: rows[k] for k in keys}, tokenizer=tokenizer, pad_token_id=pad_token_id)
    if label_column in rows and label_column != "labels":
        batch["labels"] = torch.as_tensor(rows[label_column], dtype=torch.long)
    elif "labels" not in batch:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch
