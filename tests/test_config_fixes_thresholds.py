"""Thresholds that must agree: evaluate.py's pipeline cell matching (`iou_threshold`: the pipeline
run's own value unless given) and the training Dice's binarisation (`prob > threshold`, as
post-processing's `binarize`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryF1Score

from lightning_modules.segmentation import SegmentationModule, seg_metrics, update_seg_metrics
from wbc.evaluation import runs
from wbc.postprocess import binarize


@pytest.fixture
def scored_iou(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """evaluate_spec with the stages and the pipeline stubbed: the IoU score_pipeline was called with."""
    import wbc.evaluation.pipeline
    import wbc.inference

    calls: list[float] = []
    monkeypatch.setattr(runs, "evaluate_members", lambda *a, **k: ({}, {"module": None, "datamodule": None}))
    monkeypatch.setattr(wbc.inference, "CellPipeline", lambda *a, **k: None)
    monkeypatch.setattr(wbc.evaluation.pipeline, "score_pipeline", lambda pipe, dm, out, iou, adapt: calls.append(iou) or {})
    return calls


def pipeline_run(root: Path, iou: float) -> Path:
    for stage in ("segmentation", "classification"):
        (root / stage).mkdir(parents=True)
    (root / ".hydra").mkdir()
    OmegaConf.save({"stage": "pipeline", "pipeline": {"iou_threshold": iou}}, root / ".hydra" / "config.yaml")
    return root


def test_pipeline_iou_is_the_run_s_own_unless_given(scored_iou: list[float], tmp_path: Path) -> None:
    run = pipeline_run(tmp_path / "run", 0.3)
    runs.evaluate_spec(str(run), "test", tmp_path / "a")
    runs.evaluate_spec(str(run), "test", tmp_path / "b", iou_threshold=0.7)
    two = {"segmentation": str(run / "segmentation"), "classification": str(run / "classification")}
    runs.evaluate_spec(two, "test", tmp_path / "c")
    runs.evaluate_spec(two, "test", tmp_path / "d", iou_threshold=0.25)
    assert scored_iou == [0.3, 0.7, 0.5, 0.25]
    with pytest.raises(ValueError, match="iou_threshold=0.7 matches the full pipeline's cells"):
        runs.evaluate_spec(str(run), "val", tmp_path / "e", iou_threshold=0.7)


def test_evaluate_cli_passes_its_iou_threshold(make_eval_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from wbc.cli import evaluate

    cfg = make_eval_cfg(tmp_path / "run")
    assert cfg.iou_threshold is None  # conf/evaluate.yaml: null = the run's value
    seen: list = []
    monkeypatch.setattr(runs, "evaluate_spec", lambda *a, **k: seen.append(a[10] if len(a) > 10 else k.get("iou_threshold")) or ({}, {}))
    evaluate.evaluate(make_eval_cfg(tmp_path / "run", "iou_threshold=0.6"))
    assert seen == [0.6]


def test_training_dice_binarises_as_post_processing_does() -> None:
    # probabilities exactly at the threshold are background after post-processing (`>`), so in the Dice too
    prob = torch.full((1, 1, 4, 4), 0.5)
    prob[..., :2, :] = 0.9
    truth = torch.zeros(1, 1, 4, 4)
    truth[..., :2, :] = 1
    assert not binarize(prob[0, 0].numpy(), 0.5)[2:].any()
    metrics = seg_metrics()
    update_seg_metrics(metrics, prob, truth, threshold=0.5)
    out = {k: float(v) for k, v in metrics.compute().items()}
    assert out["dice"] == pytest.approx(1.0) and out["precision"] == pytest.approx(1.0)


def test_training_step_dice_uses_the_same_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    # the module's training_step alone: its batch step stubbed to probabilities exactly at the threshold
    module = SegmentationModule.__new__(SegmentationModule)
    torch.nn.Module.__init__(module)
    module.train_loss, module.train_dice, module.threshold = MeanMetric(), BinaryF1Score(), 0.5
    prob = torch.full((1, 1, 2, 2), 0.5)
    truth = torch.zeros(1, 1, 2, 2)
    monkeypatch.setattr(module, "_step", lambda batch: (torch.tensor(0.1), prob, truth, prob))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module.training_step({"image": torch.zeros(1, 3, 2, 2)}, 0)
    # at the threshold nothing is predicted: no false positives (with `>=` every pixel was one)
    assert int(module.train_dice.fp) == 0 and np.isclose(float(module.train_dice.tn), 4)
