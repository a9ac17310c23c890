"""Leak-free splits, computed once and persisted (nnU-Net's `splits_final.json` idea).

A stratified train/test split comes first (70/30 by default) and never changes with `k` or the
fold; stratified k-fold runs inside the training part. With a group column (patient or slide)
both steps are group-aware, so one patient is never on both sides. Augmentation happens later,
on the training subset only. A new split depends on the rows' ids, classes and groups, not on the
order of labels.csv's rows (they are put in natural id order first: img2 before img10).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import numbers
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from wbc.data.split_groups import add_unlisted, group_duplicates

SPLITS_VERSION = 2
__all__ = ["SplitError", "fingerprint", "rows_fingerprint", "make_splits", "validate_splits", "group_duplicates", "add_unlisted",
           "load_or_make_splits", "write_splits", "fold_ids"]


class SplitError(ValueError):
    """Splits cannot be made or do not fit the dataset."""


def fingerprint(ids: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def rows_fingerprint(ids: Sequence[str], labels: Sequence, groups: Sequence[str] | None = None) -> str:
    """Of the sorted (id, class, group) rows, so a persisted split is not reused once an image changed
    class or patient. Class and group enter as the partitions they make (each named by its first id),
    not by name or index: renaming a class or a patient everywhere, or reordering data.classes, keeps
    the split (the same images sit together); moving one image to another class or group does not.
    Without groups each image is its own group."""
    ids = [str(i) for i in ids]
    order = sorted(range(len(ids)), key=ids.__getitem__)

    def partition(values) -> list[str]:
        first: dict = {}
        return [first.setdefault(values[i], ids[i]) for i in order]

    labels = [str(v) for v in np.asarray(labels).tolist()]
    rows = zip([ids[i] for i in order], partition(labels), partition(list(groups) if groups is not None else ids))
    return hashlib.sha1(json.dumps(list(rows)).encode()).hexdigest()[:16]


def _natural_key(sid: str) -> tuple:
    """img2 before img10; the id itself breaks ties (img01 / img1), so the order is total."""
    return [int(t) if t.isdecimal() else t for t in re.split(r"(\d+)", sid)], sid  # isdigit() holds for '²', int() not


def _test_split(ids, labels, groups, test_fraction, seed, notes=None, k=5):
    idx = np.arange(len(ids))
    if groups is None:
        counts = Counter(labels.tolist())
        too_small = {c: n for c, n in counts.items() if n < 2}
        strata = labels
        if too_small:  # a class with one image cannot be stratified: pool such classes into one stratum
            strata = labels.copy()
            strata[np.isin(labels, list(too_small))] = -1
            if (strata == -1).sum() < 2:
                strata[strata == -1] = Counter(labels.tolist()).most_common(1)[0][0]
            if notes is not None:
                notes.append(
                    f"class index(es) {too_small} have fewer than 2 images: pooled with other rare classes (or the "
                    "largest class) for stratification, so they may sit on one side only; list them in "
                    "data.drop_classes to leave them out"
                )
        try:
            train, test = train_test_split(idx, test_size=test_fraction, stratify=strata, random_state=seed)
        except ValueError as err:  # e.g. fewer test images than classes
            raise SplitError(
                f"cannot make a stratified train/test split of {len(ids)} images in {len(counts)} classes with "
                f"data.splits.test_fraction={test_fraction}: {err}"
            ) from err
        return np.sort(train), np.sort(test)
    n_splits = max(2, round(1.0 / test_fraction))
    n_groups = len(set(groups.tolist()))
    if n_groups < n_splits:
        raise SplitError(
            f"only {n_groups} group(s) (patients/slides): a group-safe train/test split with "
            f"data.splits.test_fraction={test_fraction} needs at least {n_splits}; add groups or set "
            "data.splits.use_groups=false"
        )
    # finer folds where groups allow (10 -> test = 3 of them for 30 %), so the share is close to
    # test_fraction instead of 1/round(1/test_fraction) (33 % for 0.3)
    # (StratifiedGroupKFold needs one class with at least as many images as folds: a small set keeps n_splits)
    fine = 10 if n_groups >= 10 and max(Counter(labels.tolist()).values()) >= 10 else n_splits
    n_test = max(1, min(fine - 1, round(test_fraction * fine)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgkf = StratifiedGroupKFold(n_splits=fine, shuffle=True, random_state=seed)
        try:
            folds = list(sgkf.split(idx, labels, groups))
        except ValueError as err:  # every class smaller than the number of folds
            raise SplitError(
                f"cannot make a group-safe train/test split of {len(ids)} images in {len(set(labels.tolist()))} classes with "
                f"data.splits.test_fraction={test_fraction} ({fine} folds of groups): {err}; add images or raise test_fraction"
            ) from err
    if fine == n_splits:
        target = test_fraction * len(ids)
        train, test = min(folds, key=lambda f: abs(len(f[1]) - target))
        return np.sort(train), np.sort(test)
    test = np.concatenate([folds[i][1] for i in _test_folds(folds, labels, groups, n_test, test_fraction * len(ids), k)])
    if notes is not None and abs(len(test) - test_fraction * len(ids)) > max(1.0, 0.1 * test_fraction * len(ids)):
        notes.append(f"the test split holds {len(test)} of {len(ids)} images ({len(test) / len(ids):.0%}, data.splits.test_fraction="
                     f"{test_fraction}): the groups (patients/slides) are too uneven in size for a closer group-safe split")
    return np.setdiff1d(idx, test), np.sort(test)


def _test_folds(folds: list, labels: np.ndarray, groups: np.ndarray, n_test: int, target: float, k: int) -> tuple[int, ...]:
    """Which of the group folds form the test split: the first `n_test` (the split every version made) while they
    hold within 10 % of `target` images and leave every class found in several folds a training image; else any
    set of folds that leaves k training groups and those classes, closest to `target` (the first such in order:
    deterministic). Taking the first folds alone had put 86 of 100 images in test when one patient held 80."""
    from itertools import combinations

    sizes = [len(te) for _, te in folds]
    classes_of = [set(labels[te].tolist()) for _, te in folds]
    groups_of = [len(set(groups[te].tolist())) for _, te in folds]
    spread = {c for c in set(labels.tolist()) if sum(c in cs for cs in classes_of) > 1}  # classes in two folds or more

    def cost(chosen: tuple[int, ...]) -> tuple[int, int, float]:
        rest = [i for i in range(len(folds)) if i not in chosen]
        kept = set().union(*(classes_of[i] for i in rest))
        return max(0, k - sum(groups_of[i] for i in rest)), len(spread - kept), abs(sum(sizes[i] for i in chosen) - target)

    first = tuple(range(n_test))
    short, lost, off = cost(first)
    if not short and not lost and off <= max(1.0, 0.1 * target):
        return first
    return min((c for n in range(1, len(folds)) for c in combinations(range(len(folds)), n)), key=cost)


def make_splits(
    ids: Sequence[str],
    labels: Sequence[int],
    groups: Sequence[str] | None = None,
    test_fraction: float = 0.3,
    k: int = 5,
    seed: int = 0,
) -> dict:
    """Compute {"test": ids, "folds": [{"train": ids, "val": ids}] * k, "meta": ...}.

    The rows are put in natural id order first, so the split does not depend on labels.csv's row
    order (the shipped datasets' rows are already in that order: their splits are unchanged)."""
    ids = list(ids)
    labels = np.asarray(labels)
    if len(set(ids)) != len(ids):
        raise SplitError("sample ids are not unique")
    order = sorted(range(len(ids)), key=lambda i: _natural_key(str(ids[i])))
    ids, labels = [ids[i] for i in order], labels[order]
    if groups is not None:
        groups = list(groups)
        groups = [groups[i] for i in order]
    if not 0.0 < test_fraction < 1.0:
        raise SplitError(f"data.splits.test_fraction must be in (0, 1), got {test_fraction}")
    if k < 2:
        raise SplitError(f"data.splits.k must be >= 2, got {k}")
    groups_arr = None if groups is None else np.asarray(groups)
    notes: list[str] = []
    train_idx, test_idx = _test_split(ids, labels, groups_arr, test_fraction, seed, notes, k)
    n_units = len(set(groups_arr[train_idx])) if groups_arr is not None else len(train_idx)
    if k > n_units:
        raise SplitError(
            f"data.splits.k={k} is larger than the number of training {'groups' if groups_arr is not None else 'images'} ({n_units})"
        )
    train_counts = Counter(labels[train_idx].tolist())
    small = {int(c): n for c, n in train_counts.items() if n < k}
    if small:
        notes.append(
            f"class index(es) {small} have fewer training images than k={k}: some validation folds will not "
            "contain them (their per-class figures are NaN there and left out of fold means)"
        )
    if max(train_counts.values()) < k:  # sklearn's (Group)StratifiedKFold would fail with a bare ValueError
        raise SplitError(
            f"data.splits.k={k}: every class has fewer training images than k (largest: "
            f"{max(train_counts.values())}; per class index {dict(sorted((int(c), n) for c, n in train_counts.items()))}), "
            "so stratified k-fold is impossible; lower data.splits.k"
        )
    test_classes = set(labels[test_idx].tolist())
    no_test = sorted(int(c) for c in set(labels.tolist()) - test_classes)
    if no_test:
        notes.append(f"class index(es) {no_test} have no test images: their test figures are NaN")
    no_train = sorted(int(c) for c in set(labels.tolist()) - set(train_counts))
    if no_train:
        notes.append(f"class index(es) {no_train} have no training images (all their groups are in the test split)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if groups_arr is None:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            parts = splitter.split(train_idx, labels[train_idx])
        else:
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            parts = splitter.split(train_idx, labels[train_idx], groups_arr[train_idx])
        folds = [
            {"train": sorted(ids[i] for i in train_idx[tr]), "val": sorted(ids[i] for i in train_idx[va])}
            for tr, va in parts
        ]
    return {
        "meta": {
            "version": SPLITS_VERSION,
            "seed": seed,
            "k": k,
            "test_fraction": test_fraction,
            "grouped": groups_arr is not None,
            "n_samples": len(ids),
            "fingerprint": fingerprint(ids),
            "rows_fingerprint": rows_fingerprint(ids, labels, groups),
            "notes": notes,
        },
        "test": sorted(ids[i] for i in test_idx),
        "folds": folds,
    }


def validate_splits(splits: dict, ids: Sequence[str], where: str) -> None:
    """A splits file must cover only known ids, with disjoint test/train/val parts."""
    known = set(ids)
    if not isinstance(splits, dict) or "test" not in splits or "folds" not in splits:
        raise SplitError(f"{where}: expected a JSON object with keys 'test' and 'folds'")
    test = set(splits["test"])
    unknown = test - known
    for i, fold in enumerate(splits["folds"]):
        tr, va = set(fold.get("train", [])), set(fold.get("val", []))
        unknown |= (tr | va) - known
        if tr & va or (tr | va) & test:
            raise SplitError(f"{where}: fold {i} overlaps (train/val/test must be disjoint)")
    if unknown:
        raise SplitError(f"{where}: {len(unknown)} ids not in the dataset, e.g. {sorted(unknown)[:3]}")


def load_or_make_splits(
    path: str | Path, ids, labels, groups=None, test_fraction=0.3, k=5, seed=0, user_file: str | Path | None = None,
    duplicates: Callable[[], Sequence[Sequence[str]]] | None = None,
) -> dict:
    """Reuse the persisted splits if they fit this dataset and settings; else compute and write them.

    A user-supplied file always wins (and is only validated, never rewritten); images it does not list
    are added as :func:`add_unlisted` says (training, or their group's side), with a note. `duplicates`,
    when given, returns the clusters of duplicate images (called only when the splits are made), which
    :func:`group_duplicates` keeps on one side (whole groups, when there are groups).

    A persisted file records the fingerprint of its ids and of its (id, class, group) rows: a file
    whose rows have since changed class or group is refused (one patient could otherwise sit on both
    sides). A file written before the rows' fingerprint existed is accepted as before.
    """
    if user_file:
        user_file = Path(user_file)
        if not user_file.is_file():
            raise SplitError(f"data.splits.file={user_file}: not found")
        try:
            splits = json.loads(user_file.read_text())
        except json.JSONDecodeError as err:
            raise SplitError(f"data.splits.file={user_file}: not valid JSON ({err})") from err
        validate_splits(splits, ids, str(user_file))
        return add_unlisted(splits, list(ids), None if groups is None else list(groups), f"data.splits.file={user_file}")
    path = Path(path)
    if path.is_file():
        try:
            splits = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SplitError(f"{path}: corrupt splits file ({err}); delete it to recompute") from err
        meta = splits.get("meta", {})
        if meta.get("fingerprint") != fingerprint(list(ids)):
            raise SplitError(
                f"{path}: the dataset changed since these splits were written (different image ids); "
                "delete the file to recompute, or point data.splits.dir elsewhere"
            )
        wanted = {"k": k, "seed": seed, "test_fraction": test_fraction, "grouped": groups is not None}
        differ = {key: (meta.get(key), v) for key, v in wanted.items() if key in meta and meta[key] != v}
        if bool(meta.get("group_duplicates")) != (duplicates is not None):
            differ["group_duplicates"] = (bool(meta.get("group_duplicates")), duplicates is not None)
        if differ:
            shown = ", ".join(f"{key}: file has {old!r}, asked for {new!r}" for key, (old, new) in differ.items())
            raise SplitError(
                f"{path}: these splits were made with other settings ({shown}); delete the file to recompute, "
                "or point data.splits.dir elsewhere"
            )
        if "rows_fingerprint" in meta and meta["rows_fingerprint"] != rows_fingerprint(list(ids), labels, groups):
            raise SplitError(
                f"{path}: the dataset's labels or groups changed since this split file was written (the same image ids, "
                "but some image now has another class or patient/slide group), so reusing it could put a patient on both "
                "sides or unbalance the classes; delete the file to make a new split (its test images will differ from "
                "earlier runs'), or set data.splits.dir=<another folder> to make one there and keep this file"
            )
        validate_splits(splits, ids, str(path))
        return splits
    splits = make_splits(ids, labels, groups, test_fraction, k, seed)
    if duplicates is not None:
        splits = group_duplicates(splits, duplicates(), None if groups is None else dict(zip(ids, groups)))
    write_splits(path, splits)
    return splits


READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def write_splits(path: Path, splits: dict) -> None:
    """Write atomically (parallel fold jobs never read a half-written file); a folder that cannot be
    written (a read-only data mount) is one error pointing at data.splits.dir."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(splits, indent=1))
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in READ_ONLY_ERRNOS:
            raise
        with contextlib.suppress(OSError):  # a half-written temp file, if the write got that far
            tmp.unlink(missing_ok=True)
        raise SplitError(
            f"{path.parent} is read-only ({err.strerror or err}): cannot write the split file {path.name} there; "
            "set data.splits.dir=<a writable folder> (split files are written next to the data unless it is set)"
        ) from err


def fold_ids(splits: dict, fold: int) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) ids for one fold; `fold` must be in [0, k)."""
    k = len(splits["folds"])
    if isinstance(fold, bool) or not isinstance(fold, numbers.Integral) or not 0 <= fold < k:
        raise SplitError(f"data.fold={fold!r} is out of range: this split has k={k} folds (0..{k - 1})")
    f = splits["folds"][int(fold)]
    return list(f["train"]), list(f["val"]), list(splits["test"])
