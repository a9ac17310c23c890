"""Small id/label sets for the split tests: classes of uneven size, patients with several images."""

from __future__ import annotations

import numpy as np

CLASS_SIZES = {0: 40, 1: 23, 2: 11, 3: 6}


def class_dataset(sizes=CLASS_SIZES):
    ids, labels = [], []
    for c, n in sizes.items():
        for i in range(n):
            ids.append(f"c{c}/img{i:03d}")
            labels.append(c)
    return ids, np.array(labels)


def grouped_dataset(n_groups: int = 16, per_group: int = 5, seed: int = 0):
    """Patients with 5 images each; a patient's images share mostly one class."""
    rng = np.random.default_rng(seed)
    ids, labels, groups = [], [], []
    for g in range(n_groups):
        main = g % 3
        for i in range(per_group):
            ids.append(f"p{g:02d}_{i}")
            labels.append(main if rng.random() < 0.8 else (main + 1) % 3)
            groups.append(f"patient{g:02d}")
    return ids, np.array(labels), groups


def check_partition(splits: dict, ids: list[str]) -> None:
    test = set(splits["test"])
    rest = set(ids) - test
    vals = []
    for fold in splits["folds"]:
        train, val = set(fold["train"]), set(fold["val"])
        assert not train & val and not train & test and not val & test
        assert train | val | test == set(ids)
        vals.append(val)
    assert set().union(*vals) == rest  # every training image is validated exactly once
    assert sum(len(v) for v in vals) == len(rest)
