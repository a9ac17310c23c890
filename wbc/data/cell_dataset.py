"""A labelled set of single cells cut out of a predict.py run, for fine-tuning a classifier on a lab's images.

Each chosen cell becomes a square of `context` nucleus diameters around its predicted nucleus (clipped to
the image, the pixels as they were), with that nucleus alone as a 0/255 mask, in the csv layout that
`data=folder data.layout=csv` reads (`labels.csv`: image, mask, class_name, group = the source image, so
the cells of one field stay on one side of a split, p_<class>), plus a split file and a provenance record.
The labels come from the model's surest calls (`wbc.data.pseudo_labels`, no annotation) or from the
lab's own annotated points (`write_annotated_dataset`, wbc.annotations: the web app's labels CSV).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from wbc.spreadsheet import guard

log = logging.getLogger("wbc")

SPLITS_FILE = "splits.json"
ANNOTATED_DIR = "annotated_dataset"


class CellDatasetError(ValueError):
    """A predict run (or annotation file) that cannot yield the labelled cells asked for."""


def check_context(context: float, key: str) -> None:
    if not isinstance(context, int | float) or isinstance(context, bool) or context < 1:
        raise CellDatasetError(f"{key} must be a number >= 1 (nucleus diameters), got {context!r}")


def predicted_cells(predict_dir: Path, purpose: str) -> tuple[Path, list[str], dict[str, dict]]:
    """(predictions.csv, its classes, {"<output stem>/<cell:02d>": row}) of a predict run with a classifier."""
    from wbc.evaluation.classification import read_predictions_csv

    table = predict_dir / "predictions.csv"
    if not table.is_file():
        raise CellDatasetError(f"{table}: not found; expected the predictions.csv of a predict.py run")
    classes, rows = read_predictions_csv(table)  # the project's reader: classes from the p_<class> columns
    missing = [c for c in ("cell", "class", "source", "output_stem") if rows and c not in rows[0]]
    if missing or not classes:
        raise CellDatasetError(f"{table}: columns {missing or ['p_<class>']} missing; {purpose} need a predict.py run with a classifier")
    by_id = {}
    for line, r in enumerate(rows, start=2):
        if not str(r["cell"]).isdigit():
            raise CellDatasetError(f"{table} line {line}: cell {r['cell']!r} is not a cell number; was the file edited?")
        by_id[f"{r['output_stem']}/{int(r['cell']):02d}"] = r
    return table, classes, by_id


def cut_cells(predict_dir: Path, dest: Path, chosen: Mapping[str, str], by_id: Mapping[str, dict], classes: Sequence[str],
              context: float, overwrite: bool, table: Path, bit_depth: int | str = "auto") -> list[dict]:
    """Write the chosen cells ({cell id: label}) into dest (images/, masks/, labels.csv); returns labels.csv's rows.
    `table` is the run's file the rows in by_id were read from (predictions.csv or .json), named in errors;
    `bit_depth`: the one predict read the source images at (its pipeline's), so the crops show what the models saw."""
    from wbc.annotations import read_label_png
    from wbc.cell_outputs import crop_name, png_bytes
    from wbc.data.imageio import ImageReadError, read_rgb
    from wbc.io import atomic_write

    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists; move it away (or predict with overwrite=true) to write a new one")
    if dest.exists():  # overwrite: an earlier selection's crops must not linger beside the new labels.csv
        import shutil

        shutil.rmtree(dest)
    out_rows, field = [], {}  # field: the current source image and its labels (the chosen ids are sorted by image)
    for sid in sorted(chosen):
        row = by_id[sid]
        stem, cell = row["output_stem"], int(row["cell"])
        try:
            if field.get("stem") != stem:
                field = {"stem": stem, "rgb": read_rgb(row["source"], bit_depth=bit_depth, depth_setting="bit_depth"), "labels": read_label_png(predict_dir / "labels" / f"{stem}.png")}
        except ImageReadError as err:
            raise CellDatasetError(f"{table} cell {sid}: {err}") from err
        rgb, nucleus = field["rgb"], field["labels"] == cell
        if nucleus.shape != rgb.shape[:2] or not nucleus.any():
            raise CellDatasetError(f"{predict_dir / 'labels' / (stem + '.png')}: no cell {cell} of {row['source']} in it; "
                                   "was the source image changed after predict?")
        ys, xs = np.nonzero(nucleus)
        half = context * np.sqrt(4 * len(ys) / np.pi) / 2
        y0, y1 = max(0, int(ys.mean() - half)), min(rgb.shape[0], int(np.ceil(ys.mean() + half)) + 1)
        x0, x1 = max(0, int(xs.mean() - half)), min(rgb.shape[1], int(np.ceil(xs.mean() + half)) + 1)
        name = crop_name(stem, cell)
        for sub, arr in (("images", rgb[y0:y1, x0:x1]), ("masks", nucleus[y0:y1, x0:x1].astype(np.uint8) * 255)):
            data = png_bytes(np.ascontiguousarray(arr))
            atomic_write(dest / sub / name, lambda p, data=data: p.write_bytes(data))
        out_rows.append({"image": f"images/{name}", "mask": f"masks/{name}", "class_name": chosen[sid], "group": stem,
                         **{f"p_{c}": row[f"p_{c}"] for c in classes}})
    fields = ["image", "mask", "class_name", "group", *(f"p_{c}" for c in classes)]

    def write_table(p: Path) -> None:
        with open(p, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fields)
            writer.writeheader()
            writer.writerows({k: guard(v) for k, v in r.items()} for r in out_rows)

    atomic_write(dest / "labels.csv", write_table)
    return out_rows


def held_out_split(rows: Sequence[Mapping[str, str]], classes: Sequence[str], order: Callable[[Mapping[str, str], str], object],
                   note: str) -> dict:
    """A split (`data.splits.file`) that trains on every cell except, per class with at least three cells,
    the first in `order` (validation) and the second (test): a few labelled cells are too precious for a
    70/30 split, and the training loop only needs a small held-out part.

    Cells of one source field (the `group` column) stay on one side: a held-out cell takes its whole
    field with it (so validation and test may hold a few more cells, of any class), chosen as the first
    cell in `order` whose field can go without leaving some class with no training cell (nor the class
    without one for its test draw). Where no such
    field is left (e.g. all of a class's cells in two fields), that one cell is held out alone, as without
    fields, and meta.notes names its field, which then sits on two sides (training logs the note). A class
    of three or more cells still left without a validation or test cell is named in meta.notes too. Rows
    without a group are each their own field: then this is exactly the per-cell choice above."""
    cid = [r["image"].removesuffix(".png") for r in rows]
    field = [str(r.get("group") or "") or f"\0{i}" for i, r in enumerate(rows)]
    members: dict[str, list[int]] = {}
    for i, f in enumerate(field):
        members.setdefault(f, []).append(i)
    train = Counter(r["class_name"] for r in rows)
    part = [""] * len(rows)  # "", "val" or "test" per row
    val: list[str] = []
    test: list[str] = []
    notes: list[str] = []

    def hold(indices: list[int], side: str) -> None:
        for i in indices:
            part[i] = side
            train[rows[i]["class_name"]] -= 1
            (val if side == "val" else test).append(cid[i])

    of_class = {c: [i for i, r in enumerate(rows) if r["class_name"] == c] for c in classes}
    eligible = {c for c in classes if len(of_class[c]) >= 3}
    passed: set[tuple[str, str]] = set()  # (class, side) draws already made or given up

    def need(k: str, side: str) -> int:
        """Training cells class k must keep when a field goes to `side`: one to train on, plus one for
        its draw on the other side if that draw is still to come (so a field held out for one class
        never takes the cell another class's test or validation draw needs)."""
        other = "test" if side == "val" else "val"
        pending = k in eligible and (k, other) not in passed and not any(part[i] == other for i in of_class[k])
        return 1 + int(pending)

    for c in classes:
        ranked = sorted(of_class[c], key=lambda i: order(rows[i], c))
        if c not in eligible:
            continue
        for side in ("val", "test"):
            if any(part[i] == side for i in ranked):  # a field held out for another class brought one along
                passed.add((c, side))
                continue
            free = [i for i in ranked if not part[i]]
            fits = [i for i in free if not any(part[j] for j in members[field[i]])
                    and all(train[k] - n >= need(k, side) for k, n in Counter(rows[j]["class_name"] for j in members[field[i]]).items())]
            if fits:
                hold(members[field[fits[0]]], side)
            elif free and train[c] > need(c, side):
                hold([free[0]], side)
                notes.append(f"{c}: no whole source field could be held out for {side} (each would take the last training cells "
                             f"of some class), so cell {cid[free[0]]} alone is, and its field {rows[free[0]].get('group')!r} is on two sides")
            passed.add((c, side))
    for c in sorted(eligible):
        lacking = [side for side in ("val", "test") if not any(part[i] == side for i in of_class[c])]
        if lacking:  # never silent: training logs the notes
            notes.append(f"{c}: no {' or '.join(lacking)} cell ({len(of_class[c])} cells, {train[c]} training): holding one out "
                         "would take the class's last training cell; label more cells of it")
    split = {"test": test, "folds": [{"train": [cid[i] for i in range(len(rows)) if not part[i]], "val": val}], "meta": {"note": note}}
    if notes:
        split["meta"]["notes"] = notes
    return split


def write_annotated_dataset(predict_dir: str | Path, annotations: str | Path, context: float = 4.0, overwrite: bool = False,
                            margin: float = 0.5, seed: int = 0, bit_depth: int | str = "auto") -> dict:
    """The lab's annotated points (wbc.annotations) as a labelled dataset: each point's predicted cell, cut out
    as above and labelled with the lab's class, in `<predict_dir>/annotated_dataset/`. A point on no predicted
    cell has no nucleus to cut out: it is counted and named in the record (`not_found`), never dropped
    silently; two points on one cell with different labels are an error. The held-out cells are drawn at
    random (seeded) per class; source images are read at `bit_depth`, as predict read them. Returns the record
    written as annotated_dataset.json."""
    from wbc.annotations import load_run, matched_cells, read_points
    from wbc.io import write_json

    predict_dir = Path(predict_dir)
    check_context(context, "annotated_dataset.context")
    run = load_run(predict_dir)  # predictions.json: the cells by image for the points, and each cell's row to cut it out
    classes = run.classes
    by_id = {f"{c['output_stem']}/{int(c['cell']):02d}": c for cells in run.cells.values() for c in cells}
    points, unlabelled = read_points(annotations, classes)
    chosen: dict[str, str] = {}
    first_row: dict[str, str] = {}
    not_found, merged = [], []
    for p, cell in zip(points, matched_cells(run, points, Path(annotations), margin)):
        if cell is None:
            not_found.append({"row": p.row, "image": p.image, "x": p.x, "y": p.y, "label": p.label})
            continue
        sid = f"{cell['output_stem']}/{int(cell['cell']):02d}"
        if sid in chosen and chosen[sid] != p.label:
            raise CellDatasetError(f"{annotations} {first_row[sid]} and {p.row}: one predicted cell ({sid} of {predict_dir}) "
                                   f"labelled {chosen[sid]!r} and {p.label!r}; correct one of them")
        if sid in chosen:  # a second point on the cell, with the same label: one cell, said
            merged.append({"row": p.row, "same_cell_as": first_row[sid], "cell": sid})
        chosen[sid], first_row[sid] = p.label, first_row.get(sid, p.row)
    if merged:
        log.info("%s: %d point(s) on a cell another point already labelled the same, counted once: %s", annotations, len(merged),
                 ", ".join(f"{m['row']} (= {m['same_cell_as']})" for m in merged[:5]) + (" ..." if len(merged) > 5 else ""))
    if not chosen:
        raise CellDatasetError(f"{annotations}: none of its {len(points)} labelled points is on a cell {predict_dir} found")
    dest = predict_dir / ANNOTATED_DIR
    rows = cut_cells(predict_dir, dest, chosen, by_id, classes, context, overwrite, run.path / "predictions.json", bit_depth)
    rng = np.random.default_rng(seed)
    draw = {r["image"]: float(rng.random()) for r in rows}
    split = held_out_split(rows, classes, lambda r, c: draw[r["image"]],
                           f"annotated cells: every cell trains but one per class drawn at random (val) and one more (test), seed {seed}")
    if split["folds"][0]["val"]:  # no class with three cells: the data config's own split applies
        write_json(dest / SPLITS_FILE, split)
    counts = {c: list(chosen.values()).count(c) for c in classes}
    record = {"predictions": str((run.path / "predictions.json").resolve()), "annotations": str(Path(annotations).resolve()), "context": context,
              "classes": classes, "counts": counts, "cells": len(rows), "points": len(points), "unlabelled_rows": unlabelled,
              "not_found": not_found, "merged": merged, "note": "labels are the lab's annotations; each point's predicted cell was cut out"}
    write_json(dest / "annotated_dataset.json", record)
    return record
