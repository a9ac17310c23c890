"""SegmentationModule: an smp network from config, Dice loss, metrics that expose background-painting.

Headline metric names say their reduction:
- `dice`, `iou`: mean over images of the per-image score (an image whose ground truth and
  prediction are both empty is excluded, as in MONAI/nnU-Net; an empty truth with a predicted
  nucleus scores 0);
- `dice_dataset`, `iou_dataset`: all pixels of the split pooled (smp's "micro");
- `accuracy`, `precision`, `recall`, `auroc`: pixel-level, pooled. Accuracy alone is misleading
  here (the source study had 0.998 accuracy at Dice 0.348), so it is never the monitor;
- `train/dice`: dataset-wise Dice on the training batches (as augmented), for overfit checks.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)
from torchmetrics.segmentation import DiceScore, MeanIoU

from lightning_modules.common import BestValidationMetric, build, configure_optimizers, plain
from wbc.postprocess import PostprocessParams
from wbc.tta import tta_count, tta_unview, tta_view

NUCLEUS_INDEX = 2  # class index of the nucleus in multiclass targets


class PixelAUROC(BinaryAUROC):
    """Binned pooled-pixel AUROC whose update loops over the thresholds.

    torchmetrics' own update takes, for batches under 50k pixels and with deterministic
    algorithms on (`trainer.deterministic=true`), a bincount fallback that compares every
    pixel x threshold pair with every bin: seconds per small batch on CPU. The confusion
    state and `compute` are torchmetrics' (confmat[t, target, pred]).
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = preds.detach().flatten().float(), target.flatten().bool()
        pos = target.sum()
        neg = target.numel() - pos
        tp = torch.stack([(target & (preds >= t)).sum() for t in self.thresholds])
        fp = torch.stack([(~target & (preds >= t)).sum() for t in self.thresholds])
        neg_row = torch.stack([neg - fp, fp], dim=-1)
        pos_row = torch.stack([pos - tp, tp], dim=-1)
        self.confmat += torch.stack([neg_row, pos_row], dim=1)


def _dice() -> DiceScore:
    """Per-image Dice of the nucleus class. torchmetrics warns about its future default even when
    `average` is given, as here, so that one warning is muted at the construction only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="DiceScore metric currently defaults to `average=micro`")
        return DiceScore(num_classes=2, include_background=False, average="micro", aggregation_level="samplewise", input_format="index")


def seg_metrics() -> MetricCollection:
    return MetricCollection(
        {
            "dice": _dice(),
            "iou": MeanIoU(num_classes=2, include_background=False, input_format="index"),
            "dice_dataset": BinaryF1Score(),
            "iou_dataset": BinaryJaccardIndex(),
            "accuracy": BinaryAccuracy(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "auroc": PixelAUROC(thresholds=64),
        }
    )


def update_seg_metrics(metrics: MetricCollection, prob: torch.Tensor, truth: torch.Tensor, threshold: float = 0.5) -> None:
    """prob: Bx1xHxW nucleus probability; truth: Bx1xHxW {0,1}. Foreground is `prob > threshold`, as
    post-processing binarises (wbc.postprocess.binarize), so the Dice scored is the mask's."""
    pred = (prob > threshold).long()
    truth = truth.long()
    for name, metric in metrics.items(keep_base=True):
        if name in ("dice", "iou"):
            metric.update(pred[:, 0], truth[:, 0])
        elif name == "auroc":
            metric.update(prob.flatten(), truth.flatten())
        else:
            metric.update(pred.flatten(), truth.flatten())


class SegmentationModule(BestValidationMetric, L.LightningModule):
    """Nucleus (binary) or bg/cytoplasm/nucleus (multiclass) segmentation."""

    best_of = "val/dice"

    def __init__(
        self,
        net: Mapping,
        loss: Mapping,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str | None = None,
        data_info: Mapping | None = None,
        stage: str = "segmentation",
        compile: bool = False,
        tta: bool | str = False,
    ) -> None:
        super().__init__()
        net, loss, optimizer, scheduler, data_info = map(plain, (net, loss, optimizer, scheduler, data_info))
        self.save_hyperparameters()
        tta_count(tta)
        self.net = build(net)
        self.criterion = build(loss)
        self.multiclass = (data_info or {}).get("target", "nucleus") == "multiclass"
        # the per-epoch Dice thresholds as post-processing will (data_info.postprocess: one source)
        self.threshold = PostprocessParams.from_config((data_info or {}).get("postprocess"), "data_info.postprocess").threshold
        self.metrics = torch.nn.ModuleDict({s: seg_metrics().clone(prefix=f"{s}/") for s in ("val", "test")})
        self.cyto_dice = torch.nn.ModuleDict({s: BinaryF1Score() for s in ("val", "test")}) if self.multiclass else None
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_dice = BinaryF1Score()  # dataset-wise, on the (augmented) training batches
        self.init_best()
        if compile:
            self.net = torch.compile(self.net)

    # ------------------------------------------------------------------ inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def nucleus_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Bx1xHxW probability of nucleus, whatever the target mode."""
        if self.multiclass:
            return logits.softmax(1)[:, NUCLEUS_INDEX : NUCLEUS_INDEX + 1]
        return logits.sigmoid()

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """Nucleus probability; with `tta`, the mean over the views (each mapped back onto the image).
        Used by full-resolution scoring, evaluate.py, the pipeline, predict.py and the ONNX
        export; the per-epoch network-size `val/dice` stays a single pass."""
        prob = self.nucleus_probability(self(x))
        n = tta_count(self.hparams.get("tta"))
        for k in range(1, n):
            prob = prob + tta_unview(self.nucleus_probability(self(tta_view(x, k))), k)
        return prob / n

    @torch.no_grad()
    def predict_probability(self, x: torch.Tensor) -> torch.Tensor:
        return self.probability(x)

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        truth = (batch["mask"] == NUCLEUS_INDEX).long()[:, None] if self.multiclass else batch["mask"]
        return loss, self.nucleus_probability(logits.detach()), truth, logits.detach()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, prob, truth, _ = self._step(batch)
        self.train_loss(loss.detach())
        self.train_dice.update((prob > self.threshold).long().flatten(), truth.long().flatten())
        n = len(batch["image"])
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/dice", self.train_dice, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        loss, prob, truth, logits = self._step(batch)
        getattr(self, f"{stage}_loss")(loss)
        update_seg_metrics(self.metrics[stage], prob, truth, self.threshold)
        if self.cyto_dice is not None:  # 3-class target: also score the cytoplasm (dataset-wise)
            self.cyto_dice[stage].update((logits.argmax(1) == 1).long().flatten(), (batch["mask"] == 1).long().flatten())
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(batch["image"]))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> dict[str, torch.Tensor]:
        values = self.metrics[stage].compute()
        self.metrics[stage].reset()
        if self.cyto_dice is not None:
            values[f"{stage}/dice_cytoplasm_dataset"] = self.cyto_dice[stage].compute()
            self.cyto_dice[stage].reset()
        # torchmetrics' compute() already gathered every rank's state (DDP): the values agree across
        # ranks, and sync_dist (an average of equal values) only tells Lightning so
        self.log_dict({k: v for k, v in values.items() if k != f"{stage}/dice"}, sync_dist=True)
        self.log(f"{stage}/dice", values[f"{stage}/dice"], prog_bar=True, sync_dist=True)
        return values

    def on_validation_epoch_end(self) -> None:
        self.track_best(self._eval_epoch_end("val"))

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self)
