"""The "before calibration" figures of a training run's test scoring come from the probabilities before
the temperature, not from undoing T on the calibrated ones: with T < 1 (a sharpening fit) tiny
probabilities were clipped, and the rebuilt ECE / NLL were off (0.122 -> 0.211 ECE at T = 0.05)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.helpers_models import tiny_modules
from wbc.calibration import apply_temperature, calibration_report
from wbc.evaluation.classification import calibrated_pair, score_calibration


def test_given_uncalibrated_probabilities_are_scored_as_they_are(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.dirichlet(np.ones(3) * 0.7, size=400)
    labels = np.array([rng.choice(3, p=p) for p in raw])
    sharp = apply_temperature(raw, 0.05)
    calibration = {"temperature": 0.05, "review_min_probability": 0.0}
    exact = score_calibration(sharp, labels, ["a", "b", "c"], calibration, tmp_path, "test", uncalibrated=raw)
    truth = calibration_report(raw, labels, ["a", "b", "c"], "test/uncalibrated", n_boot=20)
    assert exact["test/uncalibrated/ece"] == truth["test/uncalibrated/ece"]
    assert exact["test/uncalibrated/nll"] == truth["test/uncalibrated/nll"]
    rebuilt = score_calibration(sharp, labels, ["a", "b", "c"], calibration, tmp_path, "test")
    assert abs(rebuilt["test/uncalibrated/nll"] - truth["test/uncalibrated/nll"]) > 0.01  # what undoing T gave


def test_calibrated_pair_is_one_forward_pass_and_the_temperature(tmp_path: Path) -> None:
    _, clf = tiny_modules(tmp_path)
    clf.temperature.fill_(0.5)
    images = [torch.rand(3, 32, 32) for _ in range(5)]

    class Crops:
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> dict:
            return {"image": images[i]}

    raw, probs = calibrated_pair(clf, Crops())
    np.testing.assert_allclose(probs, apply_temperature(raw, 0.5), atol=1e-5)
    np.testing.assert_allclose(probs, clf.predict_proba(torch.stack(images)).detach().numpy(), atol=1e-5)
