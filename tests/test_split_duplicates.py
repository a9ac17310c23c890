"""Near-duplicate images kept on one side of every split (data.splits.group_duplicates)."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import make_csv_dataset
from tests.helpers_splits import check_partition, class_dataset
from wbc.data.splits import SplitError, load_or_make_splits, make_splits


def test_duplicate_clusters_move_out_of_the_test_split_and_agree_in_every_fold(tmp_path):
    from wbc.data.splits import group_duplicates

    ids, labels = class_dataset()
    splits = make_splits(ids, labels, k=3, seed=0)
    test = splits["test"]
    train0 = splits["folds"][0]["train"]
    val0 = splits["folds"][0]["val"]
    clusters = [[test[0], train0[0]], [test[1], test[2]], [train0[1], val0[0]]]  # across test, wholly test, across folds
    fixed = group_duplicates(splits, clusters)
    check_partition(fixed, ids)
    assert test[0] not in fixed["test"] and test[1] in fixed["test"] and test[2] in fixed["test"]
    for fold in fixed["folds"]:
        for c in (clusters[0], clusters[2]):
            assert len({("train" if m in fold["train"] else "val") for m in c}) == 1
    assert fixed["meta"]["group_duplicates"] and {"id": test[0], "from": "test", "to": "train", "with": train0[0]} in fixed["meta"]["duplicates_moved"]
    # persisted with the setting: a file made without it is refused when it is asked for, and vice versa
    path = tmp_path / "s.json"
    made = load_or_make_splits(path, ids, labels, k=3, seed=0, duplicates=lambda: clusters)
    assert made["test"] == fixed["test"]
    with pytest.raises(SplitError, match="group_duplicates"):
        load_or_make_splits(path, ids, labels, k=3, seed=0)


def test_datamodule_groups_a_planted_near_duplicate_across_the_test_split(tmp_path):
    """A test image re-saved blurred as JPEG next to the training images: found and moved to training."""
    import cv2

    root = make_csv_dataset(tmp_path / "d", {"a": 12, "b": 12})
    dm = SegmentationDataModule(root=str(root), layout="csv", classes=["a", "b"], image_size=32, splits={"dir": str(tmp_path / "s"), "k": 2})
    test_id = dm.split_ids()["test"][0]
    sample = next(s for s in dm.load_manifest().samples if s.id == test_id)
    img = cv2.GaussianBlur(cv2.imread(str(sample.image)), (3, 3), 0.8)
    cv2.imwrite(str(root / "images" / "copy.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    with open(root / "labels.csv", "a", newline="") as fh:
        fh.write(f"images/copy.jpg,{Path(sample.mask).relative_to(root).as_posix()},{sample.class_name},\n")
    plain = SegmentationDataModule(root=str(root), layout="csv", classes=["a", "b"], image_size=32, splits={"dir": str(tmp_path / "s2"), "k": 2})
    grouped = SegmentationDataModule(root=str(root), layout="csv", classes=["a", "b"], image_size=32,
                                     splits={"dir": str(tmp_path / "s2"), "k": 2, "group_duplicates": True})
    assert grouped.splits_path() != plain.splits_path()
    copy_id = next(s.id for s in grouped.load_manifest().samples if s.image.name == "copy.jpg")
    meta = grouped.load_splits()["meta"]
    assert any({copy_id, test_id} <= set(c) for c in meta["duplicate_clusters"])
    ids = grouped.split_ids()
    assert (copy_id in ids["test"]) == (test_id in ids["test"])


def test_copies_of_one_field_under_two_classes_are_warned_about(tmp_path, caplog):
    """A pixel-identical copy filed under another class: grouped on one side (as before), and now a warning
    naming both labels (it was an INFO line listing the cluster: one label is wrong, and training sees both)."""
    import shutil

    from tests.helpers_data import make_folder_dataset

    root = make_folder_dataset(tmp_path / "d", {"a": 8, "b": 8}, size=16)
    shutil.copy(root / "images/a/a_000.png", root / "images/b/copy_of_a0.png")
    shutil.copy(root / "masks/a/a_000.png", root / "masks/b/copy_of_a0.png")
    dm = SegmentationDataModule(root=str(root), name="duplab", layout="folders", classes=["a", "b"], image_size=16,
                                splits={"dir": str(tmp_path / "s"), "k": 2, "group_duplicates": True})
    with caplog.at_level("WARNING", logger="wbc"):
        dm.load_splits()
    warned = [r.getMessage() for r in caplog.records if "carry different classes" in r.getMessage()]
    assert len(warned) == 1 and "'a/a_000': 'a'" in warned[0] and "'b/copy_of_a0': 'b'" in warned[0]
