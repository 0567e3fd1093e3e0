"""BIGRec-style prompts for LLM recommendation: Alpaca template, history titles in, next item title out.

DEALRec fine-tunes its LLM recommender (BIGRec, METHODS.md C.5) on prompts in the Alpaca format: a dataset-specific
instruction, an input listing the titles of the user's history (oldest first, joined with ``"; "``), and the title of
the target item as the response. Histories are truncated from the **oldest** side until the whole example fits the
token budget (512 tokens in the paper). For training the response is the (single) target title; at inference the
prompt ends after ``### Response:\\n`` and the model generates a title, later grounded to real items
(`hf_influence.rec.grounding`).

The instruction and input wording are written for this library (the paper's exact sentences are not reproduced);
pass ``instruction=`` / ``history_prefix=`` to use your own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import logging

from ..data import EXAMPLE_ID_COLUMN

logger = logging.get_logger(__name__)

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
HISTORY_SEPARATOR = "; "
IGNORE_INDEX = -100


@dataclass(frozen=True)
class PromptStyle:
    """A dataset-specific instruction and the sentence that introduces the history titles."""

    instruction: str
    history_prefix: str


PROMPT_STYLES: dict[str, PromptStyle] = {
    "games": PromptStyle(
        instruction="The user bought the game products listed below. Recommend one new game product for this user.",
        history_prefix="Games the user bought, oldest first: ",
    ),
    "books": PromptStyle(
        instruction="The user bought the books listed below. Recommend one new book this user will like.",
        history_prefix="Books the user bought, oldest first: ",
    ),
    "micro-videos": PromptStyle(
        instruction="The user watched the micro-videos listed below. Recommend one new micro-video for this user.",
        history_prefix="Micro-videos the user watched, oldest first: ",
    ),
    "movies": PromptStyle(
        instruction="The user rated the movies listed below. Recommend one new movie this user will like.",
        history_prefix="Movies the user rated, oldest first: ",
    ),
    "items": PromptStyle(
        instruction="The user interacted with the items listed below. Recommend one new item this user will like.",
        history_prefix="Items the user interacted with, oldest first: ",
    ),
}
DOMAIN_ALIASES = {"microlens": "micro-videos", "microlens-50k": "micro-videos", "book": "books", "movielens": "movies",
                  "movielens-1m": "movies", "ml-1m": "movies", "game": "games"}


def resolve_style(domain: str | PromptStyle = "items", *, instruction: str | None = None,
                  history_prefix: str | None = None) -> PromptStyle:
    """The `PromptStyle` for a domain name (``games``, ``books``, ``micro-videos``, ``movies``, ``items`` or a
    dataset folder name such as ``microlens-50k``), with optional overrides of either sentence."""
    if isinstance(domain, PromptStyle):
        style = domain
    else:
        key = DOMAIN_ALIASES.get(str(domain).lower(), str(domain).lower())
        if key not in PROMPT_STYLES:
            raise ValueError(
                f"Unknown prompt domain {domain!r}; choose one of {sorted(PROMPT_STYLES) + sorted(DOMAIN_ALIASES)}, "
                "or pass instruction=... and history_prefix=..."
            )
        style = PROMPT_STYLES[key]
    return PromptStyle(
        instruction=instruction if instruction is not None else style.instruction,
        history_prefix=history_prefix if history_prefix is not None else style.history_prefix,
    )


def format_history(titles: Sequence[str], quote_titles: bool = True) -> str:
    """Join titles (oldest first) with ``"; "``, each in double quotes when ``quote_titles``."""
    return HISTORY_SEPARATOR.join(f'"{t}"' if quote_titles else str(t) for t in titles)


def render_prompt(history_titles: Sequence[str], style: PromptStyle, quote_titles: bool = True) -> str:
    """The Alpaca prompt up to and including ``### Response:\\n`` for the given history titles."""
    text = style.history_prefix + format_history(history_titles, quote_titles)
    return ALPACA_TEMPLATE.format(instruction=style.instruction, input=text)


def _token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def fit_history(
    history_titles: Sequence[str],
    tokenizer,
    max_tokens: int,
    style: PromptStyle,
    *,
    response: str = "",
    extra_tokens: int = 0,
    quote_titles: bool = True,
) -> int:
    """How many of the most recent titles fit: the largest m such that the prompt with ``history_titles[-m:]`` plus
    ``response`` has at most ``max_tokens - extra_tokens`` tokens (0 if even the empty history does not fit).

    Dropping the oldest titles one by one (as the DEALRec/BIGRec code does) gives the same m whenever the token count
    grows with the number of titles; this searches it by bisection in O(log n) tokenizer calls.
    """
    budget = max_tokens - extra_tokens
    n = len(history_titles)

    def fits(m: int) -> bool:
        kept = history_titles[n - m :] if m else []
        return _token_count(tokenizer, render_prompt(kept, style, quote_titles) + response) <= budget

    if fits(n):
        return n
    low, high = 0, n - 1  # invariant: answer in [low, high]; fits(high + 1) is False
    if not fits(0):
        return 0
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _response_of(row: Mapping[str, Any]) -> str:
    targets = row.get("target_titles") or []
    if not targets:
        raise ValueError(
            f"User row {row.get(EXAMPLE_ID_COLUMN, '?')} has no target title; training prompts need one. Use rows "
            "from load_dealrec_folder (users without a target are left out there)."
        )
    return str(targets[0])


def generation_prompt(
    row: Mapping[str, Any],
    tokenizer=None,
    *,
    max_tokens: int = 512,
    domain: str | PromptStyle = "items",
    quote_titles: bool = True,
    instruction: str | None = None,
    history_prefix: str | None = None,
) -> str:
    """The inference prompt of one user row (ends with ``### Response:\\n``).

    Args:
        row (`Mapping`): a user row with ``history_titles``.
        tokenizer (*optional*): when given, the oldest titles are dropped until the prompt has at most ``max_tokens``
            tokens; without a tokenizer the whole history is used.
        max_tokens (`int`, defaults to 512): the token budget of the prompt.
        domain, quote_titles, instruction, history_prefix: see `build_prompt_dataset`.

    Example:
        ```python
        >>> print(generation_prompt({"history_titles": ["Anno 2070", "Halo 3"]}, domain="games"))  # doctest: +ELLIPSIS
        Below is an instruction ...
        ### Input:
        Games the user bought, oldest first: "Anno 2070"; "Halo 3"
        <BLANKLINE>
        ### Response:
        <BLANKLINE>
        ```
    """
    style = resolve_style(domain, instruction=instruction, history_prefix=history_prefix)
    titles = list(row["history_titles"])
    if tokenizer is not None:
        keep = fit_history(titles, tokenizer, max_tokens, style, quote_titles=quote_titles)
        titles = titles[len(titles) - keep :] if keep else []
    return render_prompt(titles, style, quote_titles)


def build_prompt_dataset(
    user_rows,
    tokenizer,
    max_tokens: int = 512,
    train_on_inputs: bool = True,
    *,
    domain: str | PromptStyle = "items",
    quote_titles: bool = True,
    add_eos: bool = True,
    instruction: str | None = None,
    history_prefix: str | None = None,
    keep_columns: Sequence[str] = (EXAMPLE_ID_COLUMN, "user_id"),
    num_proc: int | None = None,
):
    """Tokenized causal-LM training features from user rows: prompt (history titles) + response (target title).

    Each example is ``render_prompt(kept history) + target_titles[0]`` (+ EOS), where the kept history is the longest
    suffix (most recent titles) such that the example has at most ``max_tokens`` tokens. If even an empty history does
    not fit (an extremely long target title), the tokens are cut at ``max_tokens`` (counted in a warning).

    Args:
        user_rows (`datasets.Dataset`): user rows (``history_titles``, ``target_titles``), e.g. the ``train`` split of
            `load_dealrec_folder`.
        tokenizer: a HF tokenizer (e.g. SmolLM2's, ``AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)``).
        max_tokens (`int`, defaults to 512): token budget per example (the paper's cutoff).
        train_on_inputs (`bool`, defaults to `True`): ``True`` trains on every token (BIGRec/DEALRec setting);
            ``False`` sets the prompt's labels to -100 so that only the response is learnt.
        domain (`str` or `PromptStyle`, defaults to `"items"`): the instruction preset (``games``, ``books``,
            ``micro-videos``, ``movies``, ``items``; dataset names such as ``microlens-50k`` work too).
        quote_titles (`bool`, defaults to `True`): wrap each history title in double quotes.
        add_eos (`bool`, defaults to `True`): append the tokenizer's EOS token (so the model learns to stop).
        instruction, history_prefix (`str`, *optional*): override the preset sentences.
        keep_columns (`Sequence[str]`): row columns carried over (ids for joins).
        num_proc (`int`, *optional*): processes for `Dataset.map`.

    Returns:
        `datasets.Dataset` with ``input_ids``, ``attention_mask``, ``labels``, ``num_history_kept`` and the kept
        columns.
    """
    import datasets

    style = resolve_style(domain, instruction=instruction, history_prefix=history_prefix)
    missing = [c for c in ("history_titles", "target_titles") if c not in user_rows.column_names]
    if missing:
        raise ValueError(
            f"The rows lack {missing} (columns: {user_rows.column_names}); pass user rows from load_dealrec_folder."
        )
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}.")
    eos = tokenizer.eos_token_id if add_eos else None
    if add_eos and eos is None:
        raise ValueError(
            "add_eos=True but the tokenizer has no eos_token_id; set tokenizer.eos_token or pass add_eos=False."
        )

    convert = _PromptTokenizer(tokenizer, max_tokens, train_on_inputs, style, quote_titles, eos)
    ids = datasets.Sequence(datasets.Value("int64"))
    features = {name: user_rows.features[name] for name in keep_columns if name in user_rows.column_names}
    features.update(
        {"input_ids": ids, "attention_mask": datasets.Sequence(datasets.Value("int8")), "labels": ids,
         "num_history_kept": datasets.Value("int64"), "truncated_tokens": datasets.Value("bool")}
    )
    result = user_rows.map(
        convert,
        batched=True,
        remove_columns=[c for c in user_rows.column_names if c not in keep_columns],
        features=datasets.Features(features),
        num_proc=num_proc,
        desc="Tokenizing prompts",
    )
    cut = sum(result["truncated_tokens"])
    if cut:
        logger.warning(
            f"{cut} examples did not fit max_tokens={max_tokens} even without history; their tokens were cut at "
            f"{max_tokens}. Raise max_tokens if targets are that long."
        )
    return result.remove_columns("truncated_tokens")


class _PromptTokenizer:
    """The batched map function of `build_prompt_dataset` (a class so `datasets` can hash it by its fields)."""

    def __init__(self, tokenizer, max_tokens: int, train_on_inputs: bool, style: PromptStyle, quote_titles: bool,
                 eos: int | None):
        self.tokenizer, self.max_tokens, self.train_on_inputs = tokenizer, max_tokens, train_on_inputs
        self.style, self.quote_titles, self.eos = style, quote_titles, eos

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {name: [] for name in ("input_ids", "attention_mask", "labels", "num_history_kept",
                                                      "truncated_tokens")}
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        for row in rows:
            response = _response_of(row)
            titles = list(row["history_titles"])
            extra = 1 if self.eos is not None else 0
            keep = fit_history(titles, self.tokenizer, self.max_tokens, self.style, response=response,
                               extra_tokens=extra, quote_titles=self.quote_titles)
            prompt = render_prompt(titles[len(titles) - keep :] if keep else [], self.style, self.quote_titles)
            input_ids = list(self.tokenizer(prompt + response, add_special_tokens=True)["input_ids"])
            if self.eos is not None:
                input_ids.append(self.eos)
            labels = list(input_ids)
            if not self.train_on_inputs:
                n_prompt = _token_count(self.tokenizer, prompt)
                labels[:n_prompt] = [IGNORE_INDEX] * min(n_prompt, len(labels))
            truncated = len(input_ids) > self.max_tokens
            input_ids, labels = input_ids[: self.max_tokens], labels[: self.max_tokens]
            out["input_ids"].append(input_ids)
            out["attention_mask"].append([1] * len(input_ids))
            out["labels"].append(labels)
            out["num_history_kept"].append(keep)
            out["truncated_tokens"].append(truncated)
        return out

