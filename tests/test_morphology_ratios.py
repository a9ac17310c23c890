"""Solidity and circularity are ratios of like with like, so they stay in [0, 1] on any nucleus: the pixel
count against a hull and a perimeter traced through the boundary pixels' centres had read 1.12 on small round
nuclei (and 1.56 on a 5 x 5 square). A model file fitted on those numbers is refused, saying to refit it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wbc.morphology import FEATURES, MorphologyClassifier, nucleus_features

F = {k: i for i, k in enumerate(FEATURES)}


def measure(mask: np.ndarray) -> np.ndarray:
    rgb = np.full((*mask.shape, 3), 220, np.uint8)
    rgb[mask > 0] = (80, 40, 120)
    return nucleus_features(rgb, mask)


def test_ratios_stay_within_0_and_1_on_round_square_lobed_and_random_nuclei() -> None:
    shapes = []
    for r in (2, 4, 7, 15, 40):  # digital discs, the case that read above 1
        m = np.zeros((200, 200), np.uint8)
        cv2.circle(m, (100, 100), r, 1, -1)
        shapes.append(m)
    square = np.zeros((60, 60), np.uint8)
    square[28:33, 28:33] = 1
    shapes.append(square)
    rng = np.random.default_rng(0)
    while len(shapes) < 150:
        m = np.zeros((120, 120), np.uint8)
        for _ in range(rng.integers(1, 4)):
            cv2.ellipse(m, (int(rng.integers(40, 80)), int(rng.integers(40, 80))), (int(rng.integers(2, 20)), int(rng.integers(2, 20))),
                        float(rng.uniform(0, 180)), 0, 360, 1, -1)
        if m.sum() >= 9:
            shapes.append(m)
    ratios = np.array([measure(m)[[F["solidity"], F["circularity"]]] for m in shapes])
    assert (ratios >= 0).all() and (ratios <= 1 + 1e-12).all(), ratios.max(0)
    assert measure(square)[F["solidity"]] == 1.0  # a convex shape fills its hull
    big_disc = measure(shapes[4])
    assert big_disc[F["solidity"]] > 0.98 and big_disc[F["circularity"]] > 0.85
    lobes = np.zeros((200, 200), np.uint8)
    cv2.circle(lobes, (80, 100), 12, 1, -1)
    cv2.circle(lobes, (120, 100), 12, 1, -1)
    assert measure(lobes)[F["solidity"]] < 0.7 and measure(lobes)[F["circularity"]] < 0.5
    holed = np.zeros((200, 200), np.uint8)
    cv2.circle(holed, (100, 100), 30, 1, -1)
    plain = measure(holed)[F["solidity"]]
    holed[95:105, 95:105] = 0  # a pale gap counts against solidity, as in regionprops
    assert measure(holed)[F["solidity"]] < plain - 0.02


def test_a_model_fitted_on_the_earlier_measurements_is_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(8, len(FEATURES)))
    model = MorphologyClassifier.fit(x, [0, 1] * 4, ["a", "b"])
    again = MorphologyClassifier.load(model.save(tmp_path / "m.json"))
    np.testing.assert_allclose(again.coef, model.coef)
    old = tmp_path / "old.json"
    old.write_text(model.to_json().replace(',\n "feature_version": 2', ""))  # a file written before the version
    assert "feature_version" not in old.read_text()
    with pytest.raises(ValueError, match=r"old.json: key 'feature_version' is 1: .*fit_morphology\.py"):
        MorphologyClassifier.load(old)
