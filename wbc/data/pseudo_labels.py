"""Pseudo-labels: a model's own confident calls on a new lab's training images, used as labels.

Self-training without annotation (issue 16): a classifier trained on another source labels the new
source's training images; the `per_class` images it is most sure of for each class it predicts become
that class's training set (`data.pseudo_labels`), and the model is fine-tuned on them. Taking the top
of each predicted class, not one threshold, keeps every class in the fine-tuning set even when the
model is biased towards one (a shifted model calls most cells one class).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


class PseudoLabelError(ValueError):
    """A predictions file that cannot label the training images it is asked to."""


def select_pseudo_labels(rows: Sequence[Mapping[str, str]], train_ids: Sequence[str], classes: Sequence[str],
                         per_class: int, source: str = "predictions") -> dict[str, str]:
    """{sample id: predicted class} for at most `per_class` training images per predicted class, those
    with the highest probability of that class (ties by sample id). `rows` are a predictions CSV's
    (`sample_id`, `pred`, `p_<class>`; one row per image: single-cell sets); rows of images outside
    `train_ids` are not candidates (the file may cover a whole development part), but every training
    image must have one row, so the predictions are known to be made on these images."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise PseudoLabelError(f"data.pseudo_labels.per_class must be a positive whole number, got {per_class!r}")
    wanted = set(train_ids)
    by_id: dict[str, Mapping[str, str]] = {}
    for i, row in enumerate(rows, start=2):  # line numbers as a spreadsheet shows them (header = 1)
        missing = [k for k in ("sample_id", "pred", *(f"p_{c}" for c in classes)) if k not in row]
        if missing:
            raise PseudoLabelError(f"{source}: columns {missing} missing; expected sample_id, pred and p_<class> for {list(classes)}")
        sid = row["sample_id"]
        if sid not in wanted:
            continue
        if sid in by_id:
            raise PseudoLabelError(f"{source} line {i}: a second row for image {sid!r}; pseudo-labels are one label an "
                                   "image (single-cell sets)")
        if row["pred"] not in classes:
            raise PseudoLabelError(f"{source} line {i}: predicted class {row['pred']!r} is not one of {list(classes)}")
        by_id[sid] = row
    absent = sorted(wanted - set(by_id))
    if absent:
        raise PseudoLabelError(f"{source}: no prediction for {len(absent)} of {len(wanted)} training images "
                               f"(e.g. {absent[:3]}); predict this data's training images first")
    chosen: dict[str, str] = {}
    for c in classes:
        ranked = sorted((sid for sid, row in by_id.items() if row["pred"] == c), key=lambda s: (-float(by_id[s][f"p_{c}"]), s))
        chosen.update((sid, c) for sid in ranked[:per_class])
    return chosen


def load_pseudo_labels(path: str | Path, train_ids: Sequence[str], classes: Sequence[str], per_class: int) -> dict[str, str]:
    """`select_pseudo_labels` on a predictions CSV written by this project (val/test_predictions.csv)."""
    from wbc.evaluation.classification import read_predictions_csv

    path = Path(path)
    if not path.is_file():
        raise PseudoLabelError(f"data.pseudo_labels.file: {path} is not a file (expected a predictions CSV, e.g. a run's test_predictions.csv)")
    _, rows = read_predictions_csv(path)
    return select_pseudo_labels(rows, train_ids, classes, per_class, source=str(path))


DATASET_DIR = "pseudo_dataset"
SPLITS_FILE = "splits.json"


def training_split(rows: Sequence[Mapping[str, str]], classes: Sequence[str]) -> dict:
    """The pseudo-labelled set's split (`data.splits.file`): every cell trains except, per class with at least
    three cells, the least sure one (validation) and the next (test). A held-out part of pseudo-labels only
    measures agreement with them, so it is kept to the minimum the training loop needs; the least sure
    calls are the likeliest wrong, so they are the ones left out of training."""
    val, test = [], []
    for c in classes:
        ranked = sorted((r for r in rows if r["class_name"] == c), key=lambda r: (float(r[f"p_{c}"]), r["image"]))
        if len(ranked) >= 3:
            val.append(ranked[0]["image"].removesuffix(".png"))
            test.append(ranked[1]["image"].removesuffix(".png"))
    held = set(val) | set(test)
    train = [r["image"].removesuffix(".png") for r in rows if r["image"].removesuffix(".png") not in held]
    return {"test": test, "folds": [{"train": train, "val": val}],
            "meta": {"note": "pseudo-labels: every cell trains but the least sure of each class (val) and the next (test)"}}


def write_pseudo_dataset(predict_dir: str | Path, per_class: int, context: float = 4.0, overwrite: bool = False) -> dict:
    """A labelled dataset for a lab without annotations, from a predict.py output dir: the `per_class`
    cells per predicted class the classifier is surest of (`select_pseudo_labels`), each cut out of its
    source image as a square of `context` nucleus diameters around the nucleus (clipped to the image),
    with that nucleus alone as a 0/255 mask. Written as `<predict_dir>/pseudo_dataset/` in the csv
    layout (`labels.csv`: image, mask, class_name, group = the source image, so the cells of one field
    stay on one side of a split, and p_<class>) that `data=folder data.layout=csv` reads, plus
    `pseudo_dataset.json` (where the labels came from). Returns that record."""
    import csv

    from wbc.cell_outputs import crop_name, png_bytes
    from wbc.data.imageio import ImageReadError, decode_raw, read_rgb
    from wbc.evaluation.classification import read_predictions_csv
    from wbc.io import atomic_write, write_json

    predict_dir = Path(predict_dir)
    table = predict_dir / "predictions.csv"
    if not table.is_file():
        raise PseudoLabelError(f"{table}: not found; expected the predictions.csv of a predict.py run")
    if not isinstance(context, int | float) or isinstance(context, bool) or context < 1:
        raise PseudoLabelError(f"pseudo_dataset.context must be a number >= 1 (nucleus diameters), got {context!r}")
    classes, rows = read_predictions_csv(table)  # the project's reader: classes from the p_<class> columns
    missing = [c for c in ("cell", "class", "source", "output_stem") if rows and c not in rows[0]]
    if missing or not classes:
        raise PseudoLabelError(f"{table}: columns {missing or ['p_<class>']} missing; pseudo-labels need a predict.py run with a classifier")
    by_id = {}
    for line, r in enumerate(rows, start=2):
        if not str(r["cell"]).isdigit():
            raise PseudoLabelError(f"{table} line {line}: cell {r['cell']!r} is not a cell number; was the file edited?")
        by_id[f"{r['output_stem']}/{int(r['cell']):02d}"] = r
    candidates = [{"sample_id": sid, "pred": r["class"], **{f"p_{c}": r[f"p_{c}"] for c in classes}} for sid, r in by_id.items()]
    chosen = select_pseudo_labels(candidates, list(by_id), classes, per_class, source=str(table))
    dest = predict_dir / DATASET_DIR
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
                field = {"stem": stem, "rgb": read_rgb(row["source"]), "labels": decode_raw(predict_dir / "labels" / f"{stem}.png")}
        except ImageReadError as err:
            raise PseudoLabelError(f"{table} cell {sid}: {err}") from err
        rgb, nucleus = field["rgb"], field["labels"] == cell
        if nucleus.shape != rgb.shape[:2] or not nucleus.any():
            raise PseudoLabelError(f"{predict_dir / 'labels' / (stem + '.png')}: no cell {cell} of {row['source']} in it; "
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
            writer.writerows(out_rows)

    atomic_write(dest / "labels.csv", write_table)
    split = training_split(out_rows, classes)
    if split["folds"][0]["val"]:  # no class with three cells: the data config's own split applies
        write_json(dest / SPLITS_FILE, split)
    counts = {c: list(chosen.values()).count(c) for c in classes}
    record = {"predictions": str(table.resolve()), "per_class": per_class, "context": context, "classes": classes, "counts": counts,
              "cells": len(out_rows), "of_cells": len(rows),
              "note": "labels are the classifier's own calls, not annotations; validation on this set measures agreement with them"}
    write_json(dest / "pseudo_dataset.json", record)
    return record
