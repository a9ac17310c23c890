"""Splits stay leak-free when the data around them changes: duplicate images move with their whole
patient, a persisted split is refused once rows changed class or group, a user's split file that
misses rows never drops them, a new split does not depend on labels.csv's row order, and a grouped
k-fold that cannot stratify is one SplitError."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers_splits import check_partition, class_dataset, grouped_dataset
from wbc.data.splits import SplitError, fold_ids, load_or_make_splits, make_splits


def _sides(splits: dict, ids) -> list[dict[str, str]]:
    """Per fold: {id: test | train | val}."""
    out = []
    for f in splits["folds"]:
        side = {i: "test" for i in splits["test"]}
        side.update({i: "train" for i in f["train"]})
        side.update({i: "val" for i in f["val"]})
        out.append(side)
    return out


def _straddling(splits: dict, ids, groups) -> list:
    group_of = dict(zip(ids, groups))
    bad = []
    for k, side in enumerate(_sides(splits, ids)):
        where: dict[str, set] = {}
        for i, s in side.items():
            where.setdefault(group_of[i], set()).add(s)
        bad += [(k, g, sorted(s)) for g, s in where.items() if len(s) > 1]
    return bad


# --------------------------------------------------------------------------- duplicates move with their patient


def test_a_duplicate_across_the_test_split_moves_its_whole_patient(tmp_path: Path):
    """A copy of one field filed under two patients (one in test, one in training): the test patient
    joins training whole, never one image of it."""
    ids = [f"img{i:02d}" for i in range(40)]
    labels = np.array([i % 2 for i in range(40)])
    groups = [f"p{i // 4}" for i in range(40)]
    plain = make_splits(ids, labels, groups, k=3, seed=0)
    test = sorted(plain["test"])
    train0 = next(i for i in ids if i not in plain["test"])
    clusters = [[test[0], train0]]
    splits = load_or_make_splits(tmp_path / "s.json", ids, labels, groups, k=3, seed=0, duplicates=lambda: clusters)
    check_partition(splits, ids)
    assert _straddling(splits, ids, groups) == []
    group_of = dict(zip(ids, groups))
    moved_patient = {i for i in ids if group_of[i] == group_of[test[0]]}
    assert not moved_patient & set(splits["test"])
    assert {m["id"] for m in splits["meta"]["duplicates_moved"] if m.get("from") == "test"} == moved_patient


def test_without_groups_duplicates_still_move_alone():
    """Data without a group column: each image is its own group, the moves are the single images'."""
    from wbc.data.splits import group_duplicates

    ids, labels = class_dataset()
    splits = make_splits(ids, labels, k=3, seed=0)
    test, train0 = splits["test"], splits["folds"][0]["train"]
    fixed = group_duplicates(splits, [[test[0], train0[0]]])
    assert set(splits["test"]) - set(fixed["test"]) == {test[0]}
    one_each = group_duplicates(splits, [[test[0], train0[0]]], {i: i for i in ids})  # each image its own group: the same moves
    assert (one_each["test"], one_each["folds"]) == (fixed["test"], fixed["folds"])


def test_datamodule_keeps_a_patient_whole_when_its_image_has_a_copy_in_training(tmp_path: Path):
    """The audit's end-to-end case: labels.csv with a group column, one image re-saved under another patient."""
    from PIL import Image

    from datamodules.segmentation import SegmentationDataModule

    root = tmp_path / "lab"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(40)]
    imgs[39] = imgs[0].copy()  # img39 (patient p9) is a copy of img00 (patient p0)
    rows = []
    for i in range(40):
        m = np.zeros((32, 32), np.uint8)
        m[8:20, 8:20] = 255
        Image.fromarray(imgs[i]).save(root / f"images/img{i:02d}.png")
        Image.fromarray(m).save(root / f"masks/img{i:02d}.png")
        rows.append([f"images/img{i:02d}.png", f"masks/img{i:02d}.png", "ab"[i % 2], f"p{i // 4}"])
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "mask", "class_name", "group"])
        w.writerows(rows)
    encoding = {"mode": "grey", "background": [[0, 0]], "cytoplasm": [], "nucleus": [[255, 255]]}
    moved_any = False
    for seed in range(10):
        dm = SegmentationDataModule(root=str(root), name="lab", classes=None, image_size=32, mask_encoding=encoding,
                                    splits={"seed": seed, "k": 3, "group_duplicates": True, "dir": str(tmp_path / "splits")})
        splits = dm.load_splits()
        samples = dm.load_manifest().samples
        assert _straddling(splits, [s.id for s in samples], [s.group for s in samples]) == [], seed
        moved_any |= bool(splits["meta"]["duplicates_moved"])
    assert moved_any  # the copy did cross a split for some seed


# --------------------------------------------------------------------------- the persisted split's rows


def test_regrouped_or_relabelled_rows_refuse_the_persisted_split(tmp_path: Path):
    ids = [f"img{i:02d}" for i in range(40)]
    labels = np.array([i % 2 for i in range(40)])
    groups = [f"p{i // 4}" for i in range(40)]
    path = tmp_path / "s.json"
    first = load_or_make_splits(path, ids, labels, groups, k=3, seed=0)
    test_patient = groups[ids.index(first["test"][0])]
    train_img = next(i for i in ids if i not in first["test"])
    regrouped = [test_patient if i == train_img else g for i, g in zip(ids, groups)]
    relabelled = labels.copy()
    relabelled[0] = 1 - relabelled[0]
    for new_labels, new_groups in ((labels, regrouped), (relabelled, groups)):
        with pytest.raises(SplitError) as info:
            load_or_make_splits(path, ids, new_labels, new_groups, k=3, seed=0)
        msg = str(info.value)
        assert str(path) in msg and "labels or groups changed" in msg and "delete the file" in msg and "data.splits.dir" in msg
    # renaming a class or a patient everywhere (or reordering data.classes) is the same split
    renamed = [g.replace("p", "patient") for g in groups]
    assert load_or_make_splits(path, ids, 1 - labels, renamed, k=3, seed=0) == first


def test_a_split_file_written_before_the_rows_fingerprint_is_still_used(tmp_path: Path):
    ids, labels, groups = grouped_dataset()
    path = tmp_path / "s.json"
    old = make_splits(ids, labels, groups, k=3, seed=0)
    del old["meta"]["rows_fingerprint"]
    path.write_text(json.dumps(old))
    before = path.read_bytes()
    assert load_or_make_splits(path, ids, 1 - labels, groups[::-1], k=3, seed=0) == old
    assert path.read_bytes() == before  # never rewritten


# --------------------------------------------------------------------------- a user's split file


def test_rows_a_user_split_file_does_not_list_are_trained_on_and_named(tmp_path: Path):
    """predict.py's pseudo_dataset: the lab labels a few more cells into its labels.csv; they train."""
    old = [f"images/c{i:02d}" for i in range(9)]
    user = tmp_path / "splits.json"
    user.write_text(json.dumps({"test": old[:1], "folds": [{"train": old[2:], "val": old[1:2]}]}))
    before = user.read_bytes()
    new = [*old, "images/added_by_hand_1", "images/added_by_hand_2"]
    s = load_or_make_splits(tmp_path / "unused.json", new, np.zeros(len(new), int), user_file=user, k=5)
    train, val, test = fold_ids(s, 0)
    assert set(train) == set(old[2:]) | {"images/added_by_hand_1", "images/added_by_hand_2"} and val == old[1:2] and test == old[:1]
    note = " ".join(s["meta"]["notes"])
    assert "2 image(s)" in note and "images/added_by_hand_1" in note and str(user) in note and "train" in note
    assert user.read_bytes() == before and not (tmp_path / "unused.json").exists()


def test_an_unlisted_row_takes_its_groups_side(tmp_path: Path):
    """A cell cut from a field whose other cells are in the test split joins them there (one field, one side)."""
    ids = ["f1/a", "f1/b", "f2/a", "f3/a", "f3/b", "f4/a"]
    groups = ["f1", "f1", "f2", "f3", "f3", "f4"]
    user = tmp_path / "splits.json"
    user.write_text(json.dumps({"test": ["f1/a"], "folds": [{"train": ["f2/a", "f4/a"], "val": ["f3/a"]}]}))
    s = load_or_make_splits(tmp_path / "unused.json", ids, np.zeros(6, int), groups, user_file=user)
    train, val, test = fold_ids(s, 0)
    assert sorted(test) == ["f1/a", "f1/b"] and sorted(val) == ["f3/a", "f3/b"] and sorted(train) == ["f2/a", "f4/a"]
    assert s["meta"]["unlisted"] == {"train": [], "test": ["f1/b"], "val_in_some_fold": ["f3/b"]}


# --------------------------------------------------------------------------- order and small sets


def test_a_new_split_does_not_depend_on_the_row_order():
    ids = [f"img{i:03d}" for i in range(60)]
    labels = np.array([i % 3 for i in range(60)])
    groups = [f"p{i // 3}" for i in range(60)]
    perm = np.random.default_rng(1).permutation(60)
    for g in (None, groups):
        a = make_splits(ids, labels, g, k=5, seed=0)
        b = make_splits([ids[i] for i in perm], labels[perm], None if g is None else [g[i] for i in perm], k=5, seed=0)
        assert a == b


def test_natural_order_keeps_the_shipped_row_order():
    """segmentation_wbc's rows run dataset1/1, dataset1/2, ..., dataset1/10: its split was made in that order."""
    from wbc.data.splits import _natural_key

    ids = [f"dataset{d}/{i}" for d in (1, 2) for i in range(1, 120)] + ["Im001_1", "Im010_0", "images/img_0002"]
    assert sorted(ids[:238], key=_natural_key) == ids[:238]
    assert sorted(["img1", "img01", "img10", "img2"], key=_natural_key) == ["img01", "img1", "img2", "img10"]


def test_grouped_k_fold_with_every_class_smaller_than_k_is_a_clear_error():
    ids = [f"img{i:02d}" for i in range(12)]
    labels = np.tile(np.arange(4), 3)  # 3 images per class; about 2 per class left for training
    with pytest.raises(SplitError, match=r"data\.splits\.k=3: every class has fewer training images than k") as info:
        make_splits(ids, labels, [f"patient{i}" for i in range(12)], k=3, seed=0)
    assert "per class index" in str(info.value)


def test_the_datamodule_trains_on_rows_added_after_the_split_file_and_warns(tmp_path: Path, caplog):
    """README: label a few more cells into a pseudo_dataset's labels.csv, then run the printed train.py
    command (data.splits.file=<its splits.json>): the added cells train, and the log names them."""
    import logging

    from datamodules.segmentation import SegmentationDataModule
    from tests.helpers_data import make_csv_dataset

    root = make_csv_dataset(tmp_path / "cells", {"a": 4, "b": 4}, size=16, groups=[f"field{i}" for i in range(8)])
    listed = [f"images/{c}_{i:03d}" for c in "ab" for i in range(3)]
    user = tmp_path / "splits.json"
    user.write_text(json.dumps({"test": [listed[0], listed[3]], "folds": [{"train": [listed[2], listed[5]], "val": [listed[1], listed[4]]}]}))
    dm = SegmentationDataModule(root=str(root), name="cells", classes=["a", "b"], image_size=16, splits={"file": str(user)})
    with caplog.at_level(logging.WARNING):
        ids = dm.split_ids()
    assert sorted(ids["train"]) == ["images/a_002", "images/a_003", "images/b_002", "images/b_003"]
    assert "2 image(s) of the dataset are not listed" in caplog.text and "images/a_003" in caplog.text
