"""ClassifierModule: a CNN on nucleus crops, built for class imbalance.

Metrics (torchmetrics, multiclass): accuracy, balanced accuracy (= macro recall), macro-F1,
per-class precision and recall (`val/recall/<class>`), macro AUROC, and the confusion matrix
(saved as PNG + CSV at test time, logged as a figure to wandb/TensorBoard).
Checkpointing and early stopping watch `val/macro_f1`: accuracy rewards predicting the majority class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from lightning_modules.common import FLIP_DIMS, BestValidationMetric, build, configure_optimizers, plain


def cls_metrics(num_classes: int) -> MetricCollection:
    n = num_classes
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(n, average="micro"),
            "balanced_accuracy": MulticlassAccuracy(n, average="macro"),
            "macro_f1": MulticlassF1Score(n, average="macro"),
            "precision": MulticlassPrecision(n, average=None),
            "recall": MulticlassRecall(n, average=None),
            "auroc": MulticlassAUROC(n, average="macro", thresholds=None),
        }
    )


def flatten_metrics(values: Mapping[str, torch.Tensor], classes: list[str], prefix: str) -> dict[str, torch.Tensor]:
    """Per-class vectors become `<prefix>/recall/<class>` scalars (dashboards plot scalars)."""
    out = {}
    for key, v in values.items():
        name = key.split("/", 1)[-1]
        if v.ndim == 0:
            out[f"{prefix}/{name}"] = v
        else:
            for c, x in zip(classes, v):
                out[f"{prefix}/{name}/{c}"] = x
    return out


class ClassifierModule(BestValidationMetric, L.LightningModule):
    best_of = "val/macro_f1"

    def __init__(
        self,
        net: Mapping,
        loss: Mapping,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str | None = None,
        data_info: Mapping | None = None,
        stage: str = "classification",
        compile: bool = False,
        tta: bool = False,
    ) -> None:
        super().__init__()
        net, loss, optimizer, scheduler, data_info = map(plain, (net, loss, optimizer, scheduler, data_info))
        self.save_hyperparameters()
        self.classes = list((data_info or {}).get("classes") or [])
        if len(self.classes) < 2:
            raise ValueError(f"classification needs >= 2 classes (data.classes), got {self.classes}")
        n = len(self.classes)
        self.net = build(net, num_classes=n)
        self.criterion: torch.nn.Module | None = None
        self.metrics = torch.nn.ModuleDict({s: cls_metrics(n).clone(prefix=f"{s}/") for s in ("val", "test")})
        self.confusion = torch.nn.ModuleDict({s: MulticlassConfusionMatrix(n) for s in ("val", "test")})
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.init_best()
        if compile:
            self.net = torch.compile(self.net)

    def setup(self, stage: str) -> None:
        """The loss needs class weights from the training split, known only once data is set up."""
        if self.criterion is not None:
            return
        cfg = dict(self.hparams.loss)
        if cfg.get("class_weights") == "auto":
            dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            cfg["class_weights"] = dm.class_weights() if dm is not None and hasattr(dm, "class_weights") else None
        self.criterion = build(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def probabilities(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax; with `tta`, averaged over the identity and FLIP_DIMS. Validation, test,
        prediction and the ONNX export all go through here, so they agree."""
        prob = (self(x) if logits is None else logits).softmax(1)
        if not self.hparams.get("tta"):
            return prob
        return (prob + sum(self(x.flip(dims)).softmax(1) for dims in FLIP_DIMS)) / (1 + len(FLIP_DIMS))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.probabilities(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.criterion(self(batch["image"]), batch["label"])
        self.train_loss(loss.detach())
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        logits = self(batch["image"])
        getattr(self, f"{stage}_loss")(self.criterion(logits, batch["label"]) if self.criterion else torch.tensor(0.0))
        prob = self.probabilities(batch["image"], logits)
        self.metrics[stage].update(prob, batch["label"])
        self.confusion[stage].update(prob.argmax(1), batch["label"])
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True, batch_size=len(batch["label"]))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> dict[str, torch.Tensor]:
        values = flatten_metrics(self.metrics[stage].compute(), self.classes, stage)
        self.metrics[stage].reset()
        main = f"{stage}/macro_f1"
        self.log_dict({k: v for k, v in values.items() if k != main})
        self.log(main, values[main], prog_bar=True)
        return values

    def on_validation_epoch_end(self) -> None:
        values = self._eval_epoch_end("val")
        self.confusion["val"].reset()
        self.track_best(values)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        # drawn by the classification stage's scoring (wbc.evaluation.classification), not here
        self.test_confusion = self.confusion["test"].compute().cpu().numpy()
        self.confusion["test"].reset()

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self)
