"""MixStyle with `layers: null` (the config's default): the network's first stages found from the module,
so `callbacks=[default,mixstyle]` works with every classifier and segmenter, not only EfficientNet's
`blocks.*`; an explicit list works and fails as before."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
from torch import nn

from lightning_modules.callbacks import MixStyle, early_stages
from lightning_modules.networks import SmallCNN, smp_net, timm_classifier


def hooked(net: nn.Module) -> list[str]:
    return [name for name, m in net.named_modules() if m._forward_hooks]


@pytest.mark.parametrize(("build", "expected"), [
    (lambda: SmallCNN(3, widths=(16, 32, 64, 128)), ["features.6", "features.13", "features.20"]),
    (lambda: timm_classifier("resnet18", 3), ["layer1", "layer2", "layer3"]),
    (lambda: timm_classifier("tf_efficientnet_lite0", 3), ["blocks.0", "blocks.1", "blocks.2"]),
    (lambda: smp_net("tu-mobilenetv3_small_100", arch="Unet", classes=1),
     ["encoder.model.blocks.0", "encoder.model.blocks.1", "encoder.model.blocks.2"]),
    (lambda: smp_net("resnet18", arch="Unet", classes=1), ["encoder.layer1", "encoder.layer2", "encoder.layer3"]),
])
def test_early_stages_of_each_network(build, expected: list[str]) -> None:
    # the SmallCNN's conv blocks end in a max-pool; a segmenter's are its encoder's (not the decoder's blocks)
    assert early_stages(build()) == expected


def test_a_short_network_keeps_its_last_stage_unmixed() -> None:
    assert early_stages(SmallCNN(3, widths=(8, 16))) == ["features.6"]
    assert early_stages(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())) == []


def test_null_layers_hook_the_first_stages_and_the_class_default_is_null() -> None:
    # benchmarks/cross_dataset.py's cells_reinhard_mixstyle passes only p and alpha: EfficientNet keeps blocks.0-2
    net = timm_classifier("tf_efficientnet_lite0", 3)
    cb = MixStyle(p=0.5, alpha=0.1)
    assert cb.layers is None
    cb.on_train_start(SimpleNamespace(), SimpleNamespace(net=net))
    assert hooked(net) == ["blocks.0", "blocks.1", "blocks.2"]
    cb.on_train_end(SimpleNamespace(), SimpleNamespace(net=net))
    assert hooked(net) == []


def test_explicit_layers_and_their_errors_are_kept() -> None:
    net = SmallCNN(3, widths=(8, 16))
    cb = MixStyle(layers=["features.0"])
    cb.on_train_start(SimpleNamespace(), SimpleNamespace(net=net))
    assert hooked(net) == ["features.0"]
    cb.on_train_end(SimpleNamespace(), SimpleNamespace(net=net))
    with pytest.raises(ValueError, match=r"callbacks.mixstyle.layers: \['blocks.0'\] not found in SmallCNN"):
        MixStyle(layers=["blocks.0"]).on_train_start(SimpleNamespace(), SimpleNamespace(net=net))
    with pytest.raises(ValueError, match="callbacks.mixstyle.layers: expected at least one module name"):
        MixStyle(layers=[])
    with pytest.raises(ValueError, match="callbacks.mixstyle.layers: null: found no early stages in Sequential"):
        MixStyle().on_train_start(SimpleNamespace(), SimpleNamespace(net=nn.Sequential(nn.Conv2d(3, 4, 3))))


class MixedLayers(L.Callback):
    """Which of model.net's modules carry a forward hook once training has started (after MixStyle's)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.names = hooked(pl_module.net)


def test_default_recipe_trains_the_default_classifier(make_cfg, run_training, one_thread) -> None:
    # README's `callbacks=[default,mixstyle]` with the default SmallCNN: failed with "blocks.0 ... not found"
    cfg = make_cfg(["experiment=classify", "callbacks=[default,mixstyle]", "callbacks.mixstyle.p=1.0",
                    "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
                    "score_val=false", "num_overlays=0", "+callbacks.probe._target_=tests.test_config_fixes_mixstyle.MixedLayers"])
    assert cfg.callbacks.mixstyle.layers is None
    _, objects = run_training(cfg)
    probe = next(cb for cb in objects["trainer"].callbacks if type(cb).__name__ == "MixedLayers")  # imported as tests.*
    assert probe.names == ["features.6", "features.13", "features.20"]
    assert hooked(objects["model"].net) == []  # removed at the end of training
