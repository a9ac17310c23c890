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
