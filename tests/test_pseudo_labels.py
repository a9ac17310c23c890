"""Pseudo-labels (`data.pseudo_labels`): a model's confident calls on a new lab's training images as
their labels, for self-training without annotation (issue 16)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import make_csv_dataset
from wbc.data.pseudo_labels import PseudoLabelError, select_pseudo_labels

CLASSES = ["a", "b"]


def rows(*entries: tuple[str, str, float]) -> list[dict[str, str]]:
    """(sample id, predicted class, probability of class a) -> predictions CSV rows of two classes."""
    return [{"sample_id": s, "pred": p, "p_a": f"{pa}", "p_b": f"{1 - pa}"} for s, p, pa in entries]


def test_select_takes_the_surest_per_predicted_class() -> None:
    got = select_pseudo_labels(rows(("x1", "a", 0.9), ("x2", "a", 0.6), ("x3", "a", 0.99), ("x4", "b", 0.2), ("x5", "b", 0.45),
                                    ("v1", "a", 1.0)), ["x1", "x2", "x3", "x4", "x5"], CLASSES, per_class=2)
    # v1 is not a training image: never a candidate, however sure; x2 is the third-surest "a"
    assert got == {"x3": "a", "x1": "a", "x4": "b", "x5": "b"}
    ties = select_pseudo_labels(rows(("z", "a", 0.7), ("y", "a", 0.7)), ["y", "z"], CLASSES, per_class=1)
    assert ties == {"y": "a"}  # ties by sample id: the same choice every run
    # a class the model never predicts gets no images, and none are invented for it
    assert select_pseudo_labels(rows(("x1", "a", 0.9)), ["x1"], CLASSES, per_class=3) == {"x1": "a"}


@pytest.mark.parametrize("bad,per_class,match", [
    (rows(("x1", "a", 0.9)), 1, r"no prediction for 1 of 2 training images \(e.g. \['x2'\]\)"),
    (rows(("x1", "a", 0.9), ("x2", "a", 0.8), ("x1", "b", 0.1)), 1, r"p.csv line 4: a second row for image 'x1'"),
    (rows(("x1", "a", 0.9), ("x2", "c", 0.8)), 1, r"p.csv line 3: predicted class 'c' is not one of \['a', 'b'\]"),
    ([{"sample_id": "x1", "pred": "a", "p_a": "1"}], 1, r"p.csv: columns \['p_b'\] missing"),
    (rows(("x1", "a", 0.9), ("x2", "a", 0.8)), 0, r"per_class must be a positive whole number, got 0"),
])
def test_select_refuses_predictions_that_cannot_label_the_training_images(bad, per_class, match) -> None:
    with pytest.raises(PseudoLabelError, match=match):
        select_pseudo_labels(bad, ["x1", "x2"], CLASSES, per_class, source="p.csv")


def test_datamodule_trains_on_the_pseudo_labels_and_scores_true_ones(tmp_path: Path) -> None:
    root = make_csv_dataset(tmp_path / "ds", {"a": 10, "b": 10}, size=16)

    def dm(**kw) -> SegmentationDataModule:
        return SegmentationDataModule(root=str(root), name="pseudo", image_size=16, preprocess={"clahe": False}, classes=CLASSES,
                                      splits={"k": 2, "seed": 0, "test_fraction": 0.3, "dir": str(tmp_path / "splits")}, **kw)

    full = dm().split_ids()
    truth = {s.id: s.class_name for s in dm().load_manifest().samples}
    # a model that calls every image the opposite class, surest on the first ids; rows for val/test too
    preds = tmp_path / "test_predictions.csv"
    with open(preds, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["sample_id", "pred", "p_a", "p_b"])
        w.writeheader()
        for i, sid in enumerate(sorted(truth)):
            wrong = "b" if truth[sid] == "a" else "a"
            p = 0.99 - 0.01 * i
            w.writerow({"sample_id": sid, "pred": wrong, "p_a": p if wrong == "a" else 1 - p, "p_b": p if wrong == "b" else 1 - p})
    pseudo = dm(pseudo_labels={"file": str(preds), "per_class": 3})
    ids = pseudo.split_ids()
    assert ids["val"] == full["val"] and ids["test"] == full["test"]
    assert len(ids["train"]) == 6 and set(ids["train"]) < set(full["train"])
    pseudo.setup()
    # training labels are the model's (all wrong here), validation keeps the manifest's
    train_labels = [CLASSES[i] for i in pseudo.dataset_labels("train")]
    assert train_labels == ["b" if truth[s] == "a" else "a" for s in ids["train"]]
    assert [CLASSES[i] for i in pseudo.dataset_labels("val")] == [truth[s] for s in ids["val"]]
    with pytest.raises(ValueError, match=r"data.pseudo_labels must be \{file: <predictions CSV>, per_class: <K>\} and not set together"):
        dm(pseudo_labels={"file": str(preds), "per_class": 3}, train_per_class=2)
    with pytest.raises(ValueError, match=r"data.pseudo_labels must be"):
        dm(pseudo_labels={"file": str(preds)})
    with pytest.raises(PseudoLabelError, match=r"data.pseudo_labels.file: .*missing.csv is not a file"):
        dm(pseudo_labels={"file": str(tmp_path / "missing.csv"), "per_class": 3}).split_ids()
