"""Which way a score column points, kept with the column itself.

Every score has a polarity: `"higher_is_harder"` (EL2N, GraNd, VoG, forgetting, loss, ...), `"higher_is_easier"`
(AUM, confidence, PVI, ...), or none at all for scores with no hard/easy reading (gradient similarity to a target
set: "most similar" is neither hard nor easy). Selection reads it: `select_by_score(ds, "aum", 0.5, "hardest")`
keeps the lowest-AUM half because AUM is higher-is-easier.

The polarity travels in the column's `datasets.Value` feature (its `id` field, `"hf_influence:<polarity>"`), so it
survives `map`, `select`, `filter`, `concatenate_datasets`, `save_to_disk`/`load_from_disk`, Parquet and the Hub
without any side file. Scorers set it when they add their column; `set_polarity` sets it on a column you computed
yourself. A round trip through pandas drops dataset features (and with them the polarity): mark the column again
with `set_polarity`, or read it back from a saved scored dataset's `hf_influence.json` (`polarities_from_provenance`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HIGHER_IS_HARDER = "higher_is_harder"
HIGHER_IS_EASIER = "higher_is_easier"
POLARITIES: tuple[str, ...] = (HIGHER_IS_HARDER, HIGHER_IS_EASIER)
_ID_PREFIX = "hf_influence:"


def check_polarity(polarity: str | None, *, allow_none: bool = True) -> str | None:
    """Return `polarity` after checking it is one of `POLARITIES` (or None when `allow_none`)."""
    if polarity is None and allow_none:
        return None
    if polarity not in POLARITIES:
        raise ValueError(f"Unknown polarity {polarity!r}; valid polarities are {', '.join(POLARITIES)}"
                         + (" (or None for a score with no hard/easy reading)." if allow_none else "."))
    return polarity


def flip_polarity(polarity: str | None) -> str | None:
    """The polarity of the negated score."""
    if polarity is None:
        return None
    return HIGHER_IS_EASIER if polarity == HIGHER_IS_HARDER else HIGHER_IS_HARDER


def score_feature(polarity: str | None, dtype: str = "float32") -> Any:
    """The `datasets.Value` of a score column carrying `polarity` (a plain `Value(dtype)` when None)."""
    import datasets

    check_polarity(polarity)
    return datasets.Value(dtype, id=None if polarity is None else f"{_ID_PREFIX}{polarity}")


def get_polarity(dataset: Any, column: str) -> str | None:
    """The polarity recorded on `column` of `dataset`, or None when the column carries none.

    Args:
        dataset (`datasets.Dataset`): a dataset with `column`.
        column (`str`): a score column.

    Raises:
        ValueError: if the column is not in the dataset.
    """
    if column not in dataset.column_names:
        raise ValueError(f"Column {column!r} is not in the dataset; columns are {dataset.column_names}.")
    feature = dataset.features[column]
    ident = getattr(feature, "id", None)
    if isinstance(ident, str) and ident.startswith(_ID_PREFIX):
        value = ident[len(_ID_PREFIX):]
        return value if value in POLARITIES else None
    return None


def set_polarity(dataset: Any, column: str | Mapping[str, str | None], polarity: str | None = None) -> Any:
    """Record the polarity of one or more numeric columns (returns a new dataset; the data is not rewritten).

    Args:
        dataset (`datasets.Dataset`): the dataset.
        column (`str` or `Mapping[str, str | None]`): a column name, or `{column: polarity}` for several.
        polarity (`str`, *optional*): `"higher_is_harder"`, `"higher_is_easier"` or None (no hard/easy reading),
            when `column` is a name.

    Example:
        ```python
        >>> from datasets import Dataset
        >>> ds = set_polarity(Dataset.from_dict({"margin": [0.5, -1.0]}), "margin", "higher_is_easier")
        >>> get_polarity(ds, "margin")
        'higher_is_easier'
        ```
    """
    mapping = dict(column) if isinstance(column, Mapping) else {column: polarity}
    features = dataset.features.copy()
    for name, value in mapping.items():
        if name not in dataset.column_names:
            raise ValueError(f"Column {name!r} is not in the dataset; columns are {dataset.column_names}.")
        dtype = getattr(features[name], "dtype", None)
        if dtype is None or not (dtype.startswith("float") or dtype.startswith("int")):
            raise ValueError(f"Column {name!r} holds {features[name]!r}, not numbers; only score columns have a "
                             "polarity.")
        features[name] = score_feature(value, dtype)
    return dataset.cast(features)


def polarities_from_provenance(provenance: Mapping[str, Any]) -> dict[str, str | None]:
    """`{column: polarity}` of the score entries of a saved scored dataset's provenance (`hf_influence.json`)."""
    return {entry["column"]: entry.get("polarity") for entry in provenance.get("scores", []) if "column" in entry}
