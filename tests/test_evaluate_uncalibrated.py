"""evaluate.py's "before calibration" figures (`<split>/uncalibrated/*`, predictions.csv's uncalibrated_p_
columns) are the probabilities before the temperature, from the same forward pass as the calibrated ones, as a
training run's test scoring has them; they were rebuilt by undoing T on the calibrated probabilities (inexact
for T < 1, where tiny probabilities are clipped, and a round trip through float32). For an ensemble: the mean
of its members' T = 1 probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers_models import save_checkpoint, tiny_modules
from wbc.calibration import calibration_report
from wbc.cli import evaluate
from wbc.evaluation.classification import probability_array, read_predictions_csv


def classifier_checkpoint(module, run: Path) -> Path:
    """`module` saved as a classification run's checkpoint: the run's config names the crops' DataModule
    (what evaluate.py reads from a run; data=... supplies the rest)."""
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save({"data": {"_target_": "datamodules.classification.ClassificationDataModule"}}, run / ".hydra" / "config.yaml")
    return save_checkpoint(module, run / "checkpoints" / "epoch_000.ckpt")


def t1_softmax(module, dataset) -> np.ndarray:
    """The network's own softmax (T = 1, no test-time flips) of every crop."""
    assert not module.hparams.get("tta")
    with torch.no_grad():
        x = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        return module(x).softmax(1).double().numpy()


def uncalibrated_columns(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    classes, rows = read_predictions_csv(path)
    assert rows and all(f"uncalibrated_p_{c}" in rows[0] for c in classes), "no uncalibrated_p_ columns"
    labels = np.asarray([classes.index(r["true"]) for r in rows])
    return classes, probability_array(rows, classes, uncalibrated=True, dtype=np.float64), labels


def test_one_classifier_with_a_temperature_reports_its_t1_softmax(make_eval_cfg, tmp_path: Path) -> None:
    _, clf = tiny_modules(tmp_path)
    clf.temperature.fill_(0.5)  # a sharpening fit: undoing it was the inexact case
    ckpt = classifier_checkpoint(clf, tmp_path / "cls")
    metrics, out = evaluate.evaluate(make_eval_cfg(ckpt, "data=synthetic_tiny", "num_overlays=0"))
    assert float(out["module"].temperature) == 0.5
    truth = t1_softmax(out["module"], out["datamodule"].datasets["test"])
    classes, raw, labels = uncalibrated_columns(tmp_path / "eval" / "predictions.csv")
    np.testing.assert_allclose(raw, truth, atol=1e-6)
    report = calibration_report(truth, labels, classes, "test/uncalibrated", n_boot=20)
    assert metrics["test/uncalibrated/nll"] == pytest.approx(report["test/uncalibrated/nll"], abs=1e-5)
    assert metrics["test/uncalibrated/ece"] == pytest.approx(report["test/uncalibrated/ece"], abs=1e-5)


def test_an_ensemble_reports_the_mean_of_its_members_t1_softmax(make_eval_cfg, tmp_path: Path) -> None:
    ckpts, modules = [], []
    for k, t in enumerate((0.5, 2.0)):
        _, clf = tiny_modules(tmp_path / f"m{k}", seed=k)
        clf.temperature.fill_(t)
        ckpts.append(classifier_checkpoint(clf, tmp_path / f"m{k}" / "run"))
        modules.append(clf)
    _, out = evaluate.evaluate(make_eval_cfg(f"[{ckpts[0]},{ckpts[1]}]", "data=synthetic_tiny", "num_overlays=0"))
    ds = out["datamodule"].datasets["test"]
    members = [t1_softmax(m, ds) for m in modules]
    _, raw, _ = uncalibrated_columns(tmp_path / "eval" / "predictions.csv")
    np.testing.assert_allclose(raw, np.mean(members, axis=0), atol=1e-6)
    for name, truth in zip(out["module"].names, members):  # each member scored alone: its own T = 1 softmax
        _, own, _ = uncalibrated_columns(tmp_path / "eval" / "members" / name / "predictions.csv")
        np.testing.assert_allclose(own, truth, atol=1e-6)
