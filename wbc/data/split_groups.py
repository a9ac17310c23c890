"""Changes to a made or supplied split that keep patients (groups) whole: duplicate images kept on one
side (`group_duplicates`) and the images a user's split file does not list (`add_unlisted`).

Pure functions on the split's JSON shape ({"test": ids, "folds": [{"train": ids, "val": ids}], "meta"});
wbc.data.splits calls them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SHOWN = 5  # ids named in a message before "... (N in all)"


class DisjointSets:
    """Union-find over ids: the copies of one field (wbc.audit.duplicates) and the images that must
    move together in a split share a root."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _components(clusters: Sequence[Sequence[str]], groups: Mapping[str, str]) -> list[list[str]]:
    """The sets of ids that must sit on one side: each duplicate cluster with every image of its
    members' groups, merged where they share an image or a group (a copy filed under two patients
    joins the two patients). Sorted, in the order of their first cluster."""
    sets = DisjointSets()
    find, union, parent = sets.find, sets.union, sets.parent

    members_of: dict[str, list[str]] = {}
    for sid, g in groups.items():
        members_of.setdefault(g, []).append(sid)
    for cluster in clusters:
        cluster = list(cluster)
        for m in cluster:
            union(cluster[0], m)
            for other in members_of.get(groups.get(m, m), [m]):
                union(m, other)
    seen: dict[str, list[str]] = {}
    for cluster in clusters:
        for m in cluster:
            seen.setdefault(find(m), [])
    for x in list(parent):
        root = find(x)
        if root in seen:
            seen[root].append(x)
    return [sorted(set(v)) for v in seen.values()]


def group_duplicates(splits: dict, clusters: Sequence[Sequence[str]], groups: Mapping[str, str] | None = None) -> dict:
    """Put every cluster of duplicate images (exact or near copies of one field, wbc.audit) on one
    side of the split: a cluster with members in the test split and in the training part moves its
    test members to the training part (the test split stays copies-free), and in every fold the
    members follow the first training member (train or val). Clusters wholly in the test split stay.
    The moves are listed in meta.duplicates_moved.

    With `groups` ({id: patient or slide}, a grouped split), an image never moves alone: its whole
    group moves with it (a cluster whose copies sit under two patients joins the two), so no patient
    ends up on two sides. Without groups each image is its own group (the moves are those of single
    images, as before groups were taken into account)."""
    units = _components(clusters, groups) if groups is not None else [sorted(set(c)) for c in clusters]
    test = set(splits["test"])
    folds = [{"train": set(f["train"]), "val": set(f["val"])} for f in splits["folds"]]
    moved: list[dict] = []

    def of(m: str) -> dict:  # a grouped split's moves name the group too
        return {"group": groups.get(m, m)} if groups is not None else {}

    for members in units:
        outside = [m for m in members if m not in test]
        if not outside:  # wholly in the test split
            continue
        anchor = outside[0]
        for m in members:
            if m in test:
                test.discard(m)
                moved.append({"id": m, **of(m), "from": "test", "to": "train", "with": anchor})
        for k, f in enumerate(folds):
            side = "train" if anchor in f["train"] else "val"
            other = "val" if side == "train" else "train"
            for m in members:
                if m in f[other]:
                    f[other].discard(m)
                    moved.append({"id": m, **of(m), "fold": k, "from": other, "to": side, "with": anchor})
                f[side].add(m)
    return _with_moves(splits, test, folds, clusters, moved)


def _with_moves(splits: dict, test: set, folds: list[dict], clusters, moved: list[dict]) -> dict:
    out = dict(splits)
    out["test"] = sorted(test)
    out["folds"] = [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in folds]
    out["meta"] = {**splits.get("meta", {}), "group_duplicates": True, "duplicate_clusters": [sorted(c) for c in clusters], "duplicates_moved": moved}
    return out


def add_unlisted(splits: dict, ids: Sequence[str], groups: Sequence[str] | None, where: str) -> dict:
    """Put the dataset's images that a user's split file (data.splits.file) does not list into it,
    never leaving them out silently: each trains in every fold, unless its group (patient, slide, or
    the source field of a cut-out cell) already has listed images, whose side it then takes (the test
    split, or a fold's validation part), so no group straddles. An image listed in some folds but
    missing from others joins those others the same way (their training part, or validation where its
    group is validated). A note naming them (the first few and the count) goes into meta.notes, which
    training logs as a warning; meta.unlisted lists them all (`missing_from_folds`: fold -> ids).

    Why not refuse: predict.py's pseudo_dataset / annotated_dataset write a labels.csv with a
    splits.json, and the README tells a lab to label a few more cells into that labels.csv (a class the
    model never called): those rows are meant to be trained on, with the same train.py command.
    The file itself is never rewritten; the split returned has them."""
    test = set(splits["test"])
    in_fold = [set(f.get("train", [])) | set(f.get("val", [])) for f in splits["folds"]]
    listed = set(test).union(*in_fold)
    missing = [i for i in ids if i not in listed]
    partly = {k: [i for i in ids if i in listed and i not in test and i not in fold] for k, fold in enumerate(in_fold)}
    partly = {k: v for k, v in partly.items() if v}
    if not missing and not partly:
        return splits
    group_of = dict(zip(ids, groups)) if groups is not None else {}
    test_groups = {group_of[i] for i in test if i in group_of}
    to_test = [i for i in missing if i in group_of and group_of[i] in test_groups]
    rest = [i for i in missing if not (i in group_of and group_of[i] in test_groups)]
    folds, to_val = [], set()
    for k, f in enumerate(splits["folds"]):
        train, val = list(f.get("train", [])), list(f.get("val", []))
        val_groups = {group_of[i] for i in val if i in group_of} - {group_of[i] for i in train if i in group_of}
        lacking = rest + partly.get(k, [])
        v = {i for i in lacking if i in group_of and group_of[i] in val_groups}
        to_val |= v & set(rest)
        folds.append({"train": sorted(train + [i for i in lacking if i not in v]), "val": sorted(val + sorted(v))})
    notes = []
    if missing:
        shown = ", ".join(missing[:SHOWN]) + (f", ... ({len(missing)} in all)" if len(missing) > SHOWN else "")
        where_to = "they train in every fold"
        if to_test or to_val:
            where_to = (f"they train in every fold, except {len(to_test)} in the test split and {len(to_val)} validated in some fold "
                        "(their patient/field already sits there)")
        notes.append(f"{where}: {len(missing)} image(s) of the dataset are not listed in this split file ({shown}); {where_to}. "
                     "List them in the file to place them yourself, or leave them out of labels.csv (or via data.drop_classes / data.filters)")
    if partly:
        some = sorted({i for v in partly.values() for i in v})
        shown = ", ".join(some[:SHOWN]) + (f", ... ({len(some)} in all)" if len(some) > SHOWN else "")
        notes.append(f"{where}: {len(some)} image(s) are listed in some folds but missing from fold(s) {sorted(partly)} ({shown}); "
                     "they train in those folds (or are validated where their patient/field is). List every image in every fold "
                     "(train or val) to place them yourself")
    out = dict(splits)
    out["test"] = sorted(test | set(to_test))
    out["folds"] = folds
    meta = dict(splits.get("meta") or {})
    unlisted = {"train": sorted(set(rest) - to_val), "test": sorted(to_test), "val_in_some_fold": sorted(to_val)}
    if partly:
        unlisted["missing_from_folds"] = {str(k): v for k, v in partly.items()}
    out["meta"] = {**meta, "notes": [*meta.get("notes", []), *notes], "unlisted": unlisted}
    return out
