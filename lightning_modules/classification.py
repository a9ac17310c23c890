"""ClassifierModule: a CNN on nucleus crops, built for class imbalance.

Metrics (torchmetrics, multiclass): accuracy, balanced accuracy (= macro recall), macro-F1,
per-class precision and recall (`val/recall/<class>`), macro AUROC, and the confusion matrix
(saved as PNG + CSV at test time, logged as a figure to wandb/TensorBoard).
Checkpointing and early stopping watch `val/macro_f1`: accuracy rewards predicting the majority class.

Calibration (`model.calibrate`, on by default): at the end of every validation epoch a temperature is
fitted on that epoch's validation probabilities (wbc.calibration) and kept as a buffer, so each saved
checkpoint carries the temperature of its own weights, and so does everything that loads it
(evaluate, predict, the ONNX export, the web app). The same epoch fixes `review_min_probability`:
the calibrated confidence below which a cell is flagged for review, chosen so that
`model.review_coverage` of the validation crops stay unflagged (with `model.calibrate=false` as well:
then on the probabilities as they are, T = 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
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

from lightning_modules.common import BestValidationMetric, build, configure_optimizers, plain
from lightning_modules.mixing import MixOptions, mix_batch, mixed_loss
from wbc.calibration import DEFAULT_COVERAGE, apply_temperature_torch, fit_temperature, review_threshold
from wbc.evaluation.classification import present_class_recall
from wbc.tta import tta_count, tta_view

# buffers fitted on validation data; checkpoints written before they existed load with these defaults
CALIBRATION_BUFFERS = {"temperature": 1.0, "review_min_probability": 0.0}


def cls_metrics(num_classes: int) -> MetricCollection:
    n = num_classes
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(n, average="micro"),
            # balanced_accuracy and recall are recomputed over the classes present in _eval_epoch_end (kept here for
            # their place in the logged keys; their states are shared with the others)
            "balanced_accuracy": MulticlassAccuracy(n, average="macro"),
            "macro_f1": MulticlassF1Score(n, average="macro"),
            "precision": MulticlassPrecision(n, average=None),
            "recall": MulticlassRecall(n, average=None),
            "auroc": MulticlassAUROC(n, average=None, thresholds=None),  # averaged over the classes present (_eval_epoch_end)
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
    # fitted on validation, not trained: a weight EMA (callbacks.ema) must not average them
    unaveraged_buffers = tuple(CALIBRATION_BUFFERS)

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
        tta: bool | str = False,
        calibrate: bool = True,
        review_coverage: float = DEFAULT_COVERAGE,
        mixing: Mapping | None = None,
    ) -> None:
        super().__init__()
        net, loss, optimizer, scheduler, data_info, mixing = map(plain, (net, loss, optimizer, scheduler, data_info, mixing))
        self.save_hyperparameters()
        tta_count(tta)
        self.mixing = MixOptions.from_config(mixing)
        self.classes = list((data_info or {}).get("classes") or [])
        if len(self.classes) < 2:
            raise ValueError(f"classification needs >= 2 classes (data.classes), got {self.classes}")
        if ((data_info or {}).get("crops") or {}).get("masked") not in (None, False, True):
            raise ValueError(f"data.crops.masked={data_info['crops']['masked']!r} stacks two views of a crop for an ensemble of a "
                             "masked and a plain classifier; train each with data.crops.masked=true or false, then average them")
        n = len(self.classes)
        self.net = build(net, num_classes=n)
        self.criterion: torch.nn.Module | None = None
        self.metrics = torch.nn.ModuleDict({s: cls_metrics(n).clone(prefix=f"{s}/") for s in ("val", "test")})
        self.confusion = torch.nn.ModuleDict({s: MulticlassConfusionMatrix(n) for s in ("val", "test")})
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.init_best()
        for name, default in CALIBRATION_BUFFERS.items():
            self.register_buffer(name, torch.tensor(default))
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
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

    def views(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """V x B x n_classes uncalibrated softmax of each view: the image, and with `tta` its flips
        (and transposes: `dihedral`)."""
        first = (self(x) if logits is None else logits).softmax(1)
        n = tta_count(self.hparams.get("tta"))
        return torch.stack([first, *(self(tta_view(x, k)).softmax(1) for k in range(1, n))])

    def probabilities(self, x: torch.Tensor, logits: torch.Tensor | None = None, calibrated: bool = True) -> torch.Tensor:
        """Softmax (with `tta`, averaged over the views), then the fitted temperature. Validation,
        test, prediction and the ONNX export all go through here, so they agree."""
        prob = self.views(x, logits).mean(0)
        return self.calibrated(prob) if calibrated else prob

    def calibrated(self, prob: torch.Tensor) -> torch.Tensor:
        """softmax(log p / T): wbc.calibration.apply_temperature in torch (exportable)."""
        return apply_temperature_torch(prob, self.temperature)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.probabilities(x)

    @torch.no_grad()
    def predict_views(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of each view (V x B x C): do the test-time flips agree on a cell?"""
        views = self.views(x)
        return self.calibrated(views.flatten(0, 1)).unflatten(0, (views.shape[0], -1))  # batch inferred: an ONNX export's is dynamic

    def calibration(self) -> dict[str, float]:
        """What the review flags and reports need from the fitted buffers."""
        return {"temperature": float(self.temperature), "review_min_probability": float(self.review_min_probability)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001 - torch's signature
        for name, default in CALIBRATION_BUFFERS.items():
            state_dict.setdefault(prefix + name, torch.tensor(default))  # a checkpoint from before calibration
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x, y_a, y_b, lam = mix_batch(batch["image"], batch["label"], self.mixing)
        loss = mixed_loss(self.criterion, self(x), y_a, y_b, lam)
        self.train_loss(loss.detach())
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        logits = self(batch["image"])
        # weighted by the batch size: a per-crop mean, whatever the batching (DDP shards, last batch)
        getattr(self, f"{stage}_loss")(self.criterion(logits, batch["label"]) if self.criterion else torch.tensor(0.0), len(batch["label"]))
        raw = self.probabilities(batch["image"], logits, calibrated=False)
        if stage == "val" and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:  # the review threshold too
            self._val_outputs.append((raw.detach().float(), batch["label"].detach()))
        prob = raw if stage == "val" else self.calibrated(raw)  # the temperature is fitted at this epoch's end
        self.metrics[stage].update(prob, batch["label"])
        self.confusion[stage].update(prob.argmax(1), batch["label"])
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True, batch_size=len(batch["label"]))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> dict[str, torch.Tensor]:
        computed = dict(self.metrics[stage].compute())
        # a class with no true crop this epoch has no recall or AUROC: left out of the means (NaN alone), as scikit-learn
        # does; torchmetrics counted it as 0 when it was predicted (balanced accuracy, recall/<class>, macro AUROC)
        recall, balanced = present_class_recall(self.confusion[stage].compute().cpu().numpy())
        present = torch.as_tensor(np.isfinite(recall))
        device = computed[f"{stage}/recall"].device
        computed[f"{stage}/recall"] = torch.as_tensor(recall, dtype=torch.float32, device=device)
        computed[f"{stage}/balanced_accuracy"] = torch.tensor(balanced, device=device)
        auroc = computed.pop(f"{stage}/auroc")
        computed[f"{stage}/auroc"] = auroc[present.to(auroc.device)].mean() if present.any() else torch.tensor(float("nan"), device=device)
        values = flatten_metrics(computed, self.classes, stage)
        self.metrics[stage].reset()
        main = f"{stage}/macro_f1"
        # computed from synced metric states, so equal on every rank: sync_dist only averages equal
        # values (and keeps Lightning's epoch-level DDP warning quiet)
        self.log_dict({k: v for k, v in values.items() if k != main}, sync_dist=True)
        self.log(main, values[main], prog_bar=True, sync_dist=True)
        return values

    def on_validation_epoch_end(self) -> None:
        values = self._eval_epoch_end("val")
        self.confusion["val"].reset()
        self.track_best(values)
        self._fit_calibration()

    def _fit_calibration(self) -> None:
        """Temperature and review threshold from this epoch's validation probabilities (gathered
        over ranks under DDP, so every rank keeps the same buffers)."""
        if not self._val_outputs:
            return
        prob = torch.cat([p for p, _ in self._val_outputs])
        label = torch.cat([t for _, t in self._val_outputs])
        self._val_outputs.clear()
        if self.trainer.world_size > 1:
            prob, label = self.all_gather(prob).flatten(0, 1), self.all_gather(label).flatten()
        prob, label = prob.cpu().numpy(), label.cpu().numpy()
        t = fit_temperature(prob, label) if self.hparams.get("calibrate", True) else 1.0  # model.calibrate=false: T = 1
        self.temperature.fill_(t)
        conf = self.calibrated(torch.as_tensor(prob, device=self.temperature.device)).max(1).values.cpu().numpy()
        self.review_min_probability.fill_(review_threshold(conf, float(self.hparams.get("review_coverage", DEFAULT_COVERAGE))))
        self.log("val/temperature", t, sync_dist=True)  # fitted on the gathered probabilities: equal on every rank

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        # drawn by the classification stage's scoring (wbc.evaluation.classification), not here
        self.test_confusion = self.confusion["test"].compute().cpu().numpy()
        self.confusion["test"].reset()

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self)
