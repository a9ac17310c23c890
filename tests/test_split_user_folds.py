"""A user's split file (data.splits.file) that lists an image in some folds but not in others: the
image is not silently missing from those folds' training or validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wbc.data.splits import fold_ids, load_or_make_splits


def test_an_image_missing_from_one_fold_trains_there_and_is_named(tmp_path: Path) -> None:
    ids = [f"img{i}" for i in range(8)]
    user = tmp_path / "splits.json"
    user.write_text(json.dumps({"test": ["img0"], "folds": [
        {"train": ["img2", "img3", "img4", "img5", "img6", "img7"], "val": ["img1"]},
        {"train": ["img1", "img3", "img4", "img5"], "val": ["img6", "img7"]},  # img2 forgotten here
    ]}))
    s = load_or_make_splits(tmp_path / "unused.json", ids, np.zeros(8, int), user_file=user, k=2)
    train, val, test = fold_ids(s, 1)
    assert "img2" in train and sorted(train + val + test) == ids
    assert fold_ids(s, 0)[0] == ["img2", "img3", "img4", "img5", "img6", "img7"]  # fold 0 unchanged
    assert s["meta"]["unlisted"]["missing_from_folds"] == {"1": ["img2"]}
    note = " ".join(s["meta"]["notes"])
    assert "img2" in note and "fold(s) [1]" in note and str(user) in note


def test_a_fold_gap_whose_group_is_validated_there_joins_validation(tmp_path: Path) -> None:
    ids = ["f1/a", "f1/b", "f2/a", "f3/a", "f4/a"]
    groups = ["f1", "f1", "f2", "f3", "f4"]
    user = tmp_path / "splits.json"
    user.write_text(json.dumps({"test": ["f4/a"], "folds": [
        {"train": ["f1/a", "f1/b", "f2/a"], "val": ["f3/a"]},
        {"train": ["f2/a", "f3/a"], "val": ["f1/a"]},  # f1/b forgotten; its field is validated here
    ]}))
    s = load_or_make_splits(tmp_path / "unused.json", ids, np.zeros(5, int), groups, user_file=user, k=2)
    train, val, _ = fold_ids(s, 1)
    assert sorted(val) == ["f1/a", "f1/b"] and "f1/b" not in train
