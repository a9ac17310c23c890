"""AdaBN (wbc.adaptation, callbacks.adapt_bn): batch-norm statistics re-estimated on the test images,
nothing else about the network changed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.callbacks import AdaptBatchNorm
from wbc.adaptation import adapt_batchnorm, batchnorm_layers


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)).eval()


def test_statistics_become_those_of_the_new_images_and_nothing_else_changes() -> None:
    net = _net()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    momentum = net[1].momentum
    gen = torch.Generator().manual_seed(1)
    batches = [3.0 + 2.0 * torch.randn(8, 3, 12, 12, generator=gen) for _ in range(4)]
    assert adapt_batchnorm(net, batches) == 32
    with torch.no_grad():
        feats = torch.cat([net[0](x) for x in batches])
    assert torch.allclose(net[1].running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(net[1].running_var, feats.var((0, 2, 3)), rtol=0.05)
    assert not net.training and net[1].momentum == momentum
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    # the adapted network now normalises the new images to ~zero mean (it did not before)
    with torch.no_grad():
        out = net[:2](batches[0])
    assert out.mean().abs() < 0.2


def test_no_images_or_no_batch_norm_is_an_error_and_leaves_the_statistics() -> None:
    net = _net()
    before = net[1].running_mean.clone()
    with pytest.raises(ValueError, match="no images"):
        adapt_batchnorm(net, [])
    assert torch.equal(net[1].running_mean, before) and net[1].momentum == 0.1
    with pytest.raises(ValueError, match="no batch-norm"):
        adapt_batchnorm(nn.Linear(2, 2), [torch.zeros(1, 2)])


def test_classifier_tested_with_adapt_bn_uses_the_test_images_statistics(make_cfg, run_training, one_thread) -> None:
    cfg = make_cfg(["experiment=classify", "callbacks=[default,adapt_bn]", "trainer.max_epochs=1"])
    metrics, objects = run_training(cfg)
    model, dm = objects["model"], objects["datamodule"]
    assert any(isinstance(cb, AdaptBatchNorm) for cb in objects["trainer"].callbacks)
    layer = batchnorm_layers(model)[0]
    adapted = layer.running_mean.clone()
    # the same statistics again from the test images (the trainer's), and different ones from validation
    adapt_batchnorm(model, (b["image"] for b in dm.test_dataloader()))
    assert torch.allclose(layer.running_mean, adapted, atol=1e-5)
    adapt_batchnorm(model, (b["image"] for b in dm.val_dataloader()))
    assert not torch.allclose(layer.running_mean, adapted, atol=1e-5)
    assert "test/macro_f1" in metrics
