"""SegmentationModule metrics, scoring and losses against hand-computed values.

Two 10x10 images with known overlaps (per-image mean and dataset-wise Dice/IoU differ):
- A: truth rows 0-1 (20 px), prediction row 0 (10 px): TP 10, FP 0, FN 10 -> Dice 2/3, IoU 1/2;
- B: truth rows 0-3 (40 px), prediction rows 2-5 (40 px): TP 20, FP 20, FN 20 -> Dice 1/2, IoU 1/3.
Per-image means: Dice 7/12, IoU 5/12. Pooled: TP 30, FP 20, FN 30 -> Dice 60/110, IoU 30/80.
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAUROC

from lightning_modules.losses import SEG_LOSSES, build_segmentation_loss
from lightning_modules.segmentation import PixelAUROC, seg_metrics, update_seg_metrics
from wbc.evaluation.segmentation import case_scores, summarize
from wbc.postprocess import PostprocessParams, nucleus_mask

H = W = 10


@pytest.fixture(autouse=True)
def _quiet_torchmetrics():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*defaults to `average=micro`.*")
        yield


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, truth) as Bx1xHxW {0,1} float tensors for images A and B."""
    pred, truth = torch.zeros(2, 1, H, W), torch.zeros(2, 1, H, W)
    truth[0, 0, 0:2], pred[0, 0, 0] = 1, 1
    truth[1, 0, 0:4], pred[1, 0, 2:6] = 1, 1
    return pred, truth


def _computed(pred: torch.Tensor, truth: torch.Tensor, batches: int = 1) -> dict[str, float]:
    metrics = seg_metrics()
    for p, t in zip(pred.chunk(batches), truth.chunk(batches)):
        update_seg_metrics(metrics, p, t)
    return {k: float(v) for k, v in metrics.compute().items()}


@pytest.mark.parametrize("batches", [1, 2])
def test_module_metrics_per_image_and_dataset_wise(batches: int) -> None:
    pred, truth = _pair()
    m = _computed(pred, truth, batches)  # same result whether the images come in one batch or two
    assert m["dice"] == pytest.approx(7 / 12)
    assert m["iou"] == pytest.approx(5 / 12)
    assert m["dice_dataset"] == pytest.approx(60 / 110)
    assert m["iou_dataset"] == pytest.approx(30 / 80)
    assert m["precision"] == pytest.approx(30 / 50)
    assert m["recall"] == pytest.approx(30 / 60)
    assert m["accuracy"] == pytest.approx(150 / 200)
    assert m["dice"] != pytest.approx(m["dice_dataset"])  # the two reductions are genuinely different


def test_case_scores_hand_computed() -> None:
    pred, truth = _pair()
    a = case_scores(pred[0, 0].numpy() > 0, truth[0, 0].numpy() > 0)
    b = case_scores(pred[1, 0].numpy() > 0, truth[1, 0].numpy() > 0)
    assert a == pytest.approx({"dice": 2 / 3, "iou": 1 / 2})
    assert b == pytest.approx({"dice": 1 / 2, "iou": 1 / 3})


def test_all_background_prediction_scores_zero_dice_at_high_accuracy() -> None:
    """The source study's failure: painting everything background gives ~99% accuracy and Dice 0."""
    truth = torch.zeros(1, 1, 32, 32)
    truth[0, 0, 10:18, 10:18] = 1  # 64 of 1024 px = 6.25% nucleus
    m = _computed(torch.zeros_like(truth), truth)
    assert m["accuracy"] == pytest.approx(1 - 64 / 1024) and m["accuracy"] > 0.9
    assert m["dice"] == 0.0 and m["dice_dataset"] == 0.0 and m["iou"] == 0.0 and m["recall"] == 0.0
    s = case_scores(np.zeros((32, 32), bool), truth[0, 0].numpy() > 0)
    assert s == {"dice": 0.0, "iou": 0.0}


def test_empty_truth_policy() -> None:
    empty = np.zeros((H, W), bool)
    speck = empty.copy()
    speck[0, 0] = True
    both_empty = case_scores(empty, empty)
    assert math.isnan(both_empty["dice"]) and math.isnan(both_empty["iou"])
    assert case_scores(speck, empty) == {"dice": 0.0, "iou": 0.0}  # false positive on an empty image

    # module metric: image 0 empty/empty is left out of the per-image mean, image 1 scores 1/2
    pred, truth = _pair()
    pred[0], truth[0] = 0, 0
    m = _computed(pred, truth)
    assert m["dice"] == pytest.approx(1 / 2) and m["iou"] == pytest.approx(1 / 3)
    # ... while an empty truth with a false positive counts as 0
    pred[0, 0, 9, 9] = 1
    m = _computed(pred, truth)
    assert m["dice"] == pytest.approx(1 / 4) and m["iou"] == pytest.approx(1 / 6)

    # seg_eval summaries leave NaN cases out of the means too
    cases = [
        {"class_name": "a", "dice": float("nan")},
        {"class_name": "a", "dice": 0.5},
        {"class_name": "b", "dice": 0.0},
    ]
    s = summarize(cases, ["dice"])
    assert s["mean"]["dice"] == pytest.approx(0.25)
    assert s["mean_per_class"]["a"] == {"dice": 0.5, "n": 2}


def test_pixel_auroc_matches_torchmetrics() -> None:
    gen = torch.Generator().manual_seed(0)
    ours, reference = PixelAUROC(thresholds=64), BinaryAUROC(thresholds=64)
    for _ in range(3):
        prob = torch.rand(4, 1, 16, 16, generator=gen)
        truth = (torch.rand(4, 1, 16, 16, generator=gen) < prob).long()
        ours.update(prob, truth)
        reference.update(prob.flatten(), truth.flatten())
    assert torch.equal(ours.confmat, reference.confmat)
    assert float(ours.compute()) == pytest.approx(float(reference.compute()))
    assert float(ours.compute()) > 0.6


def _disc(shape: tuple[int, int], cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_postprocess_removes_specks_and_bridges() -> None:
    shape = (48, 64)
    mask = _disc(shape, 24, 14, 9) | _disc(shape, 24, 46, 9)
    mask[24, 14:47] = True  # 1-px bridge joining the two nuclei
    mask[2:8, 56:62] = True  # 6x6 speck: survives a 5x5 opening, smaller than min_area=50
    prob = mask.astype(np.float32) * 0.9
    assert cv2.connectedComponents(mask.astype(np.uint8))[0] - 1 == 2  # before: nuclei joined + speck

    out = nucleus_mask(prob, PostprocessParams(threshold=0.5, opening_kernel=5, min_area=50))
    n, labels = cv2.connectedComponents(out.astype(np.uint8))
    assert n - 1 == 2  # two separate nuclei, no speck
    assert not out[2:8, 56:62].any()
    assert not out[24, 26:34].any()  # the bridge between the discs is gone
    assert out[24, 14] and out[24, 46]
    # the speck is removed by the area filter, not by the opening
    assert nucleus_mask(prob, PostprocessParams(threshold=0.5, opening_kernel=5, min_area=20))[2:8, 56:62].any()
    # nothing above threshold -> empty
    assert not nucleus_mask(prob * 0.5, PostprocessParams(threshold=0.5)).any()


@pytest.mark.parametrize("target, classes", [("nucleus", 1), ("multiclass", 3)])
@pytest.mark.parametrize("name", SEG_LOSSES)
def test_loss_factory_names_build(name: str, target: str, classes: int) -> None:
    loss = build_segmentation_loss(name, target=target)
    logits = torch.randn(2, classes, 8, 8, requires_grad=True)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float() if target == "nucleus" else torch.randint(0, 3, (2, 8, 8))
    value = loss(logits, mask)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None


def test_loss_factory_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"model\.loss\.name='tversky'"):
        build_segmentation_loss("tversky")


def test_multiclass_target_fast_dev_run(make_cfg, run_training) -> None:
    cfg = make_cfg(["debug=fdr", "data.target=multiclass"])
    assert cfg.model.net.classes == 3
    metrics, objects = run_training(cfg)
    assert objects["model"].multiclass
    assert "test/dice_cytoplasm_dataset" in metrics and 0.0 <= metrics["test/dice"] <= 1.0

