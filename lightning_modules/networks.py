"""Classifier networks: the source study's small CNN baseline and timm backbones by name."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv/pool blocks + fully connected layers (the source study's CNN), with BatchNorm and
    global pooling so any input size works."""

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256), hidden: int = 128, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def timm_classifier(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False, drop_rate: float = 0.2) -> nn.Module:
    """Any timm backbone (resnet18, efficientnet_b0, tf_efficientnet_lite0, ...) with a fresh head.

    `pretrained=True` needs the weights locally (HF cache) or internet; the offline default is False."""
    import timm

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ValueError(f"model.net.name={name!r}: unknown timm model (see timm.list_models())")
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, drop_rate=drop_rate)
