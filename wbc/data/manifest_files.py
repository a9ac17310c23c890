"""The files a dataset listing names, checked together (wbc.data.manifest reads the listing): one file listed
twice, one mask under two images, files outside data.root. Compared by their real paths (symlinks followed)."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wbc.data.manifest import Sample

log = logging.getLogger("wbc")


def _real(path: Path) -> Path:
    """The file a path names, symlinks followed: two rows naming one file are one image."""
    return Path(os.path.realpath(path))


def path_problems(entries: Sequence[tuple[str, Sample, Mapping[str, str]]], root: Path, allow_outside_root: bool,
                  path_columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(duplicates, outside-root problems) of the listed files, compared by their real paths.

    `entries` are (where, sample, {column: path as written}); `where` names the row or file."""
    root_real = _real(root)
    by_real: defaultdict[Path, list[tuple[str, str]]] = defaultdict(list)
    outside = []
    reals = []  # per row, {column: real path}: each file resolved once
    for where, sample, written in entries:
        real_of = {c: _real(getattr(sample, c)) for c in path_columns if getattr(sample, c) is not None}
        reals.append(real_of)
        by_real[real_of["image"]].append((where, written["image"]))
        for column, real in real_of.items():
            if not allow_outside_root and not real.is_relative_to(root_real):
                outside.append(
                    f"{where}: {column} {written[column]!r} resolves to {real}, outside data.root={root_real} "
                    "(keep the files under data.root, or set data.allow_outside_root=true)"
                )
    groups = [rows for rows in by_real.values() if len(rows) > 1]
    dupes = []
    for column in ("mask", "instances"):  # one mask for two images: a copy-paste slip, or copies of one field
        by_file: defaultdict[Path, list[tuple[str, str, Path, str]]] = defaultdict(list)
        for (where, sample, written), real_of in zip(entries, reals):
            if column in real_of:
                by_file[real_of[column]].append((where, written[column], real_of["image"], sample.class_name))
        shared = [rows for rows in by_file.values() if len({r[2] for r in rows}) > 1]  # a repeated row: said below
        for rows in shared:
            text = " and ".join(r[0] for r in rows) + f" list one {column} file {rows[0][1]!r}"
            if len({r[3] for r in rows}) > 1:  # one outline, two classes: one row is wrong
                dupes.append(f"{text} with classes {sorted({r[3] for r in rows})}; each image has its own")
            else:
                log.warning("%s: they train on one outline (copies of one field: data.splits.group_duplicates keeps them on one "
                            "side of the split; else a slip)", text)
    if groups:
        detail = "; ".join(" and ".join(f"{w} {name!r}" for w, name in rows) + " are one file" for rows in groups[:5])
        dupes.append(
            f"duplicate rows for image(s) {[rows[0][1] for rows in groups[:5]]} ({len(groups)} in all): {detail}; "
            "each image must appear once"
        )
    return dupes, outside
