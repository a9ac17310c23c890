"""Several datasets read as one (`data.parts`): each part keeps its own reader, mask encoding,
class names and persisted split; ids and groups are prefixed by the part's name, so nothing of one
part can meet another's on two sides of a split.

The combined split is the union of the parts' splits: each part's 30 % test stays the test it is on
its own, and fold k is the union of the parts' fold k. `data.holdout=<part>` turns it into a
leave-one-dataset-out (LODO) or cross-dataset experiment: the held-out part contributes only its test
split (nothing of it is trained or validated on), the others only their training folds;
`data.holdout_split=dev` tests on the held-out part's training images instead, so levers can be
chosen on a cross-domain figure without looking at any test split.

The camera bit depth is the combined node's (`data.bit_depth`, applied to every part): one depth travels in
the checkpoint for inference, so a part that sets another is refused.

The split settings are the parts' own (`data.parts.<name>.splits.*`): a value set on the combined node's
`data.splits` that differs from a part's is refused (`check_split_settings`), never silently ignored.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from wbc.data.bitdepth import AUTO, check_bit_depth
from wbc.data.manifest import Manifest, MaskEncoding, Sample
from wbc.data.splits import SplitError

# what each part reads on its own (the rest -- image size, preprocessing, crops, batch -- is shared)
PART_KEYS = (
    "root", "name", "layout", "csv_name", "classes", "drop_classes", "mask_encoding", "splits", "generator",
    "require_masks", "filters", "max_pixels", "allow_outside_root", "pixel_size_um",
)
SEP = "/"
# data.splits keys of the combined node that a part decides: (key, default, node value that counts as set)
# k, seed and test_fraction are compared whenever the node has them (its k also drives CV sweeps'
# data.fold range); file and dir only when set (null: each part's own); use_groups only when false and
# group_duplicates only when true (the shipped combined node's defaults, which the parts may override)
NODE_SPLIT_KEYS = (("k", 5, None), ("seed", 0, None), ("test_fraction", 0.3, None), ("file", None, "set"), ("dir", None, "set"),
                   ("use_groups", True, False), ("group_duplicates", False, True))


def check_split_settings(node: Mapping[str, Any], children: Mapping[str, Any]) -> None:
    """Refuse combined-node `data.splits` values the parts would ignore (each part makes its own split
    from its own settings), naming the `data.parts.<name>.splits.<key>` to set instead."""
    problems = []
    for key, default, counts in NODE_SPLIT_KEYS:
        if key not in node:
            continue
        value = node[key]
        if counts == "set" and value in (None, ""):
            continue
        if counts not in (None, "set") and value != counts:
            continue
        for name, child in children.items():
            own = dict(getattr(child, "splits_cfg", {}) or {}).get(key, default)
            if counts == "set" and key == "dir" and own in (None, ""):
                own = str(child.root)  # a part's split file sits next to its data unless it sets a dir
            if key in ("use_groups", "group_duplicates"):
                same = bool(own) == bool(value)
            elif key == "dir":  # one folder however it is written (relative, trailing slash, ~)
                same = os.path.abspath(os.path.expanduser(str(own))) == os.path.abspath(os.path.expanduser(str(value)))
            else:
                same = own == value
            if not same:
                problems.append(f"data.splits.{key}={value!r} but data.parts.{name}.splits.{key}={own!r}")
    if problems:
        raise SplitError(
            "a combined data config's split is the union of its parts' own splits, made with each part's data.parts.<name>.splits "
            f"settings; the combined node's data.splits would be ignored: {'; '.join(problems)}. Set data.parts.<name>.splits.<key> "
            "for every part instead (and, for k, seed and test_fraction, data.splits.<key> to the same value, or leave it unset)"
        )


def files_in_two_parts(samples: list[Sample]) -> list[tuple[str, ...]]:
    """The (prefixed) ids that name one image file (by its real path) from more than one part."""
    by_file: dict[str, list[str]] = {}
    for s in samples:
        by_file.setdefault(os.path.realpath(s.image), []).append(s.id)
    return [tuple(ids) for ids in by_file.values() if len({i.split(SEP, 1)[0] for i in ids}) > 1]


def refuse_node_reads(node: Mapping[str, Any], parts: Mapping[str, Any]) -> None:
    """Refuse what the combined node sets but only a part reads (its classes, filters, pixel limit, files outside
    its root), naming `data.parts.<name>.<key>` to set instead: the parts read their own, so the node's value
    was ignored (data.max_pixels=100 let images through that the same setting refuses on one dataset)."""
    set_ = {"classes": lambda v: v is not None, "filters": bool, "max_pixels": lambda v: v is not None, "allow_outside_root": bool}
    given = {k: v for k, v in node.items() if k in set_ and set_[k](v)}
    if given:
        names = ", ".join(f"data.parts.{n}" for n in parts)
        raise ValueError(f"{', '.join(f'data.{k}={v!r}' for k, v in given.items())} on a combined data config (data.parts) would be "
                         f"ignored: each part reads its own; set it on the parts ({names}), e.g. data.parts.<name>.{next(iter(given))}")


class DataParts:
    """The parts of a combined DataModule: one child DataModule per part (built here from its config
    mapping, or already built by Hydra's recursive instantiate), used only for its manifest, split
    and mask encoding."""

    def __init__(
        self, owner_cls: type, parts: Mapping[str, Mapping], holdout: str | None, fold: int, drop_classes=(), holdout_split: str = "test",
        part_weights: Mapping[str, float] | None = None, splits: Mapping[str, Any] | None = None, bit_depth: int | str = AUTO,
    ) -> None:
        if not parts:
            raise ValueError("data.parts is empty: name the datasets to combine (e.g. data=lodo_seg_d1, or +data@data.parts.<name>=<data config>)")
        if holdout is not None and holdout not in parts:
            raise ValueError(f"data.holdout={holdout!r} is not one of data.parts {sorted(parts)}")
        if holdout is not None and len(parts) < 2:
            raise ValueError(f"data.holdout={holdout!r} leaves no part to train on: data.parts needs at least two entries")
        if holdout_split not in ("test", "dev"):
            raise ValueError(f"data.holdout_split must be 'test' or 'dev', got {holdout_split!r}")
        self.holdout, self.holdout_split = holdout, holdout_split
        self.weights = {str(k): float(v) for k, v in dict(part_weights or {}).items()}
        unknown = set(self.weights) - set(parts)
        if unknown or any(not w >= 0 for w in self.weights.values()):
            raise ValueError(f"data.part_weights={self.weights}: expected non-negative weights for parts among {sorted(parts)}")
        self.children: dict[str, Any] = {}
        for name, cfg in parts.items():
            if SEP in name:
                raise ValueError(f"data.parts.{name}: a part's name may not contain {SEP!r}")
            if isinstance(cfg, Mapping):
                child = owner_cls(**{k: cfg[k] for k in PART_KEYS if k in cfg and cfg[k] is not None}, fold=fold)
            elif hasattr(cfg, "load_manifest") and hasattr(cfg, "load_splits"):
                child = cfg
            else:
                raise ValueError(f"data.parts.{name}: expected a data config, got {type(cfg).__name__}")
            if drop_classes:  # the combined node's data.drop_classes applies to every part
                child.drop_classes = sorted({*child.drop_classes, *drop_classes})
            own = check_bit_depth(cfg.get("bit_depth", AUTO) if isinstance(cfg, Mapping) else child.bit_depth, f"data.parts.{name}.bit_depth")
            if own not in (AUTO, bit_depth):
                raise ValueError(f"data.parts.{name}.bit_depth={own} but data.bit_depth={bit_depth}: one depth is read for every part "
                                 f"and travels in the checkpoint; set data.bit_depth={own} (a part's auto follows it)")
            child.bit_depth = bit_depth  # the combined node's data.bit_depth applies to every part
            self.children[name] = child
        self.node_splits = dict(splits or {})  # the combined node's data.splits: checked against the parts' when splitting

    def prepare_data(self) -> None:
        for child in self.children.values():
            child.prepare_data()

    def manifest(self) -> Manifest:
        """The parts' samples with `<part>/` ids and groups; classes: the union, in part order."""
        samples: list[Sample] = []
        classes: list[str] = []
        for name, child in self.children.items():
            m = child.load_manifest()
            classes += [c for c in m.classes if c not in classes]
            samples += [replace(s, id=f"{name}{SEP}{s.id}", group=f"{name}{SEP}{s.group}" if s.group else f"{name}{SEP}{s.id}") for s in m.samples]
        shared = files_in_two_parts(samples)
        if shared:
            raise ValueError(f"data.parts list the same image file twice ({len(shared)} in all), e.g. {shared[:3]}: the parts split "
                             "on their own, so one image could train in one part and be tested in the other; combine disjoint "
                             "datasets (data.parts.<name>.filters or drop the overlapping part)")
        first = next(iter(self.children.values()))
        return Manifest(first.root, samples, classes, {})

    def splits(self) -> dict:
        check_split_settings(self.node_splits, self.children)
        parts = {name: child.load_splits() for name, child in self.children.items()}
        ks = {name: len(s["folds"]) for name, s in parts.items()}
        if len(set(ks.values())) != 1:
            raise SplitError(f"data.parts have different fold counts {ks}: set the same data.parts.<name>.splits.k for all")
        k = next(iter(ks.values()))
        test = [f"{name}{SEP}{i}" for name, s in parts.items() if self.holdout in (None, name) for i in s["test"]]
        if self.holdout is not None and self.holdout_split == "dev":  # its training part, its test split unseen
            f0 = parts[self.holdout]["folds"][0]
            test = [f"{self.holdout}{SEP}{i}" for i in [*f0["train"], *f0["val"]]]
        train_parts = [n for n in parts if n != self.holdout]
        folds = [
            {side: sorted(f"{n}{SEP}{i}" for n in train_parts for i in parts[n]["folds"][j][side]) for side in ("train", "val")}
            for j in range(k)
        ]
        meta = {"parts": {n: s.get("meta", {}) for n, s in parts.items()}, "holdout": self.holdout, "holdout_split": self.holdout_split}
        return {"meta": meta, "test": sorted(test), "folds": folds}

    def item_weights(self, item_ids: list[str]) -> np.ndarray:
        """Training draw weights: each part's items share its `data.part_weights` entry (1 when not
        given), so a part's share of an epoch follows its weight, not its size."""
        part = [i.split(SEP, 1)[0] for i in item_ids]
        counts = Counter(part)
        return np.array([self.weights.get(p, 1.0) / counts[p] for p in part], dtype=np.float64)

    def encoding_of(self, sample_id: str) -> MaskEncoding:
        return self.children[sample_id.split(SEP, 1)[0]].encoding
