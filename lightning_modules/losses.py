"""Loss factories so configs can name a loss instead of spelling out smp internals."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

SEG_LOSSES = ("dice", "dice_bce", "focal", "bce")
CLS_LOSSES = ("ce", "weighted_ce", "focal")


class SumLoss(nn.Module):
    """Weighted sum of losses (Dice + BCE is the usual pairing)."""

    def __init__(self, losses: list[nn.Module], weights: list[float]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.weights = weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses))


def build_segmentation_loss(name: str = "dice", target: str = "nucleus", bce_weight: float = 1.0) -> nn.Module:
    """Dice (default: robust to the 90%-background imbalance that made the source study paint
    background and score 99% accuracy), Dice + BCE, focal, or plain BCE/CE for comparison."""
    mode = smp.losses.BINARY_MODE if target == "nucleus" else smp.losses.MULTICLASS_MODE
    if name not in SEG_LOSSES:
        raise ValueError(f"model.loss.name={name!r} is not a segmentation loss; expected one of {list(SEG_LOSSES)}")
    plain = smp.losses.SoftBCEWithLogitsLoss() if mode == smp.losses.BINARY_MODE else smp.losses.SoftCrossEntropyLoss(smooth_factor=0.0)
    if name == "dice":
        return smp.losses.DiceLoss(mode, from_logits=True)
    if name == "dice_bce":
        return SumLoss([smp.losses.DiceLoss(mode, from_logits=True), plain], [1.0, bce_weight])
    if name == "focal":
        return smp.losses.FocalLoss(mode)
    return plain


class FocalCE(nn.Module):
    """Multi-class focal loss on logits (down-weights easy, mostly majority-class, examples)."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = nn.functional.cross_entropy(logits, target, weight=self.weight, reduction="none")
        pt = torch.exp(-nn.functional.cross_entropy(logits, target, reduction="none"))
        return ((1 - pt) ** self.gamma * ce).mean()


def build_classification_loss(name: str = "ce", class_weights: list[float] | None = None, gamma: float = 2.0, label_smoothing: float = 0.0) -> nn.Module:
    """`weighted_ce` uses inverse-frequency class weights computed from the training split."""
    if name not in CLS_LOSSES:
        raise ValueError(f"model.loss.name={name!r} is not a classification loss; expected one of {list(CLS_LOSSES)}")
    weight = torch.tensor(class_weights, dtype=torch.float32) if (class_weights is not None and name != "ce") else None
    if name == "focal":
        return FocalCE(gamma=gamma, weight=weight)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
