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

from wbc.data.cell_dataset import (
    SPLITS_FILE,
    CellDatasetError,
    check_context,
    cut_cells,
    held_out_split,
    predicted_cells,
)

# a predictions file that cannot label the training images it is asked to (one error type with the cell-set writer's)
PseudoLabelError = CellDatasetError


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
__all__ = ["DATASET_DIR", "SPLITS_FILE", "PseudoLabelError", "load_pseudo_labels", "select_pseudo_labels", "training_split",
           "write_pseudo_dataset"]


def training_split(rows: Sequence[Mapping[str, str]], classes: Sequence[str]) -> dict:
    """The pseudo-labelled set's split (`data.splits.file`): every cell trains except, per class with at least
    three cells, the least sure one (validation) and the next (test). A held-out part of pseudo-labels only
    measures agreement with them, so it is kept to the minimum the training loop needs; the least sure
    calls are the likeliest wrong, so they are the ones left out of training."""
    return held_out_split(rows, classes, lambda r, c: (float(r[f"p_{c}"]), r["image"]),
                          "pseudo-labels: every cell trains but the least sure of each class (val) and the next (test)")


def write_pseudo_dataset(predict_dir: str | Path, per_class: int, context: float = 4.0, overwrite: bool = False,
                         bit_depth: int | str = "auto") -> dict:
    """A labelled dataset for a lab without annotations, from a predict.py output dir: the `per_class`
    cells per predicted class the classifier is surest of (`select_pseudo_labels`), cut out as
    wbc.data.cell_dataset does, in `<predict_dir>/pseudo_dataset/`, plus `pseudo_dataset.json` (where the
    labels came from); source images are read at `bit_depth`, as predict read them. Returns that record."""
    from wbc.io import write_json

    predict_dir = Path(predict_dir)
    table, classes, by_id = predicted_cells(predict_dir, "pseudo-labels")
    check_context(context, "pseudo_dataset.context")
    candidates = [{"sample_id": sid, "pred": r["class"], **{f"p_{c}": r[f"p_{c}"] for c in classes}} for sid, r in by_id.items()]
    chosen = select_pseudo_labels(candidates, list(by_id), classes, per_class, source=str(table))
    dest = predict_dir / DATASET_DIR
    out_rows = cut_cells(predict_dir, dest, chosen, by_id, classes, context, overwrite, table, bit_depth)
    split = training_split(out_rows, classes)
    if split["folds"][0]["val"]:  # no class with three cells: the data config's own split applies
        write_json(dest / SPLITS_FILE, split)
    counts = {c: list(chosen.values()).count(c) for c in classes}
    record = {"predictions": str(table.resolve()), "per_class": per_class, "context": context, "classes": classes, "counts": counts,
              "cells": len(out_rows), "of_cells": len(by_id),
              "note": "labels are the classifier's own calls, not annotations; validation on this set measures agreement with them"}
    write_json(dest / "pseudo_dataset.json", record)
    return record
