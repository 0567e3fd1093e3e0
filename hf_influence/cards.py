"""Dataset and model cards that record how every score column was made.

Cards are rendered from the Jinja templates of the ``hf_influence.model_cards`` package (``dataset_card.md.jinja``,
``model_card.md.jinja``) into ``huggingface_hub.DatasetCard`` / ``ModelCard`` objects whose YAML header is built with
``DatasetCardData`` / ``ModelCardData``. The same facts are kept machine-readable in a provenance dict (written as
``hf_influence.json`` by `hf_influence.hub`).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.resources
import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .data import EXAMPLE_ID_COLUMN

logger = logging.get_logger(__name__)

#: Keys every score entry (``Scorer.card_entry()``) must have.
SCORE_ENTRY_KEYS = ("name", "column", "definition", "paper", "polarity", "config")
#: Packages whose versions every card records.
VERSIONED_PACKAGES = (
    "hf_influence",
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "peft",
    "huggingface_hub",
    "evaluate",
)
BASE_TAGS = ("hf_influence", "data-pruning", "training-dynamics")
PROVENANCE_FORMAT = 1
#: Lists longer than this (e.g. kept example ids) are summarised in cards and kept in full in hf_influence.json.
MAX_LISTED_ITEMS = 20


def library_versions() -> dict[str, str]:
    """Installed versions of hf_influence and its main dependencies (``"not installed"`` when absent), plus Python."""
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def _jsonable(value: Any) -> Any:
    """A JSON-serialisable copy of ``value`` (paths, numpy scalars, tuples, sets and unknown objects as strings)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def score_entries(scorers: Iterable[Any]) -> list[dict[str, Any]]:
    """Normalise scorers to their card entries.

    Args:
        scorers (iterable of `Scorer` or `dict`): `Scorer` objects (their ``card_entry()`` is used, or
            ``card_entries()`` for scorers that add several columns) or dicts with the keys
            ``name, column, definition, paper, polarity, config``.

    Returns:
        `list[dict]`: one JSON-serialisable entry per score column, in the given order.

    Raises:
        ValueError: an entry misses keys, or two entries name the same column.
    """
    raw = []
    for scorer in scorers:
        if hasattr(scorer, "card_entries"):  # scorers that add several columns (DynamicsScorer)
            raw.extend((scorer, entry) for entry in scorer.card_entries())
        else:
            raw.append((scorer, scorer.card_entry() if hasattr(scorer, "card_entry") else scorer))
    entries = []
    for scorer, entry in raw:
        if not isinstance(entry, Mapping):
            raise TypeError(
                f"Each scorer must be a Scorer or its card_entry() dict, got {type(scorer).__name__}: {scorer!r}."
            )
        missing = [key for key in SCORE_ENTRY_KEYS if key not in entry]
        if missing:
            raise ValueError(
                f"Score entry {dict(entry)!r} misses the key(s) {missing}. Each entry needs {list(SCORE_ENTRY_KEYS)} "
                "(what Scorer.card_entry() returns)."
            )
        entries.append(_jsonable(dict(entry)))
    columns = [entry["column"] for entry in entries]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ValueError(
            f"Several score entries name the same column(s) {duplicated}; give each scorer its own column."
        )
    return entries


def checkpoint_entries(checkpoints: Iterable[Any]) -> list[dict[str, str]]:
    """Describe scoring checkpoints with a fingerprint of their weights.

    Args:
        checkpoints (iterable): local checkpoint folders/files, Hub ids, `nn.Module`s, or dicts with ``ref`` and
            ``fingerprint`` (kept as given).

    Returns:
        `list[dict]`: ``{"ref": str, "fingerprint": str}`` per checkpoint, fingerprints from
        `hf_influence.fingerprints.model_fingerprint` (hash of weight files, never pickling).
    """
    from .fingerprints import model_fingerprint

    entries = []
    for checkpoint in checkpoints:
        if isinstance(checkpoint, Mapping):
            if "ref" not in checkpoint or "fingerprint" not in checkpoint:
                raise ValueError(
                    f"A checkpoint dict needs the keys 'ref' and 'fingerprint', got {dict(checkpoint)!r}."
                )
            entries.append({"ref": str(checkpoint["ref"]), "fingerprint": str(checkpoint["fingerprint"])})
            continue
        if hasattr(checkpoint, "state_dict"):
            ref = getattr(getattr(checkpoint, "config", None), "_name_or_path", "") or type(checkpoint).__name__
        else:
            ref = str(checkpoint)
        entries.append({"ref": ref, "fingerprint": model_fingerprint(checkpoint)})
    return entries


def dataset_description(dataset: Any) -> dict[str, Any]:
    """Rows per split, column types and fingerprints of a `Dataset` or `DatasetDict` (JSON-serialisable)."""
    splits = _splits(dataset)
    first = next(iter(splits.values()))
    return {
        "splits": [
            {"name": name, "num_rows": len(ds), "fingerprint": getattr(ds, "_fingerprint", None)}
            for name, ds in splits.items()
        ],
        "num_rows": sum(len(ds) for ds in splits.values()),
        "columns": [{"name": name, "type": str(feature)} for name, feature in first.features.items()],
        "id_column": EXAMPLE_ID_COLUMN,
        "has_id_column": EXAMPLE_ID_COLUMN in first.column_names,
    }


def _splits(dataset: Any) -> dict[str, Any]:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if not dataset:
            raise ValueError("The DatasetDict has no splits: nothing to describe or save.")
        return dict(dataset)
    if isinstance(dataset, datasets.Dataset):
        return {str(dataset.split) if dataset.split is not None else "train": dataset}
    raise TypeError(f"Expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}.")


def build_provenance(
    dataset: Any,
    *,
    scorers: Iterable[Any] = (),
    selection: Any = None,
    base_model: str | None = None,
    checkpoints: Iterable[Any] = (),
    seeds: Sequence[int] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a card records, as one JSON-serialisable dict (the content of ``hf_influence.json``).

    Args:
        dataset (`Dataset` or `DatasetDict`): the scored data.
        scorers (iterable of `Scorer` or dict): see [`score_entries`].
        selection (`SelectionReport` or `dict`, *optional*): the selection applied (``.to_dict()`` is used).
        base_model (`str`, *optional*): name or path of the model the scores were computed with/for.
        checkpoints (iterable, *optional*): scoring checkpoints, see [`checkpoint_entries`].
        seeds (`Sequence[int]`, *optional*): training/scoring seeds.
        extra (`Mapping`, *optional*): anything else to record (kept verbatim, JSON-serialised).

    Returns:
        `dict`: keys ``format, created_at, dataset, scores, selection, base_model, checkpoints, seeds, versions,
        extra``.
    """
    if selection is not None and hasattr(selection, "to_dict"):
        selection = selection.to_dict()
    if selection is not None and not isinstance(selection, Mapping):
        raise TypeError(f"selection must be a SelectionReport or a dict, got {type(selection).__name__}.")
    return {
        "format": PROVENANCE_FORMAT,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": dataset_description(dataset),
        "scores": score_entries(scorers),
        "selection": _jsonable(dict(selection)) if selection is not None else None,
        "base_model": None if base_model is None else str(base_model),
        "checkpoints": checkpoint_entries(checkpoints),
        "seeds": [int(s) for s in seeds],
        "versions": library_versions(),
        "extra": _jsonable(dict(extra)) if extra else None,
    }


def check_score_columns(dataset: Any, scores: Sequence[Mapping[str, Any]]) -> None:
    """Raise a ValueError if a declared score column is missing from the dataset (from any split)."""
    for name, ds in _splits(dataset).items():
        missing = [entry["column"] for entry in scores if entry["column"] not in ds.column_names]
        if missing:
            raise ValueError(
                f"Score column(s) {missing} are declared by the scorers but missing from split {name!r} "
                f"(columns: {ds.column_names}). Run the scorer on the dataset first, or drop it from `scorers`."
            )


def size_category(num_rows: int) -> str:
    """The Hub's ``size_categories`` bucket for ``num_rows`` (``"n<1K"``, ``"1K<n<10K"``, ...)."""
    bounds = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M")]
    bounds += [(10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B")]
    for bound, label in bounds:
        if num_rows < bound:
            return label
    return "n>1T" if num_rows >= 10**12 else "1B<n<10B"


def _md_cell(value: Any) -> str:
    """Make a value safe for one Markdown table cell (pipes escaped, newlines as spaces)."""
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _counts_table(title: str, columns: dict[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One row per group, one column per mapping (e.g. before/after counts); missing groups count 0."""
    groups: list[str] = []
    for inner in columns.values():
        groups += [str(g) for g in inner if str(g) not in groups]
    rows = []
    for group in groups:
        cells = [_md_cell({str(k): v for k, v in inner.items()}.get(group, 0)) for inner in columns.values()]
        rows.append([_md_cell(group), *cells])
    return {"title": title, "header": ["group", *columns], "rows": rows}


def _selection_view(selection: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Split a selection dict (``SelectionReport.to_dict()``) into scalar facts and tables for the templates.

    ``<name>_before``/``<name>_after`` mappings (``per_class_before``/``per_class_after``) become one table with a
    before and an after column; a list of dicts (``strata``) becomes a table with one row per item; a mapping of
    mappings becomes a table with one column per inner mapping; a mapping of scalars (``params``) a two-column
    table; lists longer than `MAX_LISTED_ITEMS` are summarised (they stay complete in ``hf_influence.json``).
    """
    if not selection:
        return None
    scalars, tables = [], []
    paired = {
        key[: -len("_before")]
        for key in selection
        if key.endswith("_before") and f"{key[: -len('_before')]}_after" in selection
    }
    for key, value in selection.items():
        prefix = key.rsplit("_", 1)[0]
        if prefix in paired and key in (f"{prefix}_before", f"{prefix}_after"):
            if key.endswith("_before"):
                columns = {"before": value or {}, "after": selection[f"{prefix}_after"] or {}}
                tables.append(_counts_table(f"{prefix.replace('_', ' ')} counts", columns))
        elif isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            tables.append(_counts_table(key, dict(value)))
        elif isinstance(value, Mapping):
            rows = [
                [_md_cell(k), _md_cell(json.dumps(v) if isinstance(v, (list, dict)) else v)] for k, v in value.items()
            ]
            if rows:
                tables.append({"title": key, "header": ["name", "value"], "rows": rows})
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            header = list(dict.fromkeys(k for item in value for k in item))
            rows = [[_md_cell(item.get(column, "")) for column in header] for item in value]
            tables.append({"title": key, "header": header, "rows": rows})
        elif isinstance(value, (list, tuple)) and len(value) > MAX_LISTED_ITEMS:
            scalars.append((key, f"{len(value)} items (listed in hf_influence.json)"))
        elif isinstance(value, (list, tuple)):
            scalars.append((key, json.dumps(value)))
        else:
            scalars.append((key, value))
    return {"scalars": scalars, "tables": tables}


def _template_text(name: str) -> str:
    """A card template: from the installed ``hf_influence.model_cards`` package (wheel or editable install), else from
    the repository's top-level ``model_cards/`` folder when the source tree itself is on ``sys.path`` (e.g.
    ``python -m pytest`` in a checkout whose package was installed non-editable)."""
    try:
        return importlib.resources.files("hf_influence.model_cards").joinpath(name).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        source_tree_copy = Path(__file__).resolve().parents[1] / "model_cards" / name
        if source_tree_copy.is_file():
            return source_tree_copy.read_text(encoding="utf-8")
        raise FileNotFoundError(
            f"Card template {name!r} not found: the package 'hf_influence.model_cards' is missing. Reinstall "
            "hf_influence (pip install .) so that its templates are installed."
        ) from None


def _template(name: str) -> Any:
    import jinja2

    text = _template_text(name)
    env = jinja2.Environment(keep_trailing_newline=True, autoescape=False, undefined=jinja2.StrictUndefined)
    env.filters["md"] = _md_cell
    return env.from_string(text)


def render_dataset_card(
    provenance: Mapping[str, Any],
    *,
    plots: Sequence[Mapping[str, str]] = (),
    load_path: str = "path/to/this/folder",
    configs: list[dict[str, Any]] | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
    task_categories: Sequence[str] | None = None,
    pretty_name: str | None = None,
    card_data: Mapping[str, Any] | None = None,
) -> Any:
    """Render the dataset card of a scored dataset from its provenance.

    Args:
        provenance (`Mapping`): the output of [`build_provenance`].
        plots (sequence of dict, *optional*): ``{"title": ..., "path": ...}`` per embedded image, paths relative to
            the card.
        load_path (`str`): what to pass to `datasets.load_dataset` in the usage snippet (repo id or folder).
        configs (`list[dict]`, *optional*): the ``configs`` YAML entry (data files per split) for `load_dataset`.
        license (`str`, *optional*): SPDX-style license id of the data.
        tags (`Sequence[str]`, *optional*): extra tags (``hf_influence`` tags are always added).
        task_categories (`Sequence[str]`, *optional*): Hub task categories, e.g. ``["text-classification"]``.
        pretty_name (`str`, *optional*): card title.
        card_data (`Mapping`, *optional*): more YAML header fields (override the ones above).

    Returns:
        `huggingface_hub.DatasetCard`
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    header: dict[str, Any] = {
        "license": license,
        "tags": list(dict.fromkeys([*BASE_TAGS, *tags])),
        "task_categories": list(task_categories) if task_categories else None,
        "pretty_name": pretty_name,
        "size_categories": [size_category(int(provenance["dataset"]["num_rows"]))],
    }
    if configs is not None:
        header["configs"] = configs
    header.update(dict(card_data or {}))
    data = DatasetCardData(**{k: v for k, v in header.items() if v is not None})
    content = _template("dataset_card.md.jinja").render(
        card_data=data.to_yaml(),
        title=pretty_name or "Scored dataset",
        dataset=provenance["dataset"],
        scores=provenance["scores"],
        base_model=provenance.get("base_model"),
        checkpoints=provenance.get("checkpoints") or [],
        seeds=provenance.get("seeds") or [],
        selection=_selection_view(provenance.get("selection")),
        plots=list(plots),
        versions=provenance["versions"],
        extra=provenance.get("extra"),
        load_path=load_path,
    )
    return DatasetCard(content)


def render_model_card(
    *,
    base_model: str | None = None,
    dataset: str | None = None,
    selection: Any = None,
    results: Mapping[str, Any] | None = None,
    scorers: Iterable[Any] = (),
    checkpoints: Iterable[Any] = (),
    seeds: Sequence[int] = (),
    training: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
    pipeline_tag: str | None = None,
    card_data: Mapping[str, Any] | None = None,
    usage: str | None = None,
) -> Any:
    """Render the model card of a model fine-tuned on a pruned split.

    Args:
        base_model (`str`, *optional*): the model that was fine-tuned (Hub id or path).
        dataset (`str`, *optional*): the training data (Hub id or path of the scored dataset).
        selection (`SelectionReport` or `dict`, *optional*): how the training split was pruned.
        results (`Mapping[str, float]`, *optional*): evaluation metrics, e.g. ``{"eval_accuracy": 0.87}``.
        scorers (iterable of `Scorer` or dict, *optional*): the scores the selection used (see [`score_entries`]).
        checkpoints (iterable, *optional*): the scoring checkpoints (see [`checkpoint_entries`]).
        seeds (`Sequence[int]`, *optional*): seeds of the fine-tune(s).
        training (`Mapping`, *optional*): training hyperparameters to list.
        model_name (`str`, *optional*): card title and ``model_name`` field.
        license (`str`, *optional*): license id.
        tags (`Sequence[str]`, *optional*): extra tags (``hf_influence`` tags are always added).
        pipeline_tag (`str`, *optional*): e.g. ``"text-classification"``.
        card_data (`Mapping`, *optional*): more YAML header fields.
        usage (`str`, *optional*): Markdown for a "How to load" section (e.g. a model class that needs an import).

    Returns:
        `huggingface_hub.ModelCard`

    Example:
        ```python
        >>> card = render_model_card(base_model="bert-base-uncased", dataset="me/snli-el2n-50",
        ...                          results={"eval_accuracy": 0.88})
        >>> card.save("out/README.md")
        ```
    """
    from huggingface_hub import ModelCard, ModelCardData

    if selection is not None and hasattr(selection, "to_dict"):
        selection = selection.to_dict()
    header: dict[str, Any] = {
        "base_model": base_model,
        "datasets": [dataset] if dataset else None,
        "license": license,
        "library_name": "transformers",
        "tags": list(dict.fromkeys([*BASE_TAGS, *tags])),
        "pipeline_tag": pipeline_tag,
        "model_name": model_name,
    }
    header.update(dict(card_data or {}))
    data = ModelCardData(**{k: v for k, v in header.items() if v is not None})
    results_rows = [(name, _format_metric(value)) for name, value in (results or {}).items()]
    content = _template("model_card.md.jinja").render(
        card_data=data.to_yaml(),
        title=model_name or "Model fine-tuned on a pruned split",
        base_model=base_model,
        dataset_ref=dataset,
        selection=_selection_view(_jsonable(dict(selection)) if selection is not None else None),
        results=results_rows,
        scores=score_entries(scorers),
        checkpoints=checkpoint_entries(checkpoints),
        seeds=[int(s) for s in seeds],
        training=[
            (k, json.dumps(_jsonable(v)) if isinstance(v, (list, dict)) else v) for k, v in (training or {}).items()
        ],
        versions=library_versions(),
        usage=usage,
    )
    return ModelCard(content)


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return _md_cell(value)
