"""User rows from DEALRec folders and MovieLens-1M, checked against independent re-parses of the raw text files."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from hf_influence.rec.data import (
    ItemVocab,
    load_dealrec_folder,
    load_items,
    load_movielens_1m,
    read_movielens_ratings,
    split_by_global_time,
    write_dealrec_folder,
)

N_USERS = 300


def _raw_lines(path, n):
    """Independent parse: first n lines as lists of ints (user id first)."""
    with open(path) as handle:
        return [[int(t) for t in line.split()] for _, line in zip(range(n), handle)]


def _raw_titles(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return {int(row[0]): row[1] for row in reader}


@pytest.mark.parametrize("name", ["dealrec/games", "dealrec/microlens-50k"])
def test_real_folder_matches_raw_files(shared_dir, name):
    folder = shared_dir / "data" / name
    users = load_dealrec_folder(folder, max_users=N_USERS)
    train = _raw_lines(folder / "sequential_train.txt", N_USERS)
    valid = _raw_lines(folder / "sequential_valid.txt", N_USERS)
    test = _raw_lines(folder / "sequential_test.txt", N_USERS)
    titles = _raw_titles(folder / "items.tsv")
    assert load_items(folder) == {k: v.strip() for k, v in titles.items()}

    # expected rows from the raw lines
    exp_train = [(i, t[0], t[1:-1], t[-1:]) for i, t in enumerate(train) if len(t) >= 3]
    exp_valid = [(i, t[0], t[1:], v[1:2]) for i, (t, v) in enumerate(zip(train, valid)) if len(v) >= 2 and len(t) >= 2]
    exp_test = [
        (i, t[0], t[1:] + v[1:], s[1:])
        for i, (t, v, s) in enumerate(zip(train, valid, test))
        if len(s) >= 2 and len(t) + len(v) >= 3
    ]
    for split, expected in [("train", exp_train), ("valid", exp_valid), ("test", exp_test)]:
        ds = users[split]
        assert len(ds) == len(expected) > 0
        assert ds["example_id"] == [e[0] for e in expected]
        assert ds["user_id"] == [e[1] for e in expected]
        assert ds["history_item_ids"] == [e[2] for e in expected]
        assert ds["target_item_ids"] == [e[3] for e in expected]
        for row in ds.select(range(0, len(ds), 17)):
            assert row["history_titles"] == [" ".join(titles[i].split()) for i in row["history_item_ids"]]
            assert row["target_titles"] == [" ".join(titles[i].split()) for i in row["target_item_ids"]]
        assert ds.features["example_id"].dtype == "int64"

    # interaction counts: train split holds all train interactions of users with >= 2 train items; test targets hold
    # all test interactions of users with a non-empty history
    pairs = zip(users["train"]["history_item_ids"], users["train"]["target_item_ids"])
    assert sum(len(h) + len(t) for h, t in pairs) == sum(len(t) - 1 for t in train if len(t) >= 3)
    assert sum(len(t) for t in users["test"]["target_item_ids"]) == sum(
        len(s) - 1 for t, v, s in zip(train, valid, test) if len(t) + len(v) >= 3
    )
    # the same user keeps the same example id in every split
    ids = {}
    for split in users:
        for uid, eid in zip(users[split]["user_id"], users[split]["example_id"]):
            assert ids.setdefault(uid, eid) == eid


def _write_folder(tmp_path, train, valid, test, items):
    users = sorted(set(train) | set(valid) | set(test))
    return write_dealrec_folder(tmp_path / "data", users, train, valid, test, items)


def test_skips_counted_and_bad_input(tmp_path, caplog):
    items = {1: "A", 2: "B", 3: "C", 4: "D"}
    train = {10: [1, 2, 3], 11: [4], 12: []}
    valid = {10: [4], 11: [], 12: [1]}
    test = {10: [1, 2], 11: [3], 12: []}
    folder = _write_folder(tmp_path, train, valid, test, items)
    users = load_dealrec_folder(folder)
    # user 11 has one train item (empty train history); user 12 has no train items at all
    assert users["train"]["user_id"] == [10]
    assert users["valid"]["user_id"] == [10]  # 11: no valid target, 12: empty history
    assert users["test"]["user_id"] == [10, 11]
    assert users["test"]["history_item_ids"] == [[1, 2, 3, 4], [4]]
    assert users["test"]["target_titles"] == [["A", "B"], ["C"]]
    assert users["test"]["example_id"] == [0, 1]
    assert load_dealrec_folder(folder, max_users=1)["test"]["user_id"] == [10]

    # unknown item ids: a clear error with the count
    folder = _write_folder(tmp_path, {1: [1, 7, 8]}, {1: [9]}, {1: []}, items)
    with pytest.raises(ValueError, match="3 item ids .* not in the item catalogue"):
        load_dealrec_folder(folder)

    # missing titles: error by default, placeholder on request
    folder = _write_folder(tmp_path, {1: [1, 2, 3]}, {1: []}, {1: []}, {1: "A", 2: "", 3: "C"})
    with pytest.raises(ValueError, match="1 items used in the sequences have an empty title"):
        load_dealrec_folder(folder)
    users = load_dealrec_folder(folder, missing_titles="placeholder")
    assert users["train"]["history_titles"] == [["A", "item 2"]]
    with pytest.raises(ValueError, match="choose one of"):
        load_dealrec_folder(folder, missing_titles="drop")


def test_movielens_global_time_split():
    from hf_influence.paths import packaged_movielens_dir

    folder = packaged_movielens_dir("ml-1m")
    # independent parse of ratings.dat
    stamps = {}
    with open(folder / "ratings.dat", encoding="latin-1") as handle:
        for line in handle:
            u, i, _, t = line.strip().split("::")
            stamps[(int(u), int(i))] = int(t)
    n = len(stamps)
    frame = read_movielens_ratings(folder)
    assert len(frame) == n == 1_000_209
    train, valid, test, user_ids = split_by_global_time(frame)
    sizes = [sum(map(len, s.values())) for s in (train, valid, test)]
    assert sizes == [round(0.8 * n), round(0.9 * n) - round(0.8 * n), n - round(0.9 * n)]

    def times(split):
        return np.array([stamps[(u, i)] for u, seq in split.items() for i in seq])

    assert times(train).max() <= times(valid).min()
    assert times(valid).max() <= times(test).min()
    for seq_user, seq in list(train.items())[:200]:  # each user's sequence is chronological
        assert np.all(np.diff([stamps[(seq_user, i)] for i in seq]) >= 0)

    users = load_movielens_1m(folder)
    row = users["valid"][0]
    u = row["user_id"]
    assert row["history_item_ids"] == train[u] and row["target_item_ids"] == [valid[u][0]]
    # a user is a train sample iff they have >= 2 train interactions
    assert len(users["train"]) == sum(len(seq) >= 2 for seq in train.values())
    assert users["train"]["example_id"] == sorted(users["train"]["example_id"])
    assert len(users["test"]) == sum(1 for u in test if len(train.get(u, [])) + len(valid.get(u, [])) >= 1)
    with open(folder / "movies.dat", encoding="latin-1") as handle:
        title_of = {int(line.split("::")[0]): line.split("::")[1] for line in handle}
    assert row["target_titles"] == [title_of[row["target_item_ids"][0]]]


def test_item_vocab_round_trip():
    vocab = ItemVocab.from_items({30: "c", 10: "a", 20: "b"})
    assert vocab.num_items == 3
    assert vocab.encode([10, 20, 30]) == [1, 2, 3]
    assert vocab.decode([3, 1]) == [30, 10]
    with pytest.raises(ValueError, match="1 item ids are not in the vocabulary"):
        vocab.encode([10, 99])
    with pytest.raises(ValueError, match="0 is padding"):
        vocab.decode([0])
