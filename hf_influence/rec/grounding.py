"""Ground generated titles to real catalogue items by embedding distance (BIGRec / DEALRec evaluation).

DEALRec evaluates its LLM recommender as BIGRec does (METHODS.md C.5): every generated string and every item title is
embedded by the **base** LLM as the last-layer hidden state of its last token, and all items are ranked by L2
distance to the generation. `embed_texts` computes those embeddings (batched, right-padded, reading each text's own
last real token, so padding never changes a result); `ground_generations` ranks items with `torch.cdist`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers.utils import logging

from ..tasks import unwrap_model

logger = logging.get_logger(__name__)


def _backbone(model):
    """The module whose ``last_hidden_state`` equals the LM's last entry of ``hidden_states`` (decoder, unwrapped)."""
    model = unwrap_model(model)  # peft.PeftModel -> its base model (adapters included)
    getter = getattr(model, "get_decoder", None)
    if callable(getter):
        try:
            decoder = getter()
        except (AttributeError, NotImplementedError):
            decoder = None
        if decoder is not None and decoder is not model:
            return decoder
    return model


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


@torch.no_grad()
def embed_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 16,
    *,
    max_length: int | None = None,
    add_special_tokens: bool = True,
    show_progress: bool = True,
) -> torch.Tensor:
    """Last-layer hidden state of each text's last (non-padding) token, as a float32 CPU tensor ``[len(texts), H]``.

    Texts are sorted by length and right-padded within batches (the last real token of a causal LM never attends to
    padding, so every row equals the embedding of the text alone). For a causal LM the hidden state is read from its
    decoder (``model.get_decoder()``), which equals ``model(..., output_hidden_states=True).hidden_states[-1]``
    without computing the vocabulary logits; a PEFT model is unwrapped to its base model (adapters included, as
    loaded). The model is used in eval mode and left in its original mode.

    Args:
        model: a HF causal LM (e.g. SmolLM2 from the packaged GGUF) or a bare decoder.
        tokenizer: its tokenizer.
        texts (`Sequence[str]`): the strings to embed (item titles, generated titles).
        batch_size (`int`, defaults to 16): texts per forward pass.
        max_length (`int`, *optional*): keep at most this many leading tokens of each text.
        add_special_tokens (`bool`, defaults to `True`): let the tokenizer add BOS etc. as it does by default.
        show_progress (`bool`, defaults to `True`): a tqdm bar over batches.

    Returns:
        `torch.Tensor` of shape `(len(texts), hidden_size)`, dtype float32.

    Example:
        ```python
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer
        >>> from hf_influence.paths import packaged_smollm2_gguf
        >>> p = packaged_smollm2_gguf()
        >>> tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        >>> lm = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name)
        >>> embed_texts(lm, tok, ["Anno 2070", "Halo 3"]).shape
        torch.Size([2, 576])
        ```
    """
    from tqdm.auto import tqdm

    texts = [str(t) for t in texts]
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    backbone = _backbone(model)
    device = next(model.parameters()).device
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"] if texts else []
    fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else _pad_id(tokenizer)
    empty = [i for i, ids in enumerate(encoded) if len(ids) == 0]
    if empty:
        logger.warning(
            f"{len(empty)} texts have no tokens (e.g. empty generations at positions {empty[:5]}); they are embedded "
            "as the single BOS/EOS token."
        )
    encoded = [list(ids)[:max_length] if max_length else list(ids) for ids in encoded]
    encoded = [ids if ids else [fallback] for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad = _pad_id(tokenizer)
    out: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        batches = range(0, len(order), batch_size)
        for start in tqdm(batches, desc="Embedding texts", disable=not show_progress or len(batches) < 2):
            index = order[start : start + batch_size]
            lengths = torch.tensor([len(encoded[i]) for i in index])
            width = int(lengths.max())
            input_ids = torch.full((len(index), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(index), width), dtype=torch.long)
            for row, i in enumerate(index):
                input_ids[row, : lengths[row]] = torch.tensor(encoded[i])
                attention_mask[row, : lengths[row]] = 1
            outputs = backbone(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
            states = getattr(outputs, "last_hidden_state", None)
            if states is None:
                states = outputs.hidden_states[-1]
            last = states[torch.arange(len(index), device=states.device), (lengths - 1).to(states.device)]
            if out is None:
                out = torch.empty((len(texts), last.shape[-1]), dtype=torch.float32)
            out[torch.tensor(index)] = last.float().cpu()
    finally:
        model.train(was_training)
    if out is None:
        return torch.empty((0, 0), dtype=torch.float32)
    return out


def embed_catalogue(
    model, tokenizer, items: Mapping[int, str], batch_size: int = 16, **kwargs
) -> tuple[list[int], torch.Tensor]:
    """Embed every item title of a catalogue (``item id -> title``, e.g. `load_items`).

    Returns:
        `(item_ids, embeddings)`: the ids in catalogue order and their `embed_texts` rows.
    """
    item_ids = [int(i) for i in items]
    return item_ids, embed_texts(model, tokenizer, [items[i] for i in item_ids], batch_size, **kwargs)


@torch.no_grad()
def ground_generations(
    generated: Sequence[str] | torch.Tensor,
    item_embeddings: torch.Tensor,
    k: int = 20,
    *,
    item_ids: Sequence[int] | None = None,
    model=None,
    tokenizer=None,
    batch_size: int = 256,
    embed_batch_size: int = 16,
) -> list[list[int]]:
    """Rank catalogue items for each generation by L2 distance between embeddings (closest first).

    Args:
        generated (`Sequence[str]` or `torch.Tensor`): generated texts (embedded with `embed_texts`, which needs
            ``model`` and ``tokenizer``) or their embeddings ``[G, H]``.
        item_embeddings (`torch.Tensor`): ``[num_items, H]`` item embeddings (same model; `embed_catalogue`).
        k (`int`, defaults to 20): items returned per generation (capped at the catalogue size).
        item_ids (`Sequence[int]`, *optional*): the id of each item row; defaults to the row indices.
        model, tokenizer: the base LM and its tokenizer, when ``generated`` holds texts.
        batch_size (`int`, defaults to 256): generations per `torch.cdist` call.
        embed_batch_size (`int`, defaults to 16): texts per forward pass when embedding.

    Returns:
        `list[list[int]]`: for each generation, the ids of its ``k`` nearest items, nearest first.
    """
    if isinstance(generated, torch.Tensor):
        queries = generated
    else:
        if model is None or tokenizer is None:
            raise ValueError("Grounding generated texts needs the base model and tokenizer to embed them: pass "
                             "model=... and tokenizer=..., or pass the embeddings instead of texts.")
        queries = embed_texts(model, tokenizer, list(generated), embed_batch_size)
    if item_embeddings.ndim != 2 or queries.ndim != 2 or queries.shape[-1] != item_embeddings.shape[-1]:
        raise ValueError(
            f"Expected generation embeddings [G, H] and item embeddings [N, H] with the same H, got "
            f"{tuple(queries.shape)} and {tuple(item_embeddings.shape)}. Embed both with the same model."
        )
    num_items = item_embeddings.shape[0]
    if item_ids is not None and len(item_ids) != num_items:
        raise ValueError(f"item_ids has {len(item_ids)} entries for {num_items} item embeddings; they must match.")
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}.")
    k = min(int(k), num_items)
    items = item_embeddings.float()
    ranked: list[list[int]] = []
    for start in range(0, queries.shape[0], batch_size):
        chunk = queries[start : start + batch_size].to(items.device, torch.float32)
        distances = torch.cdist(chunk, items)
        top = distances.topk(k, dim=-1, largest=False).indices.cpu().tolist()
        ranked.extend([[item_ids[j] for j in row] for row in top] if item_ids is not None else top)
    return ranked
