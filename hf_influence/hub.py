"""Save and push scored datasets (data + dataset card + plots + provenance), and model cards for pruned fine-tunes.

Folder layout written by `save_scored_dataset` (one copy of the data, readable by both loaders)::

    path/
      README.md            dataset card; its YAML ``configs`` point `load_dataset` at the Arrow shards
      hf_influence.json    the same provenance, machine-readable
      plots/               data_map.png, score_histograms.png (embedded in the card by relative path)
      dataset_dict.json    }
      train/               } `DatasetDict.save_to_disk` layout (Arrow shards + state.json per split)

so that::

    datasets.load_from_disk(path)["train"]      # exact Dataset, fingerprint and features
    datasets.load_dataset(str(path))["train"]    # through the card's `configs` (Arrow builder)

both give the same columns and values. On the Hub (`push_scored_dataset`) the data goes through
`Dataset.push_to_hub` (Parquet shards) and, because ``push_to_hub`` only rewrites the YAML header of README.md, the
narrative card, plots and ``hf_influence.json`` are uploaded afterwards in a second commit that keeps the YAML the
data push wrote (``configs``, ``dataset_info``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .cards import (
    build_provenance,
    check_score_columns,
    render_dataset_card,
    render_model_card,
    score_entries,
)
from .plots import DATA_MAP_COLUMNS, plot_data_map, plot_score_histograms

logger = logging.get_logger(__name__)

PROVENANCE_FILENAME = "hf_influence.json"
CARD_FILENAME = "README.md"
PLOTS_DIR = "plots"
DATA_MAP_FILENAME = "data_map.png"
HISTOGRAMS_FILENAME = "score_histograms.png"


def _as_dataset_dict(dataset: Any, split: str | None) -> Any:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if not dataset:
            raise ValueError("The DatasetDict has no splits: nothing to save.")
        if split is not None:
            raise ValueError("`split` names the split of a single Dataset; a DatasetDict already names its splits.")
        return dataset
    if isinstance(dataset, datasets.Dataset):
        name = split or (str(dataset.split) if dataset.split is not None else "train")
        if not re.fullmatch(r"\w+(\.\w+)*", name):
            if split is not None:
                raise ValueError(f"Split name {split!r} must be letters, digits and underscores (e.g. 'train').")
            name = "train"  # e.g. a sliced split such as "train[:10%]"
        return datasets.DatasetDict({name: dataset})
    raise TypeError(f"Expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}.")


def _record_polarities(dataset_dict: Any, entries: Sequence[Mapping[str, Any]]) -> Any:
    """Stamp each documented score column with its entry's polarity when the data does not carry one yet, so that
    selection finds it again after loading (see `hf_influence.polarity`)."""
    import datasets

    from .polarity import get_polarity, set_polarity

    out = {}
    for name, split in dataset_dict.items():
        missing = {e["column"]: e["polarity"] for e in entries
                   if e["column"] in split.column_names and e.get("polarity") is not None
                   and get_polarity(split, e["column"]) is None}
        out[name] = set_polarity(split, missing) if missing else split
    return datasets.DatasetDict(out)


def _summary_frame(summary: Any) -> Any:
    if summary is None:
        return None
    from .plots import as_frame

    frame = as_frame(summary, "summary")
    missing = [c for c in (*DATA_MAP_COLUMNS, "correctness") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"summary misses the column(s) {missing} needed for the data map (columns: {list(frame.columns)}). "
            "Pass SignalStore.summary(), or summary=None."
        )
    return frame


def _write_artifacts(
    dataset_dict: Any,
    folder: Path,
    *,
    entries: list[dict[str, Any]],
    summary: Any,
    plots: bool,
    label_column: str | None,
) -> list[dict[str, str]]:
    """Write the plots under ``folder/plots`` and return the card's plot list (relative paths)."""
    if not plots:
        return []
    import datasets

    primary_name, primary = next(iter(dataset_dict.items()))
    written = []
    source = summary
    if source is None and all(c in primary.column_names for c in (*DATA_MAP_COLUMNS, "correctness")):
        source = primary.select_columns([*DATA_MAP_COLUMNS, "correctness"]).to_pandas()
    if source is not None:
        plot_data_map(source, folder / PLOTS_DIR / DATA_MAP_FILENAME, title="Data map (dataset cartography)")
        written.append({"title": "Data map (confidence vs variability)", "path": f"{PLOTS_DIR}/{DATA_MAP_FILENAME}"})
    numeric = [
        e["column"]
        for e in entries
        if isinstance(primary.features[e["column"]], datasets.Value)
        and primary.features[e["column"]].dtype.startswith(("float", "int", "uint", "bool"))
    ]
    if numeric:
        by, class_names = None, None
        if label_column and label_column in primary.column_names:
            feature = primary.features[label_column]
            if isinstance(feature, datasets.ClassLabel):
                by, class_names = label_column, feature.names
            elif isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
                by = label_column
        frame = primary.select_columns(numeric + ([by] if by else [])).to_pandas()
        plot_score_histograms(frame, numeric, folder / PLOTS_DIR / HISTOGRAMS_FILENAME, by=by, class_names=class_names)
        title = f"Score histograms (split {primary_name}" + (f", per {by})" if by else ")")
        written.append({"title": title, "path": f"{PLOTS_DIR}/{HISTOGRAMS_FILENAME}"})
    return written


def _write_provenance(folder: Path, provenance: Mapping[str, Any]) -> None:
    (folder / PROVENANCE_FILENAME).write_text(
        json.dumps(provenance, indent=2, allow_nan=True) + "\n", encoding="utf-8"
    )


def _features_yaml(dataset_dict: Any) -> dict[str, Any]:
    """The card's ``dataset_info`` entry (the column types). `load_dataset` reads the features from it; without it the
    Arrow builder may reuse column types cached for an earlier folder of the same name, and then misses new score
    columns (datasets 5.2 keys that cache by the folder name and the relative data-file patterns)."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from huggingface_hub import DatasetCardData

    first = next(iter(dataset_dict.values()))
    card_data = DatasetCardData()
    DatasetInfosDict({"default": DatasetInfo(features=first.features)}).to_dataset_card_data(card_data)
    return card_data["dataset_info"]


def save_scored_dataset(
    dataset: Any,
    path: str | os.PathLike,
    *,
    scorers: Iterable[Any] = (),
    selection: Any = None,
    base_model: str | None = None,
    checkpoints: Iterable[Any] = (),
    seeds: Sequence[int] = (),
    summary: Any = None,
    extra: Mapping[str, Any] | None = None,
    plots: bool = True,
    split: str | None = None,
    label_column: str | None = "label",
    license: str | None = None,
    tags: Sequence[str] = (),
    task_categories: Sequence[str] | None = None,
    pretty_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a scored dataset with its dataset card, plots and provenance to a local folder.

    The folder loads back with both ``datasets.load_from_disk(path)`` and ``datasets.load_dataset(str(path))`` (a
    `DatasetDict` either way; see the module docstring for the layout). Everything is written to a temporary sibling
    folder first and moved into place at the end, so a failure leaves no half-written folder and an existing one
    untouched.

    Args:
        dataset (`Dataset` or `DatasetDict`): the scored data.
        path (`str` or `os.PathLike`): the folder to create.
        scorers (iterable of `Scorer` or dict): the score columns to document (``Scorer.card_entry()`` dicts); each
            column must exist in the data.
        selection (`SelectionReport` or `dict`, *optional*): the selection applied to produce this data.
        base_model (`str`, *optional*): the model the scores were computed with.
        checkpoints (iterable, *optional*): scoring checkpoints (fingerprinted from their weight files).
        seeds (`Sequence[int]`, *optional*): seeds of the scoring runs.
        summary (`pandas.DataFrame` or `SignalStore`, *optional*): the SignalStore summary for the data map; without
            it the data map is drawn from the data's own ``confidence/variability/correctness`` columns if present.
        extra (`Mapping`, *optional*): more provenance to record.
        plots (`bool`, defaults to `True`): draw and embed the data map and score histograms.
        split (`str`, *optional*): split name of a single `Dataset` (defaults to its ``split`` or ``"train"``).
        label_column (`str`, *optional*, defaults to `"label"`): class column for per-class histograms.
        license, tags, task_categories, pretty_name: YAML header fields of the card.
        overwrite (`bool`, defaults to `False`): replace an existing non-empty folder.

    Returns:
        `Path`: the folder.

    Example:
        ```python
        >>> from hf_influence import save_scored_dataset
        >>> from datasets import load_dataset
        >>> save_scored_dataset(scored, "out/snli-scored", scorers=[el2n_scorer], base_model="bert-base-uncased")
        >>> load_dataset("out/snli-scored")["train"].column_names
        ```
    """
    path = Path(path)
    dataset_dict = _as_dataset_dict(dataset, split)
    entries = score_entries(scorers)
    check_score_columns(dataset_dict, entries)
    dataset_dict = _record_polarities(dataset_dict, entries)
    summary_frame = _summary_frame(summary)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty. Pass overwrite=True or choose another path.")
    provenance = build_provenance(
        dataset_dict,
        scorers=entries,
        selection=selection,
        base_model=base_model,
        checkpoints=checkpoints,
        seeds=seeds,
        extra=extra,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        dataset_dict.save_to_disk(str(staging))
        plot_list = _write_artifacts(
            dataset_dict, staging, entries=entries, summary=summary_frame, plots=plots, label_column=label_column
        )
        _write_provenance(staging, provenance)
        configs = [
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"{name}/data-*.arrow"} for name in dataset_dict],
            }
        ]
        card = render_dataset_card(
            provenance,
            plots=plot_list,
            load_path=str(path),
            configs=configs,
            license=license,
            tags=tags,
            task_categories=task_categories,
            pretty_name=pretty_name,
            card_data={"dataset_info": _features_yaml(dataset_dict)},
        )
        card.save(staging / CARD_FILENAME)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info(f"Saved scored dataset ({provenance['dataset']['num_rows']} rows) with its card to {path}.")
    return path


def resolve_token(token: str | None = None) -> str:
    """The Hub token to push with: ``token``, else ``HF_TOKEN`` / the token saved by ``hf auth login``.

    Raises:
        ValueError: no token anywhere, or offline mode is on (checked before anything is uploaded).
    """
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ValueError(
            "HF_HUB_OFFLINE is set, so nothing can be pushed to the Hub. Unset HF_HUB_OFFLINE (or save locally with "
            "save_scored_dataset) and try again."
        )
    token = token or get_token()
    if not token:
        raise ValueError(
            "Pushing to the Hugging Face Hub needs a write token and none was found. Pass token=..., set the HF_TOKEN "
            "environment variable, or run `hf auth login`. Nothing was uploaded."
        )
    return token


def push_scored_dataset(
    dataset: Any,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload scored dataset with hf_influence",
    scorers: Iterable[Any] = (),
    selection: Any = None,
    base_model: str | None = None,
    checkpoints: Iterable[Any] = (),
    seeds: Sequence[int] = (),
    summary: Any = None,
    extra: Mapping[str, Any] | None = None,
    plots: bool = True,
    split: str | None = None,
    label_column: str | None = "label",
    license: str | None = None,
    tags: Sequence[str] = (),
    task_categories: Sequence[str] | None = None,
    pretty_name: str | None = None,
) -> Any:
    """Push a scored dataset to the Hub with its narrative dataset card, plots and ``hf_influence.json``.

    Two commits: ``DatasetDict.push_to_hub`` uploads the data (Parquet) and writes README.md's YAML header; then the
    card rendered here (keeping that YAML's ``configs`` and ``dataset_info``), the plots and the provenance file are
    uploaded with `HfApi.upload_folder` (``push_to_hub`` alone would leave the card body empty).

    Everything that can fail locally (token, score columns, summary, plots, card rendering) is checked or built
    before the first upload.

    Args:
        dataset (`Dataset` or `DatasetDict`): the scored data.
        repo_id (`str`): the dataset repository, ``"user/name"``.
        token (`str`, *optional*): a write token; defaults to ``HF_TOKEN`` or the saved login.
        private (`bool`, defaults to `False`): create the repository as private.
        commit_message (`str`): message of the data commit (the card commit appends ``" (card)"``).
        scorers, selection, base_model, checkpoints, seeds, summary, extra, plots, split, label_column, license,
            tags, task_categories, pretty_name: as in [`save_scored_dataset`].

    Returns:
        `huggingface_hub.CommitInfo`: the card commit.

    Raises:
        ValueError: no token (nothing is uploaded), or a declared score column is missing.
    """
    from huggingface_hub import DatasetCard, HfApi

    token = resolve_token(token)
    dataset_dict = _as_dataset_dict(dataset, split)
    entries = score_entries(scorers)
    check_score_columns(dataset_dict, entries)
    dataset_dict = _record_polarities(dataset_dict, entries)
    summary_frame = _summary_frame(summary)
    provenance = build_provenance(
        dataset_dict,
        scorers=entries,
        selection=selection,
        base_model=base_model,
        checkpoints=checkpoints,
        seeds=seeds,
        extra=extra,
    )
    card_kwargs = {
        "license": license,
        "tags": tags,
        "task_categories": task_categories,
        "pretty_name": pretty_name,
        "load_path": repo_id,
    }
    with tempfile.TemporaryDirectory(prefix="hf_influence_card_") as tmp:
        folder = Path(tmp)
        plot_list = _write_artifacts(
            dataset_dict, folder, entries=entries, summary=summary_frame, plots=plots, label_column=label_column
        )
        _write_provenance(folder, provenance)
        render_dataset_card(provenance, plots=plot_list, **card_kwargs)  # fail here, before any upload

        dataset_dict.push_to_hub(repo_id, private=private, token=token, commit_message=commit_message)
        pushed = DatasetCard.load(repo_id, repo_type="dataset", token=token).data.to_dict()
        keep = {key: pushed[key] for key in ("configs", "dataset_info") if key in pushed}
        card = render_dataset_card(provenance, plots=plot_list, card_data=keep, **card_kwargs)
        card.save(folder / CARD_FILENAME)
        info = HfApi(token=token).upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            commit_message=f"{commit_message} (card)",
        )
    logger.info(f"Pushed scored dataset and card to {repo_id}.")
    return info


def save_model_card(model_dir: str | os.PathLike, **card_kwargs: Any) -> Path:
    """Write ``README.md`` (from [`hf_influence.cards.render_model_card`]) into a fine-tuned model's folder.

    Args:
        model_dir (`str` or `os.PathLike`): the model folder (created if missing).
        **card_kwargs: arguments of `render_model_card` (base_model, dataset, selection, results, scorers, ...).

    Returns:
        `Path`: the written README.md.
    """
    target = Path(model_dir) / CARD_FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    render_model_card(**card_kwargs).save(target)
    return target


def push_model_card(
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Add model card",
    **card_kwargs: Any,
) -> str:
    """Render a model card (see `render_model_card`) and upload it as the README.md of the model repo ``repo_id``
    (created if missing, e.g. when the card is pushed before the weights).

    Args:
        repo_id (`str`): the model repository, ``"user/name"``.
        token (`str`, *optional*): a write token; defaults to ``HF_TOKEN`` or the saved login.
        private (`bool`, defaults to `False`): visibility if the repository has to be created.
        commit_message (`str`): commit message.
        **card_kwargs: arguments of `render_model_card`.

    Returns:
        `str`: the URL of the commit.

    Raises:
        ValueError: no token (nothing is uploaded).
    """
    from huggingface_hub import HfApi

    token = resolve_token(token)
    card = render_model_card(**card_kwargs)
    HfApi(token=token).create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return card.push_to_hub(repo_id, token=token, repo_type="model", commit_message=commit_message)
