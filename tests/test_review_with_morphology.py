"""A nucleus-morphology model averaged into the classifier's probabilities (`morphology=`): the review
threshold was fitted on the classifier's own calibrated confidences, so it reads those, and the reason
says so; an unsure morphology model no longer flags every cell (its average is not calibrated)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers_models import tiny_modules
from wbc.data.synthetic import SyntheticSpec, render_image
from wbc.inference import CellPipeline
from wbc.review import ReviewOptions, review_reasons

pytestmark = pytest.mark.usefixtures("one_thread")


class UnsureMorphology:
    """A morphology model with no opinion: uniform probabilities for every cell."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = list(classes)

    def check_classes(self, classes) -> None:
        pass

    def cell_probabilities(self, rgb, labels, instances, classes) -> np.ndarray:
        return np.full((len(instances), len(classes)), 1 / len(classes))


def test_the_review_threshold_reads_the_classifiers_own_probability(tmp_path: Path) -> None:
    seg, clf = tiny_modules(tmp_path)
    clf.temperature.fill_(0.05)  # sharp: calibrated top probability near 1
    clf.review_min_probability.fill_(0.8)
    rgb = render_image(SyntheticSpec(image_size=64, seed=3), 0, "neutrophil")[0]
    pipe = CellPipeline(seg, clf, review=ReviewOptions(border=False, size_low=0, size_high=1e9, unlike_training=False))
    alone = pipe(rgb)
    assert len(alone.instances) and not any(alone.review)
    pipe.use_morphology(UnsureMorphology(pipe.classes), "unsure")
    fused = pipe(rgb)
    assert fused.class_probs.max(1).max() < 0.8  # the averaged probabilities sit below the threshold ...
    assert not any(fused.review)  # ... but the classifier is sure: nothing flagged


def test_a_given_confidence_is_compared_and_named() -> None:
    from wbc.postprocess import Instance

    cell = Instance(label=1, bbox=(10, 10, 20, 20), centroid=(15.0, 15.0), area=80)
    probs = np.array([[0.55, 0.45]])
    opts = ReviewOptions(border=False)
    assert review_reasons(probs, None, [cell], (64, 64), ["a", "b"], 0.8, options=opts) == [["low confidence (0.55 < 0.80)"]]
    assert review_reasons(probs, None, [cell], (64, 64), ["a", "b"], 0.8, options=opts, confidence=np.array([0.95])) == [[]]
    assert review_reasons(probs, None, [cell], (64, 64), ["a", "b"], 0.8, options=opts, confidence=np.array([0.6])) == [
        ["low classifier confidence (0.60 < 0.80)"]]
