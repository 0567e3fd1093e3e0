"""DEALRec's effort score: how hard a sample is for the LLM, as the norm of its loss gradient over the LoRA weights.

``effort(s) = || grad_phi L_LLM(s) ||_2`` with ``phi`` the learnable (LoRA) parameters (Lin et al., SIGIR 2024,
Eq. 12 and footnote 5). Computed exactly per example with `hf_influence.grads.per_example_grad_norms` (no per-sample
loop), with the causal-LM loss averaged over the example's own label tokens.

Differences from the authors' code (METHODS.md C.3, E.6), all deliberate:

- scope: all LoRA adapter matrices by default; ``scope="authors"`` is their single matrix (the LoRA-B of ``v_proj``
  in the last decoder layer), and any regex works;
- the model is scored in **eval mode** (LoRA dropout off): per-example gradients under dropout are random (the code
  runs ``model.train()``);
- padding never counts in the per-example mean (the code pads to a multiple of 8 with -100 labels that still enter
  its denominator), and there is no spurious x2 factor from accumulating the batch gradient (constant factors do not
  change rankings).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np
import torch
from transformers.utils import logging

from ..batching import pad_batch, resolve_pad_multiple
from ..fingerprints import model_fingerprint
from ..tasks import task_of_model_class, unwrap_model
from .base import Scorer
from .registry import register_scorer

logger = logging.get_logger(__name__)

LOSS_MODES: tuple[str, ...] = ("full_prompt", "response_only")
LORA_PATTERN = r"\.lora_(A|B|embedding_A|embedding_B)\."
AUTHORS_SCOPE = "authors"


def check_causal_lm(model: torch.nn.Module) -> None:
    """Raise a clear error unless ``model`` (or the model inside a PEFT wrapper) is a causal language model."""
    base = unwrap_model(model)
    name = type(base).__name__
    if task_of_model_class(type(base)) == "causal_lm":
        return
    raise ValueError(
        f"EffortScorer needs a causal language model (AutoModelForCausalLM, e.g. LlamaForCausalLM), got {name}. "
        "The effort score is the gradient norm of the next-token loss; load the LLM with "
        "AutoModelForCausalLM.from_pretrained(...) and wrap it with peft.get_peft_model(model, LoraConfig(...))."
    )


def resolve_effort_scope(model: torch.nn.Module, scope: str | None = None) -> str:
    """The parameter-name regex the effort gradient is taken over.

    Args:
        model (`torch.nn.Module`): a PEFT-wrapped causal LM.
        scope (`str`, *optional*): ``None`` = every LoRA adapter matrix; ``"authors"`` = the LoRA-B of ``v_proj`` in
            the last decoder layer (DEALRec's code: ``layers.31.self_attn.v_proj.lora_B`` for LLaMA-7B); any other
            string is a regex searched in the parameter names.

    Returns:
        `str`: a regex that matches at least one parameter.

    Raises:
        ValueError: when nothing matches, with the fix.
    """
    names = [n for n, _ in model.named_parameters()]
    if scope is None:
        pattern = LORA_PATTERN
    elif scope == AUTHORS_SCOPE:
        layers = [(int(m.group(1)), n) for n in names
                  if (m := re.search(r"layers\.(\d+)\.self_attn\.v_proj\.lora_B\.", n))]
        if not layers:
            raise ValueError(
                "scope='authors' needs LoRA adapters on self_attn.v_proj (LoraConfig(target_modules=['q_proj', "
                "'v_proj'])), but no '...layers.<i>.self_attn.v_proj.lora_B...' parameter exists."
            )
        last = max(i for i, _ in layers)
        pattern = rf"layers\.{last}\.self_attn\.v_proj\.lora_B\."
    else:
        pattern = scope
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"scope {scope!r} is not a valid regular expression: {err}.") from err
    if not any(compiled.search(n) for n in names):
        if scope is None:
            raise ValueError(
                "The model has no LoRA parameters. Wrap it first: model = peft.get_peft_model(model, "
                "LoraConfig(r=8, lora_alpha=16, target_modules=['q_proj', 'v_proj'], task_type='CAUSAL_LM')), "
                "or pass scope=<regex> to take the gradient over other parameters."
            )
        raise ValueError(f"The effort scope {pattern!r} matches no parameter; names look like {names[:4]} ...")
    return pattern


@register_scorer
class EffortScorer(Scorer):
    """Effort score (DEALRec, Lin et al., SIGIR 2024, Eq. 12): ``|| grad_phi L_LLM(s) ||_2`` over the LoRA parameters.

    Polarity: **higher = harder** (the LLM has a longer way to go on the sample).

    The dataset needs ``input_ids`` (and ``attention_mask`` when padded rows are given). With
    ``loss="full_prompt"`` (the authors' ``train_on_inputs``) every non-padding token is a label; with
    ``loss="response_only"`` a ``labels`` column (-100 on the prompt) is required.

    Args:
        model (`torch.nn.Module`): a causal LM, normally wrapped with PEFT LoRA (as it will be fine-tuned).
        tokenizer (*optional*): used only for its pad id.
        scope (`str`, *optional*): see `resolve_effort_scope` (default: all LoRA matrices; ``"authors"``: the last
            layer's ``v_proj`` LoRA-B).
        loss (`str`, defaults to `"full_prompt"`): ``"full_prompt"`` or ``"response_only"``.
        labels_column (`str`, defaults to `"labels"`): the labels column for ``"response_only"``.
        cuda_graph (`bool`, defaults to `False`): on a GPU, capture the norms step as CUDA graphs and replay them
            (`PerExampleGradNorms(cuda_graph=True)`); batches are then padded to a multiple of 64 tokens unless
            `pad_to_multiple_of` says otherwise.
        pad_to_multiple_of (`int`, *optional*): pad each batch to a multiple of this length.
        train_mode (`bool`, defaults to `False`): score in train mode, LoRA dropout active, as the authors' code
            (`model.train()`); each score is then one random draw (seed torch's generator to repeat it). Default:
            eval mode (deterministic). Not with `cuda_graph`.
        **kwargs: `column`, `batch_size`, `device` (see `Scorer`).

    Example:
        ```python
        >>> lora = get_peft_model(llm, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        >>> users = EffortScorer(lora, tokenizer=tokenizer, batch_size=8)(prompts)  # doctest: +SKIP
        ```
    """

    name: ClassVar[str] = "effort"
    polarity: ClassVar[str] = "higher_is_harder"
    definition: ClassVar[str] = "|| grad_LoRA L_LLM(s) ||_2, token-mean next-token loss, eval mode"
    paper: ClassVar[str] = "Lin et al., SIGIR 2024 (DEALRec), Eq. 12"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        tokenizer: Any = None,
        scope: str | None = None,
        loss: str = "full_prompt",
        labels_column: str = "labels",
        cuda_graph: bool = False,
        pad_to_multiple_of: int | None = None,
        train_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if train_mode and cuda_graph:
            raise ValueError("train_mode=True (dropout on) cannot be replayed as a CUDA graph; use cuda_graph=False.")
        self.cuda_graph = cuda_graph
        self.train_mode = train_mode
        self.pad_to_multiple_of = resolve_pad_multiple(pad_to_multiple_of, cuda_graph)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"EffortScorer needs a model object (torch.nn.Module), got {type(model).__name__}.")
        check_causal_lm(model)
        if loss not in LOSS_MODES:
            raise ValueError(f"Unknown loss={loss!r}; valid options are {', '.join(LOSS_MODES)}.")
        self.model = model
        self.tokenizer = tokenizer
        self.scope = scope
        self.scope_pattern = resolve_effort_scope(model, scope)
        self.loss = loss
        self.labels_column = labels_column
        config = getattr(unwrap_model(model), "config", None)
        pad = getattr(config, "pad_token_id", None)
        if pad is None:
            pad = getattr(config, "eos_token_id", None)
        self.pad_token_id = int(pad[0] if isinstance(pad, (list, tuple)) else pad) if pad is not None else 0

    def config_dict(self) -> dict[str, Any]:
        config = super().config_dict()
        config.update(scope=self.scope, scope_pattern=self.scope_pattern, loss=self.loss,
                      labels_column=self.labels_column, train_mode=self.train_mode)
        return config

    def card_entry(self) -> dict[str, Any]:
        entry = super().card_entry()
        if self.train_mode:
            entry["definition"] = self.definition.replace("eval mode", "train mode (LoRA dropout on, one random draw)")
        return entry

    def checkpoint_fingerprint(self) -> str:
        # re-hashed on every call, as ModelOutputScorer does for in-memory models: a model trained further between
        # two calls must not be served stale scores from the datasets cache
        return model_fingerprint(self.model)

    @property
    def num_scope_parameters(self) -> int:
        pattern = re.compile(self.scope_pattern)
        return sum(p.numel() for n, p in self.model.named_parameters() if pattern.search(n))

    def validate(self, dataset: Any) -> None:
        super().validate(dataset)
        if "input_ids" not in dataset.column_names:
            raise ValueError(
                f"EffortScorer needs an 'input_ids' column (got {dataset.column_names}); tokenize the prompts first "
                "(hf_influence.rec.prompts.build_prompt_dataset)."
            )
        if self.loss == "response_only" and self.labels_column not in dataset.column_names:
            raise ValueError(
                f"loss='response_only' needs a {self.labels_column!r} column with -100 on prompt tokens; got "
                f"{dataset.column_names}. Use loss='full_prompt' (the authors' setting) or add labels."
            )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_grad_norms"] = None  # the hook plan is rebuilt where the scorer is unpickled (num_proc workers)
        return state

    def score_batch(self, batch: dict[str, list]) -> np.ndarray:
        from ..grads import PerExampleGradNorms

        rows = {"input_ids": batch["input_ids"]}
        if "attention_mask" in batch:
            rows["attention_mask"] = batch["attention_mask"]
        if self.loss == "response_only":
            rows["labels"] = batch[self.labels_column]
        padded = pad_batch(rows, tokenizer=self.tokenizer, pad_token_id=self.pad_token_id,
                           pad_to_multiple_of=self.pad_to_multiple_of)
        if self.loss == "full_prompt":
            padded["labels"] = padded["input_ids"].masked_fill(padded["attention_mask"] == 0, -100)
        self.model.to(self.device)
        padded = {k: v.to(self.device) for k, v in padded.items()}
        grad_norms = getattr(self, "_grad_norms", None)
        if grad_norms is None or grad_norms.model is not self.model:
            grad_norms = self._grad_norms = PerExampleGradNorms(self.model, self.scope_pattern,
                                                                cuda_graph=self.cuda_graph, train_mode=self.train_mode)
        norms = grad_norms(padded)
        return norms.detach().double().cpu().numpy()
