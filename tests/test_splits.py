"""Splits: disjoint, stratified, group-safe, reproducible, persisted once, validated when supplied."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import make_csv_dataset
from tests.helpers_splits import CLASS_SIZES, check_partition, class_dataset, grouped_dataset
from wbc.data.splits import SplitError, fold_ids, load_or_make_splits, make_splits

# --------------------------------------------------------------------------- make_splits


@pytest.mark.parametrize("k", [2, 5])
def test_parts_are_disjoint_and_cover_all_ids(k):
    ids, labels = class_dataset()
    splits = make_splits(ids, labels, k=k, seed=0)
    assert len(splits["folds"]) == k
    check_partition(splits, ids)
    assert splits["meta"]["n_samples"] == len(ids) and splits["meta"]["k"] == k


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_test_split_is_stratified(seed):
    ids, labels = class_dataset()
    splits = make_splits(ids, labels, test_fraction=0.3, k=3, seed=seed)
    test = set(splits["test"])
    per_class = Counter(int(lab) for i, lab in zip(ids, labels) if i in test)
    for c, n in CLASS_SIZES.items():
        assert abs(per_class[c] - 0.3 * n) <= 1, (c, per_class[c], n)


def test_folds_are_stratified():
    ids, labels = class_dataset({0: 50, 1: 25})
    splits = make_splits(ids, labels, k=5, seed=0)
    lab = dict(zip(ids, labels.tolist()))
    train_counts = Counter(lab[i] for i in set(ids) - set(splits["test"]))
    for fold in splits["folds"]:
        val_counts = Counter(lab[i] for i in fold["val"])
        for c, n in train_counts.items():
            assert abs(val_counts[c] - n / 5) <= 1


def test_grouped_splits_never_put_a_group_on_two_sides():
    ids, labels, groups = grouped_dataset()
    group_of = dict(zip(ids, groups))
    splits = make_splits(ids, labels, groups, k=3, seed=0)
    check_partition(splits, ids)
    assert splits["meta"]["grouped"] is True
    test_groups = {group_of[i] for i in splits["test"]}
    assert 0 < len(splits["test"]) < len(ids)
    for fold in splits["folds"]:
        train_groups = {group_of[i] for i in fold["train"]}
        val_groups = {group_of[i] for i in fold["val"]}
        assert not train_groups & test_groups
        assert not val_groups & test_groups
        assert not train_groups & val_groups


def test_grouped_test_share_is_roughly_the_fraction():
    ids, labels, groups = grouped_dataset(n_groups=30)
    splits = make_splits(ids, labels, groups, test_fraction=0.3, k=3, seed=0)
    assert 0.2 <= len(splits["test"]) / len(ids) <= 0.4


def test_same_seed_gives_identical_splits_and_other_seed_differs():
    ids, labels = class_dataset()
    a = make_splits(ids, labels, k=5, seed=3)
    b = make_splits(list(ids), labels.copy(), k=5, seed=3)
    assert a == b
    c = make_splits(ids, labels, k=5, seed=4)
    assert c["test"] != a["test"]


def test_same_seed_identical_with_groups():
    ids, labels, groups = grouped_dataset()
    assert make_splits(ids, labels, groups, k=3, seed=2) == make_splits(ids, labels, groups, k=3, seed=2)


def test_test_split_does_not_depend_on_k():
    ids, labels = class_dataset()
    tests = {k: make_splits(ids, labels, k=k, seed=0)["test"] for k in (2, 3, 5)}
    assert tests[2] == tests[3] == tests[5]


def test_grouped_test_split_does_not_depend_on_k():
    ids, labels, groups = grouped_dataset()
    tests = {k: make_splits(ids, labels, groups, k=k, seed=0)["test"] for k in (2, 3, 4)}
    assert tests[2] == tests[3] == tests[4]


def test_test_split_does_not_depend_on_fold():
    ids, labels = class_dataset()
    splits = make_splits(ids, labels, k=4, seed=0)
    tests = {tuple(fold_ids(splits, f)[2]) for f in range(4)}
    vals = [tuple(fold_ids(splits, f)[1]) for f in range(4)]
    assert len(tests) == 1
    assert len(set(vals)) == 4


def test_fold_ids_returns_that_fold():
    ids, labels = class_dataset()
    splits = make_splits(ids, labels, k=3, seed=0)
    train, val, test = fold_ids(splits, 1)
    assert train == splits["folds"][1]["train"] and val == splits["folds"][1]["val"] and test == splits["test"]
    assert fold_ids(splits, np.int64(2))[1] == splits["folds"][2]["val"]


@pytest.mark.parametrize("fold", [3, 7, -1, "0", 1.0])
def test_fold_out_of_range_names_data_fold(fold):
    ids, labels = class_dataset()
    splits = make_splits(ids, labels, k=3, seed=0)
    with pytest.raises(SplitError) as info:
        fold_ids(splits, fold)
    assert f"data.fold={fold!r}" in str(info.value) and "k=3" in str(info.value)


def test_k_larger_than_training_images():
    ids, labels = class_dataset({0: 4, 1: 4})  # 6 training images after a 30 % test split
    with pytest.raises(SplitError, match=r"data\.splits\.k=7 is larger than the number of training images \(5\)"):
        make_splits(ids, labels, k=7)


def test_k_larger_than_training_groups():
    ids, labels, groups = grouped_dataset(n_groups=6)
    with pytest.raises(SplitError, match=r"data\.splits\.k=6 is larger than the number of training groups"):
        make_splits(ids, labels, groups, k=6)


def test_small_class_gives_a_note_not_a_crash():
    ids, labels = class_dataset({0: 30, 1: 4})  # class 1: 3 training images < k = 5
    splits = make_splits(ids, labels, k=5, seed=0)
    notes = splits["meta"]["notes"]
    assert len(notes) == 1
    assert "{1: 3}" in notes[0] and "fewer training images than k=5" in notes[0]
    assert "validation folds will not contain them" in notes[0]
    check_partition(splits, ids)
    lab = dict(zip(ids, labels.tolist()))
    folds_with_class1 = [f for f in splits["folds"] if any(lab[i] == 1 for i in f["val"])]
    assert len(folds_with_class1) == 3  # the 3 images are spread over 3 of the 5 folds


def test_no_notes_when_every_class_is_large_enough():
    ids, labels = class_dataset({0: 30, 1: 30})
    assert make_splits(ids, labels, k=5)["meta"]["notes"] == []


def test_every_class_smaller_than_k_is_a_clear_error():
    ids, labels = class_dataset({0: 4, 1: 4, 2: 4})  # 9 training images, at most 3 per class
    with pytest.raises(SplitError, match=r"data\.splits\.k=4: every class has fewer training images than k"):
        make_splits(ids, labels, k=4)


def test_class_with_one_image_and_no_groups_is_pooled_and_noted():
    ids, labels = class_dataset({0: 20, 1: 1, 2: 10})
    splits = make_splits(ids, labels, k=2)  # segmentation_wbc dataset1 has a single basophil
    notes = " ".join(splits["meta"]["notes"])
    assert "{1: 1}" in notes and "fewer than 2 images" in notes and "data.drop_classes" in notes
    test, folds = set(splits["test"]), splits["folds"]
    assert all(not (set(f["train"]) | set(f["val"])) & test for f in folds)
    assert len(test) + len(folds[0]["train"]) + len(folds[0]["val"]) == len(ids)


def test_too_few_test_images_for_the_classes_is_a_clear_error():
    ids, labels = class_dataset({0: 2, 1: 2, 2: 2, 3: 2, 4: 2})  # 30 % of 10 = 3 test images < 5 classes
    with pytest.raises(SplitError, match=r"data\.splits\.test_fraction=0\.3"):
        make_splits(ids, labels, k=2)


def test_too_few_groups_is_a_clear_error():
    ids, labels = class_dataset({0: 6, 1: 6})
    groups = ["a"] * 6 + ["b"] * 6
    with pytest.raises(SplitError, match=r"only 2 group\(s\).*data\.splits\.use_groups=false"):
        make_splits(ids, labels, groups, k=2)


@pytest.mark.parametrize(("kw", "key"), [({"k": 1}, "data.splits.k"), ({"test_fraction": 1.0}, "data.splits.test_fraction")])
def test_bad_settings_name_the_key(kw, key):
    ids, labels = class_dataset()
    with pytest.raises(SplitError, match=key.replace(".", r"\.")):
        make_splits(ids, labels, **kw)


def test_duplicate_ids_rejected():
    with pytest.raises(SplitError, match="not unique"):
        make_splits(["a", "a", "b", "c"], [0, 0, 1, 1], k=2)


# --------------------------------------------------------------------------- persistence


def test_persisted_file_is_written_then_reused(tmp_path):
    ids, labels = class_dataset()
    path = tmp_path / "sub" / "splits.json"
    first = load_or_make_splits(path, ids, labels, k=3, seed=0)
    assert path.is_file() and json.loads(path.read_text()) == first
    assert not list(path.parent.glob("*.tmp*"))  # atomic write leaves no temp file
    old = path.stat().st_mtime_ns - 10_000_000_000
    os.utime(path, ns=(old, old))
    second = load_or_make_splits(path, ids, labels, k=3, seed=0)
    assert second == first
    assert path.stat().st_mtime_ns == old  # reused, not rewritten


def test_persisted_file_wins_over_recomputation(tmp_path):
    """A file made once is what every later run (and every fold job) sees."""
    ids, labels = class_dataset()
    path = tmp_path / "splits.json"
    splits = make_splits(ids, labels, k=3, seed=0)
    splits["test"], splits["folds"][0]["val"] = splits["folds"][0]["val"], splits["test"]
    for f in splits["folds"][1:]:
        f["train"] = sorted(set(f["train"]) - set(splits["test"]))
        f["val"] = sorted(set(f["val"]) - set(splits["test"]))
    path.write_text(json.dumps(splits))
    assert load_or_make_splits(path, ids, labels, k=3, seed=0)["test"] == splits["test"]


def test_changed_dataset_raises_clear_error(tmp_path):
    ids, labels = class_dataset()
    path = tmp_path / "splits.json"
    load_or_make_splits(path, ids, labels, k=3)
    with pytest.raises(SplitError) as info:
        load_or_make_splits(path, ids[:-1], labels[:-1], k=3)
    msg = str(info.value)
    assert str(path) in msg and "dataset changed" in msg and "delete the file" in msg


@pytest.mark.parametrize(("kw", "key"), [({"k": 5}, "k"), ({"seed": 1}, "seed"), ({"test_fraction": 0.2}, "test_fraction")])
def test_persisted_file_with_other_settings_raises(tmp_path, kw, key):
    ids, labels = class_dataset()
    path = tmp_path / "splits.json"
    load_or_make_splits(path, ids, labels, k=3, seed=0, test_fraction=0.3)
    args = {"k": 3, "seed": 0, "test_fraction": 0.3, **kw}
    with pytest.raises(SplitError, match=rf"other settings \({key}: file has"):
        load_or_make_splits(path, ids, labels, **args)


def test_ungrouped_file_not_reused_when_groups_appear(tmp_path):
    """Reusing ungrouped splits once patient ids are known would leak patients across splits."""
    ids, labels, groups = grouped_dataset()
    path = tmp_path / "splits.json"
    load_or_make_splits(path, ids, labels, None, k=3)
    with pytest.raises(SplitError, match=r"grouped: file has False, asked for True"):
        load_or_make_splits(path, ids, labels, groups, k=3)


def test_corrupt_persisted_file(tmp_path):
    ids, labels = class_dataset()
    path = tmp_path / "splits.json"
    path.write_text('{"test": [')
    with pytest.raises(SplitError, match=r"corrupt splits file"):
        load_or_make_splits(path, ids, labels, k=3)


def test_user_file_wins_and_is_not_rewritten(tmp_path):
    ids, labels = class_dataset()
    user = tmp_path / "mine.json"
    custom = {"test": ids[:5], "folds": [{"train": ids[5:40], "val": ids[40:]}, {"train": ids[40:], "val": ids[5:40]}]}
    user.write_text(json.dumps(custom))
    before = user.stat().st_mtime_ns
    persisted = tmp_path / "auto.json"
    got = load_or_make_splits(persisted, ids, labels, k=5, user_file=user)
    assert got == custom
    assert not persisted.exists()
    assert user.stat().st_mtime_ns == before
    assert fold_ids(got, 1) == (ids[40:], ids[5:40], ids[:5])


def test_user_file_with_unknown_id(tmp_path):
    ids, labels = class_dataset()
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"test": [*ids[:5], "ghost/img999"], "folds": [{"train": ids[5:30], "val": ids[30:]}]}))
    with pytest.raises(SplitError) as info:
        load_or_make_splits(tmp_path / "auto.json", ids, labels, user_file=user)
    msg = str(info.value)
    assert str(user) in msg and "ghost/img999" in msg and "not in the dataset" in msg


def test_user_file_with_overlap(tmp_path):
    ids, labels = class_dataset()
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"test": ids[:5], "folds": [{"train": ids[3:30], "val": ids[30:]}]}))
    with pytest.raises(SplitError, match=r"fold 0 overlaps"):
        load_or_make_splits(tmp_path / "auto.json", ids, labels, user_file=user)


@pytest.mark.parametrize(("content", "expected"), [(None, "not found"), ("[1, 2", "not valid JSON"), ("[]", "keys 'test' and 'folds'")])
def test_user_file_problems_name_the_key(tmp_path, content, expected):
    ids, labels = class_dataset()
    user = tmp_path / "mine.json"
    if content is not None:
        user.write_text(content)
    with pytest.raises(SplitError) as info:
        load_or_make_splits(tmp_path / "auto.json", ids, labels, user_file=user)
    assert str(user) in str(info.value) and expected in str(info.value)


# --------------------------------------------------------------------------- through the DataModule


def _dm(root, **kw) -> SegmentationDataModule:
    return SegmentationDataModule(root=str(root), name="tiny", classes=["a", "b"], image_size=16, preprocess={"clahe": False}, **kw)


def test_datamodule_persists_next_to_data_and_splits_ids(tmp_path):
    groups = [f"g{i // 2}" for i in range(24)]
    root = make_csv_dataset(tmp_path / "ds", {"a": 12, "b": 12}, size=16, groups=groups)
    dm = _dm(root, splits={"k": 3, "seed": 0, "test_fraction": 0.3}, fold=2)
    parts = dm.split_ids()
    assert (root / "splits_tiny_seed0_k3_test30.json").is_file()
    group_of = {f"images/{c}_{i:03d}": groups[n] for n, (c, i) in enumerate([(c, i) for c in "ab" for i in range(12)])}
    sides = [{group_of[i] for i in parts[s]} for s in ("train", "val", "test")]
    assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]
    assert sum(len(p) for p in parts.values()) == 24


def test_datamodule_fold_out_of_range(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 6, "b": 6}, size=16)
    with pytest.raises(SplitError, match=r"data\.fold=2 is out of range: this split has k=2 folds"):
        _dm(root, splits={"k": 2}, fold=2).setup("fit")


def test_datamodule_user_splits_file(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 4, "b": 4}, size=16)
    ids = [f"images/{c}_{i:03d}" for c in "ab" for i in range(4)]
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"test": [ids[0], ids[4]], "folds": [{"train": ids[1:4] + ids[5:7], "val": [ids[7]]}]}))
    dm = _dm(root, splits={"k": 5, "file": str(user)})
    dm.setup("fit")
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [5, 1, 2]
    assert not list(root.glob("splits_*.json"))


def test_a_small_grouped_set_with_ten_groups_still_splits():
    """16 images of 16 fields, 5-6 per class: too few per class for ten folds of groups, so the
    test part comes from round(1 / test_fraction) folds (a lab's first pseudo-labelled set)."""
    ids, labels = class_dataset({0: 6, 1: 5, 2: 5})
    groups = [f"field{i}" for i in range(len(ids))]
    splits = make_splits(ids, labels, groups, k=2)
    check_partition(splits, ids)
    assert 4 <= len(splits["test"]) <= 6  # about 30 % of 16


def test_every_class_smaller_than_the_folds_of_groups_is_a_clear_error():
    ids, labels = class_dataset({0: 2, 1: 2, 2: 2})  # three folds of groups, no class with three images
    with pytest.raises(SplitError, match=r"group-safe train/test split of 6 images in 3 classes .*test_fraction=0\.3 \(3 folds"):
        make_splits(ids, labels, [f"g{i}" for i in range(6)], k=2)
