"""A class with no true crop in a split (a rare class that sits on one side only) has no recall: balanced accuracy,
recall/<class> and macro AUROC leave it out, as scikit-learn does. torchmetrics counted it as 0 when the model
predicted it, so metrics.json and the CV summary disagreed with seed_ensemble.py on the same calls."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from tests.helpers_models import tiny_modules
from wbc.evaluation.classification import classification_report, present_class_recall

TRUE = np.array([0, 0, 0, 1, 1, 1])  # class 2 never true ...
PRED = np.array([0, 0, 2, 1, 1, 2])  # ... but predicted twice


def test_the_report_leaves_an_absent_class_out_as_scikit_learn_does() -> None:
    probs = np.eye(3)[PRED] * 0.8 + 0.2 / 3
    out = classification_report(probs, TRUE, ["a", "b", "c"], "val")
    assert out["val/balanced_accuracy"] == pytest.approx(balanced_accuracy_score(TRUE, PRED))  # 2/3, not 4/9
    assert out["val/recall/a"] == pytest.approx(2 / 3) and math.isnan(out["val/recall/c"])
    recall, balanced = present_class_recall(np.zeros((3, 3)))
    assert np.isnan(recall).all() and math.isnan(balanced)


class MeanLogits(torch.nn.Module):
    """Logits = 10 x the image's channel means: a constant image of colour e_k is called class k."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * x.mean((2, 3))[:, :3]


def test_the_modules_validation_figures_leave_an_absent_class_out(tmp_path: Path) -> None:
    _, clf = tiny_modules(tmp_path)
    clf.net = MeanLogits()
    clf.hparams["calibrate"] = False
    size = 32
    images = torch.stack([torch.ones(3, size, size) * torch.eye(3)[k][:, None, None] for k in PRED])
    batches = torch.utils.data.DataLoader([{"image": im, "label": int(t)} for im, t in zip(images, TRUE)], batch_size=len(TRUE))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    metrics = trainer.validate(clf, dataloaders=batches, verbose=False)[0]
    assert metrics["val/balanced_accuracy"] == pytest.approx(balanced_accuracy_score(TRUE, PRED))
    assert math.isnan(metrics[f"val/recall/{clf.classes[2]}"])
    probs = torch.softmax(10 * images.mean((2, 3)), 1).numpy()
    expected_auroc = np.mean([roc_auc_score(k == TRUE, probs[:, k]) for k in (0, 1)])
    assert metrics["val/auroc"] == pytest.approx(expected_auroc, abs=1e-4)


def test_uncalibrated_probabilities_keep_small_values(tmp_path: Path) -> None:
    """Temperatures are refitted from the uncalibrated columns (fold ensembles, the cross-fitted calibration table):
    written with 5 decimals a true class's 3e-7 became 0, clipped to 1e-12 in the fit (T 2.03 -> 2.41 in a probe)."""
    import csv
    from types import SimpleNamespace

    from wbc.evaluation.classification import write_predictions

    crops = SimpleNamespace(crops=[SimpleNamespace(sample_id="s1", cell=1, label=0)])
    raw = np.array([[3e-7, 1 - 3e-7]])
    write_predictions(tmp_path / "p.csv", crops, raw, ["a", "b"], uncalibrated=raw)
    with open(tmp_path / "p.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["uncalibrated_p_a"]) == pytest.approx(3e-7, rel=1e-6)
