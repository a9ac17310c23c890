"""evaluate.py split=val on one classifier: its temperature and review threshold were fitted on those very
crops, so its calibration and review figures are in-sample; said as a caveat (logged, metrics.json), as an
ensemble's already was. A segmenter or an uncalibrated classifier has nothing to say."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from wbc.evaluation.runs import validation_caveats


def test_one_calibrated_classifier_on_its_validation_split_is_a_caveat() -> None:
    clf = SimpleNamespace(temperature=torch.tensor(2.0), review_min_probability=torch.tensor(0.61))
    (caveat,) = validation_caveats("val", [Path("run/checkpoints/best.ckpt")], [clf])
    assert "T=2" in caveat and "0.61" in caveat and "in-sample" in caveat
    assert validation_caveats("test", [Path("x.ckpt")], [clf]) == []
    assert validation_caveats("val", [Path("x.ckpt")], [SimpleNamespace(temperature=1.0, review_min_probability=0.0)]) == []
    assert validation_caveats("val", [Path("x.ckpt")], [SimpleNamespace()]) == []  # a segmenter
