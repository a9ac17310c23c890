"""Calibration switches and precision: `model.calibrate=false` keeps T = 1 but still fits the review
threshold (its 90 % coverage rule is documented as always on: a threshold of 0 flags nothing), and the
calibrated `p_` columns an ensemble's temperature is fitted from keep a confident error's tiny
true-class probability (5 decimals made it 0, pulling the ensemble's T up)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from wbc.evaluation.classification import prediction_arrays, read_predictions_csv, write_predictions


def test_calibrate_false_keeps_t_one_and_still_fits_the_review_threshold(make_cfg, run_training) -> None:
    cfg = make_cfg(["experiment=classify", "trainer.max_epochs=2", "model.calibrate=false"])
    metrics, _ = run_training(cfg)
    from lightning_modules.classification import ClassifierModule
    from lightning_modules.common import module_from_checkpoint

    out = Path(cfg.paths.output_dir)
    best = module_from_checkpoint(ClassifierModule, metrics.get("best_checkpoint") or str(sorted((out / "checkpoints").glob("epoch_*.ckpt"))[-1]), "classification")
    assert float(best.temperature) == 1.0
    assert 0.0 < float(best.review_min_probability) <= 1.0
    assert metrics["test/review/threshold"] == pytest.approx(float(best.review_min_probability))


def test_predictions_csv_keeps_tiny_calibrated_probabilities(tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    crops = [SimpleNamespace(sample_id="s0", cell=1, label=1), SimpleNamespace(sample_id="s1", cell=1, label=0)]
    probs = np.array([[1 - 3.2e-7 - 1e-9, 3.2e-7, 1e-9], [0.5, 0.25, 0.25]])
    write_predictions(tmp_path / "p.csv", SimpleNamespace(crops=crops), probs, classes)
    got, _ = prediction_arrays(read_predictions_csv(tmp_path / "p.csv")[1], classes)
    np.testing.assert_allclose(got, probs, rtol=1e-6)
