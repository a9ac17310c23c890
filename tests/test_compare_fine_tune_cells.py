"""compare.py and a fine-tune from a predict run's labelled cells: the annotation template it draws leaves
out the cells the fine-tune trained or validated on (they were drawn with the rest: 13 of 40 on the review's
run), and scoring labels that fall on them is said and counted (compare.json `fine_tune_cells_scored`)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from wbc.evaluation.annotated import compare, sample_template


def predict_run(path: Path, n: int = 6) -> Path:
    """A complete predict.py output: one image with n cells in a row, and an annotated_dataset of its first 4."""
    cells = [{"image": "a.png", "source": "a.png", "output_stem": "a", "cell": k, "class": "x" if k % 2 else "y",
              "bbox_x0": 10 * k, "bbox_y0": 0, "bbox_x1": 10 * k + 8, "bbox_y1": 8, "centroid_x": 10 * k + 4.0, "centroid_y": 4.0}
             for k in range(1, n + 1)]
    path.mkdir(parents=True)
    (path / "predictions.json").write_text(json.dumps({"status": "complete", "classes": ["x", "y"], "images": [{"image": "a.png", "source": "a.png", "output_stem": "a"}], "cells": cells}))
    ds = path / "annotated_dataset"
    ds.mkdir()
    (ds / "splits.json").write_text(json.dumps({"test": ["images/a_cell04"], "folds": [{"train": ["images/a_cell01", "images/a_cell02"], "val": ["images/a_cell03"]}]}))
    return path


def test_the_template_leaves_out_the_fine_tunes_cells_and_scoring_them_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = predict_run(tmp_path / "before")
    rows = sample_template(run, 10)
    assert sorted(r["cell"] for r in rows) == [4, 5, 6]  # the test cell and the unlabelled ones, not train / val
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "x", "y", "label"])
        w.writerows([["a.png", 10 * k + 4, 4, "x" if k % 2 else "y"] for k in (1, 2, 5, 6)])
    with caplog.at_level(logging.WARNING, logger="wbc"):
        out = compare([run, run], labels)
    assert out["models"][0]["fine_tune_cells_scored"] == 2 and "2 of the 4 labelled cells" in caplog.text
